"""Apache Airflow provider for kubeflow-tasks: Kubeflow Pipelines runs, Katib experiments, training jobs.

Importing this package (or any operator module) imports no Kubeflow, Kubernetes, MLflow, optuna or
torch client: DAG files stay cheap to parse. Those load inside `execute`, in the worker.
"""

__version__ = "0.1.0"

"""kubeflow-tasks core: submit and await Kubeflow work from any scheduler.

This package must stay cheap to import (the Airflow scheduler parses DAG files that import it),
so nothing here imports kfp, kubernetes, mlflow, optuna or torch at module level.
"""

__version__ = "0.1.0"

"""DolphinScheduler task types for Kubeflow work, built on pydolphinscheduler (apache-dolphinscheduler).

Importing this package registers the task types for YAML workflows (`task_type: KatibExperiment`).
It imports pydolphinscheduler, never kfp, kubernetes, mlflow, optuna or torch.
"""

from dolphinscheduler_tasks.offline import offline
from dolphinscheduler_tasks.promotion import ModelPromotion
from dolphinscheduler_tasks.schedule import KubeflowRecurringRun
from dolphinscheduler_tasks.tasks import (
    KatibExperiment,
    KubeflowPipeline,
    KubeflowTask,
    PyTorchJob,
    Summary,
    TFJob,
    register,
)
from dolphinscheduler_tasks.yaml_workflow import load_yaml_workflow

register()

__all__ = [
    "KatibExperiment",
    "KubeflowPipeline",
    "KubeflowRecurringRun",
    "KubeflowTask",
    "ModelPromotion",
    "PyTorchJob",
    "Summary",
    "TFJob",
    "load_yaml_workflow",
    "offline",
    "register",
]

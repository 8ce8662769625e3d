"""Operators: one per kind of Kubeflow work, sharing `base.KubeflowBaseOperator`."""

from airflow_provider.operators.kubeflow import (
    KatibExperimentOperator,
    KubeflowPipelineRunOperator,
    PyTorchJobOperator,
    TFJobOperator,
)

__all__ = ["KatibExperimentOperator", "KubeflowPipelineRunOperator", "PyTorchJobOperator", "TFJobOperator"]

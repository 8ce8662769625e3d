"""Malformed specs through the CLI: one line naming the field, exit code 2, nothing started.

(The spec layer's own, larger table is in test_specs.py; this one proves the command-line contract.)
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from shared.cli import main

JOB = {
    "apiVersion": "kubeflow.org/v1",
    "kind": "PyTorchJob",
    "metadata": {"name": "train"},
    "spec": {
        "pytorchReplicaSpecs": {
            "Master": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "pytorch", "image": "python:3.11-slim", "command": ["python", "train.py"]}]}}},
            "Worker": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "pytorch", "image": "python:3.11-slim", "command": ["python", "train.py"]}]}}},
        },
        "runPolicy": {"backoffLimit": 2},
    },
}
TFJOB = {
    "apiVersion": "kubeflow.org/v1",
    "kind": "TFJob",
    "metadata": {"name": "tf"},
    "spec": {"tfReplicaSpecs": {"Chief": {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "tensorflow", "image": "tf", "command": ["python", "t.py"]}]}}}}},
}
EXPERIMENT = {
    "apiVersion": "kubeflow.org/v1beta1",
    "kind": "Experiment",
    "metadata": {"name": "hpo"},
    "spec": {
        "objective": {"type": "minimize", "objectiveMetricName": "loss"},
        "algorithm": {"algorithmName": "tpe"},
        "maxTrialCount": 4,
        "parallelTrialCount": 2,
        "parameters": [{"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.1"}}],
        "trialTemplate": {
            "primaryContainerName": "training",
            "trialParameters": [{"name": "learningRate", "reference": "lr"}],
            "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {"containers": [
                {"name": "training", "image": "python:3.11-slim",
                 "command": ["python", "t.py", "--lr=${trialParameters.learningRate}"]}]}}}},
        },
    },
}
PIPELINE = {
    "apiVersion": "kubeflow-tasks/v1",
    "kind": "PipelineRun",
    "metadata": {"name": "p"},
    "spec": {"pipeline": "dags.commodity.pipeline:commodity_pipeline", "parameters": {"n_days": 10}},
}


def at(doc: dict, path: str, value):
    """A copy of `doc` with the dotted `path` set to `value` (or removed when value is DELETE)."""
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is DELETE:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


DELETE = object()
M = "spec.pytorchReplicaSpecs.Master"  # the schema's spelling, for schema errors
W = "spec.pytorchReplicaSpecs.Worker"
M_ROLE = "spec.pytorchReplicaSpecs[Master]"  # the webhooks' spelling, for their rules
W_ROLE = "spec.pytorchReplicaSpecs[Worker]"
C = "template.spec.containers.0"
T = "spec.trialTemplate"

CASES = [
    ("training-job", at(JOB, "metadata.name", "Train_Job"), "metadata.name"),
    ("training-job", at(JOB, "apiVersion", "kubeflow.org/v2"), "apiVersion"),
    ("training-job", at(JOB, f"{M}.replicas", 2), f"{M_ROLE}.replicas"),
    ("training-job", at(JOB, f"{W}.replicas", "two"), f"{W}.replicas"),
    ("training-job", at(JOB, f"{W}.replicas", 0), f"{W_ROLE}.replicas"),
    ("training-job", at(JOB, f"{M}.{C}.image", DELETE), f"{M_ROLE}.template.spec.containers[0].image"),
    ("training-job", at(JOB, f"{M}.{C}.name", "trainer"), f"{M_ROLE}.template.spec.containers"),
    ("training-job", at(JOB, f"{M}.{C}.command", "python train.py"), f"{M}.template.spec.containers[0].command"),
    ("training-job", at(JOB, f"{M}.restartPolicy", "Sometimes"), f"{M}.restartPolicy"),
    ("training-job", at(JOB, "spec.pytorchReplicaSpecs.Chief", JOB["spec"]["pytorchReplicaSpecs"]["Master"]),
     "spec.pytorchReplicaSpecs[Chief]"),
    ("training-job", at(JOB, "spec.runPolicy.backoffLimit", -1), "spec.runPolicy.backoffLimit"),
    ("training-job", at(JOB, "spec.runPolicy.cleanPodPolicy", "Some"), "spec.runPolicy.cleanPodPolicy"),
    ("training-job", at(JOB, "spec.pytorchReplicaSpecs", DELETE), "spec.pytorchReplicaSpecs"),
    ("training-job", at(TFJOB, "spec.tfReplicaSpecs.Master", TFJOB["spec"]["tfReplicaSpecs"]["Chief"]),
     "spec.tfReplicaSpecs"),
    ("training-job", EXPERIMENT, "kind"),
    ("experiment", at(EXPERIMENT, "metadata.name", "h" * 41), "metadata.name"),
    ("experiment", at(EXPERIMENT, "spec.objective.type", "maximise"), "spec.objective.type"),
    ("experiment", at(EXPERIMENT, "spec.objective.objectiveMetricName", DELETE), "spec.objective.objectiveMetricName"),
    ("experiment", at(EXPERIMENT, "spec.algorithm.algorithmName", "genetic"), "spec.algorithm.algorithmName"),
    ("experiment", at(EXPERIMENT, "spec.maxTrialCount", 0), "spec.maxTrialCount"),
    ("experiment", at(EXPERIMENT, "spec.parallelTrialCount", -1), "spec.parallelTrialCount"),
    ("experiment", at(EXPERIMENT, "spec.parameters.0.parameterType", "float"), "spec.parameters[0].parameterType"),
    ("experiment", at(EXPERIMENT, "spec.parameters.0.feasibleSpace.min", "0.5"), "spec.parameters[0].feasibleSpace.min"),
    ("experiment", at(EXPERIMENT, f"{T}.trialParameters.0.reference", "learning_rate"),
     "spec.trialTemplate.trialParameters[0].reference"),
    ("experiment", at(EXPERIMENT, f"{T}.primaryContainerName", "main"), "spec.trialTemplate.primaryContainerName"),
    ("experiment", at(EXPERIMENT, f"{T}.trialSpec", DELETE), "spec.trialTemplate"),
    ("pipeline", at(PIPELINE, "spec.pipeline", "not a reference"), "spec.pipeline"),
    ("pipeline", at(PIPELINE, "spec.pipeline", "missing/pipeline.yaml"), "spec.pipeline"),
]


@pytest.mark.parametrize("kind, manifest, field", CASES, ids=[f"{k}:{f}" for k, _, f in CASES])
def test_malformed_spec_exits_2_naming_the_field_and_starts_nothing(
    tmp_path: Path, state_dir: Path, capsys, kind, manifest, field
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(manifest))
    code = main(["run", kind, "--spec", str(spec), "--key", "k"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert f"{field}: " in lines[0], lines[0]  # the exact field, not a prefix of it
    assert captured.out == ""
    assert not (state_dir / "runs").exists(), "nothing may be submitted for a bad spec"


def test_unknown_manifest_parameter_exits_2(tmp_path: Path, state_dir: Path, capsys):
    manifest = at(JOB, f"{M}.{C}.command", ["python", "train.py", "--lr=${params.lr}"])
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(manifest))
    assert main(["run", "training-job", "--spec", str(spec), "--param", "learning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "spec.pytorchReplicaSpecs.Master.template.spec.containers[0].command[2]" in err and "'lr'" in err
    assert not (state_dir / "runs").exists()

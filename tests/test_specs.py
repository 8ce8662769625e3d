"""The spec layer: upstream manifests in, frozen dataclasses out, one-line errors naming the field."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.errors import SpecError
from shared.specs import (
    ExperimentSpec,
    Kind,
    PipelineRunSpec,
    TrainingJobSpec,
    load_spec,
    parse_experiment,
    parse_training_job,
)
from shared.specs.builders import katib_experiment, pipeline_run, pytorch_job, tf_job

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DATA = Path(__file__).parent / "data" / "specs"
REPO = Path(__file__).resolve().parents[1]


def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((DATA / name).read_text())


PYTORCH = manifest("pytorch-mnist.yaml")
TFJOB = manifest("tfjob-dist.yaml")
RANDOM = manifest("katib-random.yaml")
TPE = manifest("katib-tpe.yaml")
PIPELINE = manifest("pipeline-run.yaml")
MASTER = "spec.pytorchReplicaSpecs.Master"  # the API server's (schema) spelling of the map entry
WORKER = "spec.pytorchReplicaSpecs.Worker"
MASTER_ROLE = "spec.pytorchReplicaSpecs[Master]"  # the webhooks' spelling (Go field.Path.Key)
WORKER_ROLE = "spec.pytorchReplicaSpecs[Worker]"
TRIAL = "spec.trialTemplate"


# ---------------------------------------------------------------- a tiny path-editing helper for the table

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    return [int(i) if i else key for key, i in _TOKEN.findall(path)]


def edit(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `base` with `path=value` set (`__` stands for '.'); value DELETE removes the key."""
    doc = copy.deepcopy(base)
    for raw_path, value in changes.items():
        *parents, last = _steps(raw_path.replace("__", "."))
        node: Any = doc
        for step in parents:
            node = node[step]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return doc


DELETE = object()


def at(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Like edit() for paths that are not Python identifiers (e.g. 'spec.parameters[0].name')."""
    return edit(base, **{path.replace(".", "__"): value})


def container(kind_path: str, index: int = 0) -> str:
    return f"{kind_path}.template.spec.containers[{index}]"


# (id, manifest, expected error path, expected message fragment, rejected by the upstream schema too)
MALFORMED = [
    # ---- training jobs
    ("api-version", at(PYTORCH, "apiVersion", "kubeflow.org/v2"), "apiVersion", "kubeflow.org/v1", False),
    ("job-name-dns1035", at(PYTORCH, "metadata.name", "Bad_Name"), "metadata.name", "DNS-1035", False),
    ("job-name-too-long", at(PYTORCH, "metadata.name", "a" * 64), "metadata.name", "63", False),
    (
        "pytorch-replica-key",
        edit(PYTORCH, spec__pytorchReplicaSpecs__Chief=PYTORCH["spec"]["pytorchReplicaSpecs"]["Master"]),
        "spec.pytorchReplicaSpecs[Chief]",
        "unknown replica type",
        False,
    ),
    (
        "master-replicas-2",
        at(PYTORCH, f"{MASTER}.replicas", 2),
        f"{MASTER_ROLE}.replicas",
        "must be 1",
        False,
    ),
    (
        "master-replicas-0",
        at(PYTORCH, f"{MASTER}.replicas", 0),
        f"{MASTER_ROLE}.replicas",
        "must be 1",
        False,
    ),
    (
        "worker-replicas-0",
        at(PYTORCH, f"{WORKER}.replicas", 0),
        f"{WORKER_ROLE}.replicas",
        "at least 1",
        False,
    ),
    ("replicas-string", at(PYTORCH, f"{WORKER}.replicas", "2"), f"{WORKER}.replicas", "integer", True),
    (
        "container-field-misspelt",
        at(PYTORCH, f"{container(MASTER)}.imagee", "x"),
        f"{container(MASTER)}.imagee",
        "did you mean 'image'",
        False,
    ),
    (
        "pod-spec-field-misspelt",
        at(PYTORCH, f"{MASTER}.template.spec.nodeselector", {}),
        f"{MASTER}.template.spec.nodeselector",
        "did you mean 'nodeSelector'",
        False,
    ),
    (
        "env-entry-field-unknown",
        at(PYTORCH, f"{container(MASTER)}.env", [{"name": "A", "val": "1"}]),
        f"{container(MASTER)}.env[0].val",
        "unknown field",
        False,
    ),
    ("replicas-bool", at(PYTORCH, f"{WORKER}.replicas", True), f"{WORKER}.replicas", "integer", True),
    # refused by the API server itself: the CRD's scale subresource reads the Worker replicas
    ("replicas-negative", at(PYTORCH, f"{WORKER}.replicas", -1), f"{WORKER}.replicas", "non-negative", False),
    (
        "no-containers",
        at(PYTORCH, f"{MASTER}.template.spec.containers", []),
        f"{MASTER_ROLE}.template.spec.containers",
        "at least one",
        False,
    ),
    (
        "no-template",
        at(PYTORCH, f"{WORKER}.template", DELETE),
        f"{WORKER_ROLE}.template.spec.containers",
        "at least one",
        False,
    ),
    (
        "no-containers-key",
        at(PYTORCH, f"{MASTER}.template.spec.containers", DELETE),
        f"{MASTER}.template.spec.containers",
        "required",
        True,
    ),
    (
        "no-image",
        at(PYTORCH, f"{container(WORKER)}.image", DELETE),
        f"{container(WORKER_ROLE)}.image",
        "required",
        False,
    ),
    (
        "empty-image",
        at(PYTORCH, f"{container(MASTER)}.image", ""),
        f"{container(MASTER_ROLE)}.image",
        "required",
        False,
    ),
    (
        "image-not-string",
        at(PYTORCH, f"{container(MASTER)}.image", 7),
        f"{container(MASTER)}.image",
        "string",
        True,
    ),
    (
        "container-no-name",
        at(PYTORCH, f"{container(WORKER)}.name", DELETE),
        f"{container(WORKER)}.name",
        "required",
        True,
    ),
    (
        "no-pytorch-container",
        at(PYTORCH, f"{container(MASTER)}.name", "main"),
        f"{MASTER_ROLE}.template.spec.containers",
        "'pytorch'",
        False,
    ),
    (
        "empty-container-name",
        at(PYTORCH, f"{container(MASTER)}.name", ""),
        f"{MASTER_ROLE}.template.spec.containers",
        "'pytorch'",
        False,
    ),
    (
        "empty-sidecar-name",
        at(TFJOB, "spec.tfReplicaSpecs.Worker.template.spec.containers[1].name", ""),
        "spec.tfReplicaSpecs.Worker.template.spec.containers[1].name",
        "must not be empty",
        False,
    ),
    (
        "command-not-strings",
        at(PYTORCH, f"{container(MASTER)}.command", ["python3", 3]),
        f"{container(MASTER)}.command[1]",
        "string",
        True,
    ),
    (
        "args-not-list",
        at(PYTORCH, f"{container(MASTER)}.args", "--epochs=1"),
        f"{container(MASTER)}.args",
        "list",
        True,
    ),
    (
        "env-no-name",
        at(PYTORCH, f"{container(MASTER)}.env[0].name", DELETE),
        f"{container(MASTER)}.env[0].name",
        "required",
        True,
    ),
    (
        "port-no-number",
        at(PYTORCH, f"{container(MASTER)}.ports[0].containerPort", DELETE),
        f"{container(MASTER)}.ports[0].containerPort",
        "required",
        True,
    ),
    (
        "restart-policy",
        at(PYTORCH, f"{MASTER}.restartPolicy", "Sometimes"),
        f"{MASTER}.restartPolicy",
        "'OnFailure'",
        False,
    ),
    (
        "backoff-negative",
        at(PYTORCH, "spec.runPolicy.backoffLimit", -1),
        "spec.runPolicy.backoffLimit",
        ">= 0",
        False,
    ),
    (
        "backoff-string",
        at(PYTORCH, "spec.runPolicy.backoffLimit", "3"),
        "spec.runPolicy.backoffLimit",
        "integer",
        True,
    ),
    (
        "deadline-float",
        at(PYTORCH, "spec.runPolicy.activeDeadlineSeconds", 1.5),
        "spec.runPolicy.activeDeadlineSeconds",
        "integer",
        True,
    ),
    (
        "clean-pod-policy",
        at(PYTORCH, "spec.runPolicy.cleanPodPolicy", "Some"),
        "spec.runPolicy.cleanPodPolicy",
        "'Running'",
        False,
    ),
    (
        "suspend-string",
        at(PYTORCH, "spec.runPolicy.suspend", "yes"),
        "spec.runPolicy.suspend",
        "true or false",
        True,
    ),
    ("nproc-int", at(PYTORCH, "spec.nprocPerNode", 4), "spec.nprocPerNode", "quote it", True),
    ("nproc-word", at(PYTORCH, "spec.nprocPerNode", "tpu"), "spec.nprocPerNode", "'auto'", False),
    (
        "unknown-spec-field",
        at(PYTORCH, "spec.pytorchReplicaSpec", {}),
        "spec.pytorchReplicaSpec",
        "unknown field",
        False,
    ),
    (
        "elastic-nproc-twice",
        edit(PYTORCH, spec__nprocPerNode="2", spec__elasticPolicy={"nProcPerNode": 2}),
        "spec.elasticPolicy.nProcPerNode",
        "together",
        False,
    ),
    (
        "elastic-no-worker",
        edit(PYTORCH, spec__elasticPolicy={"minReplicas": 1}, spec__pytorchReplicaSpecs__Worker=DELETE),
        WORKER_ROLE,
        "elasticPolicy",
        False,
    ),
    (
        "tf-two-leaders",
        at(TFJOB, "spec.tfReplicaSpecs.Master", TFJOB["spec"]["tfReplicaSpecs"]["Chief"]),
        "spec.tfReplicaSpecs",
        "Chief or Master",
        False,
    ),
    (
        "tf-chief-replicas-2",
        at(TFJOB, "spec.tfReplicaSpecs.Chief.replicas", 2),
        "spec.tfReplicaSpecs[Chief].replicas",
        "at most 1",
        False,
    ),
    (
        "tf-replica-key",
        at(TFJOB, "spec.tfReplicaSpecs.Launcher", TFJOB["spec"]["tfReplicaSpecs"]["PS"]),
        "spec.tfReplicaSpecs[Launcher]",
        "Evaluator",
        False,
    ),
    (
        "tf-container-name",
        at(TFJOB, "spec.tfReplicaSpecs.PS.template.spec.containers[0].name", "pytorch"),
        "spec.tfReplicaSpecs[PS].template.spec.containers",
        "'tensorflow'",
        False,
    ),
    (
        "tf-success-policy",
        at(TFJOB, "spec.successPolicy", "AnyWorker"),
        "spec.successPolicy",
        "AllWorkers",
        False,
    ),
    # ---- experiments
    ("exp-name-too-long", at(RANDOM, "metadata.name", "e" * 41), "metadata.name", "40", False),
    ("exp-unknown-spec-field", at(RANDOM, "spec.maxTrials", 3), "spec.maxTrials", "unknown field", False),
    ("objective-type", at(RANDOM, "spec.objective.type", "max"), "spec.objective.type", "'maximize'", False),
    (
        "objective-metric",
        at(RANDOM, "spec.objective.objectiveMetricName", DELETE),
        "spec.objective.objectiveMetricName",
        "required",
        False,
    ),
    ("goal-string", at(RANDOM, "spec.objective.goal", "0.99"), "spec.objective.goal", "number", True),
    (
        "algorithm-missing",
        at(RANDOM, "spec.algorithm.algorithmName", DELETE),
        "spec.algorithm.algorithmName",
        "required",
        False,
    ),
    (
        "algorithm-unknown",
        at(RANDOM, "spec.algorithm.algorithmName", "annealing"),
        "spec.algorithm.algorithmName",
        "unknown algorithm",
        False,
    ),
    (
        "setting-unknown",
        at(TPE, "spec.algorithm.algorithmSettings[0].name", "seed"),
        "spec.algorithm.algorithmSettings[0].name",
        "unknown setting",
        False,
    ),
    (
        "setting-range",
        at(TPE, "spec.algorithm.algorithmSettings[0].value", "1.5"),
        "spec.algorithm.algorithmSettings[0].value",
        "(0, 1)",
        False,
    ),
    (
        "setting-not-string",
        at(TPE, "spec.algorithm.algorithmSettings[2].value", 7),
        "spec.algorithm.algorithmSettings[2].value",
        "quote it",
        True,
    ),
    (
        "hyperband-resource",
        at(
            RANDOM,
            "spec.algorithm",
            {"algorithmName": "hyperband", "algorithmSettings": [{"name": "r_l", "value": "9"}]},
        ),
        "spec.algorithm.algorithmSettings",
        "resource_name",
        False,
    ),
    ("parameters-empty", at(RANDOM, "spec.parameters", []), "spec.parameters", "or spec.nasConfig", False),
    (
        "parameter-duplicate",
        at(RANDOM, "spec.parameters[1].name", "lr"),
        "spec.parameters[1].name",
        "duplicate",
        False,
    ),
    (
        "parameter-type",
        at(RANDOM, "spec.parameters[0].parameterType", "float"),
        "spec.parameters[0].parameterType",
        "'double'",
        False,
    ),
    (
        "min-greater-than-max",
        at(RANDOM, "spec.parameters[0].feasibleSpace.min", "0.5"),
        "spec.parameters[0].feasibleSpace.min",
        "greater than max",
        False,
    ),
    (
        "int-min-fraction",
        at(RANDOM, "spec.parameters[1].feasibleSpace.min", "2.5"),
        "spec.parameters[1].feasibleSpace.min",
        "integer",
        False,
    ),
    (
        "min-unquoted",
        at(RANDOM, "spec.parameters[0].feasibleSpace.min", 0.01),
        "spec.parameters[0].feasibleSpace.min",
        "quote it",
        True,
    ),
    (
        "categorical-empty",
        at(RANDOM, "spec.parameters[2].feasibleSpace.list", []),
        "spec.parameters[2].feasibleSpace.list",
        "at least one",
        False,
    ),
    (
        "step-zero",
        at(RANDOM, "spec.parameters[0].feasibleSpace.step", "0"),
        "spec.parameters[0].feasibleSpace.step",
        "> 0",
        False,
    ),
    (
        "distribution",
        at(RANDOM, "spec.parameters[0].feasibleSpace.distribution", "gaussian"),
        "spec.parameters[0].feasibleSpace.distribution",
        "'logUniform'",
        False,
    ),
    (
        "grid-needs-step",
        at(RANDOM, "spec.algorithm.algorithmName", "grid"),
        "spec.parameters[0].feasibleSpace.step",
        "grid",
        False,
    ),
    ("parallel-zero", at(RANDOM, "spec.parallelTrialCount", 0), "spec.parallelTrialCount", ">= 1", False),
    ("max-trials-string", at(RANDOM, "spec.maxTrialCount", "12"), "spec.maxTrialCount", "integer", True),
    (
        "max-failed-negative",
        at(RANDOM, "spec.maxFailedTrialCount", -1),
        "spec.maxFailedTrialCount",
        ">= 0",
        False,
    ),
    ("trial-template-missing", at(RANDOM, TRIAL, DELETE), TRIAL, "required", False),
    (
        "trialspec-and-configmap",
        at(RANDOM, f"{TRIAL}.configMap", {"configMapName": "t"}),
        TRIAL,
        "exactly one",
        False,
    ),
    (
        "trial-reference",
        at(RANDOM, f"{TRIAL}.trialParameters[1].reference", "lr2"),
        f"{TRIAL}.trialParameters[1].reference",
        "unknown parameter 'lr2'",
        False,
    ),
    (
        "trial-param-undeclared",
        at(
            RANDOM,
            f"{TRIAL}.trialSpec.spec.template.spec.containers[0].command[2]",
            "--batch=${trialParameters.batch}",
        ),
        f"{TRIAL}.trialSpec.spec.template.spec.containers[0].command[2]",
        "undeclared trial parameter 'batch'",
        False,
    ),
    (
        "trial-param-unused",
        at(RANDOM, f"{TRIAL}.trialSpec.spec.template.spec.containers[0].command[5]", "--optimizer=sgd"),
        f"{TRIAL}.trialParameters[2].name",
        "not used",
        False,
    ),
    (
        "primary-container-missing",
        at(RANDOM, f"{TRIAL}.primaryContainerName", DELETE),
        f"{TRIAL}.primaryContainerName",
        "required",
        False,
    ),
    (
        "primary-container-unknown",
        at(RANDOM, f"{TRIAL}.primaryContainerName", "main"),
        f"{TRIAL}.primaryContainerName",
        "no container named 'main'",
        False,
    ),
    (
        "custom-kind-conditions",
        edit(
            RANDOM,
            spec__trialTemplate__trialSpec__kind="Workflow",
            spec__trialTemplate__trialSpec__apiVersion="argoproj.io/v1alpha1",
        ),
        f"{TRIAL}.successCondition",
        "no default",
        False,
    ),
    (
        "collector-kind",
        at(RANDOM, "spec.metricsCollectorSpec", {"collector": {"kind": "None"}}),
        "spec.metricsCollectorSpec.collector.kind",
        "'StdOut'",
        False,
    ),
    (
        "metrics-format",
        at(TPE, "spec.metricsCollectorSpec.source.filter.metricsFormat[0]", r"(\w+)=.*"),
        "spec.metricsCollectorSpec.source.filter.metricsFormat[0]",
        "two top subexpressions",
        False,
    ),
    (
        "early-stopping-algorithm",
        at(TPE, "spec.earlyStopping.algorithmName", "hyperband"),
        "spec.earlyStopping.algorithmName",
        "'medianstop'",
        False,
    ),
    (
        "early-stopping-setting",
        at(TPE, "spec.earlyStopping.algorithmSettings[0].name", "min_trials"),
        "spec.earlyStopping.algorithmSettings[0].name",
        "unknown setting",
        False,
    ),
    # ---- pipeline runs
    ("pipeline-missing", at(PIPELINE, "spec.pipeline", DELETE), "spec.pipeline", "required", False),
    (
        "pipeline-file-missing",
        at(PIPELINE, "spec.pipeline", "pipelines/nope.yaml"),
        "spec.pipeline",
        "not found",
        False,
    ),
    (
        "pipeline-function-syntax",
        at(PIPELINE, "spec.pipeline", "my pkg:run-it"),
        "spec.pipeline",
        "package.module:function",
        False,
    ),
    ("pipeline-unknown-field", at(PIPELINE, "spec.params", {}), "spec.params", "unknown field", False),
    (
        "pipeline-caching-type",
        at(PIPELINE, "spec.enableCaching", "no"),
        "spec.enableCaching",
        "true or false",
        False,
    ),
    ("pipeline-no-metadata", at(PIPELINE, "metadata", DELETE), "metadata", "required", False),
    (
        "pipeline-unknown-input",
        at(PIPELINE, "spec.parameters.c", 3),
        "spec.parameters.c",
        "unknown pipeline parameter 'c'",
        False,
    ),
]


@pytest.mark.parametrize(
    ("doc", "path", "fragment"), [c[1:4] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_spec_names_the_field(doc: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(doc, base_dir=str(DATA))
    message = str(info.value)
    assert "\n" not in message
    assert info.value.path == path, message
    assert message.startswith(f"{path}: ")
    assert fragment in message


def test_table_is_large_and_covers_all_kinds() -> None:
    kinds = {c[1]["kind"] for c in MALFORMED}
    assert len(MALFORMED) >= 25 and kinds == {"PyTorchJob", "TFJob", "Experiment", "PipelineRun"}


# ---------------------------------------------------------------- valid manifests


def test_pytorchjob_master_and_workers() -> None:
    spec = load_spec(DATA / "pytorch-mnist.yaml", kind="training-job")
    assert isinstance(spec, TrainingJobSpec)
    assert (spec.resource, spec.name, spec.namespace, spec.kind) == (
        "PyTorchJob",
        "pytorch-simple",
        "kubeflow",
        Kind.TRAINING_JOB,
    )
    master, worker = spec.replicas
    assert (master.type, master.replicas, master.restart_policy, master.port) == (
        "Master",
        1,
        "OnFailure",
        29500,
    )
    assert (worker.type, worker.replicas, worker.restart_policy, worker.port) == (
        "Worker",
        2,
        "OnFailure",
        23456,
    )
    assert master.container.command == ("python3", "/opt/pytorch-mnist/mnist.py", "--epochs=1")
    assert master.container.env == (("LOG_LEVEL", "info"),)  # valueFrom stays in the manifest only
    assert spec.run_policy.backoff_limit == 2 and spec.run_policy.active_deadline_seconds == 3600
    assert spec.run_policy.clean_pod_policy == "None" and spec.run_policy.suspend is False
    assert spec.base_dir == str(DATA)
    assert spec.manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] == "OnFailure"  # defaulted


def test_tfjob_chief_workers_ps() -> None:
    spec = load_spec(DATA / "tfjob-dist.yaml")
    assert isinstance(spec, TrainingJobSpec) and spec.resource == "TFJob"
    assert [r.type for r in spec.replicas] == ["Chief", "PS", "Worker"]  # leader first, then manifest order
    assert spec.replica("PS").port == 2223
    assert spec.replica("PS").restart_policy == "Never"  # TFJob default
    assert spec.replica("Worker").restart_policy == "OnFailure"
    assert spec.replica("Worker").container.name == "tensorflow"  # the framework container, not the sidecar
    assert spec.replica("Chief").container.args == ("--train_steps", "100")
    assert spec.success_policy == "AllWorkers" and spec.run_policy.backoff_limit == 1


def test_training_defaults() -> None:
    doc = edit(
        TFJOB,
        spec__successPolicy=DELETE,
        spec__runPolicy=DELETE,
        spec__tfReplicaSpecs__Worker__replicas=DELETE,
    )
    spec = parse_training_job(doc, None)
    assert (
        spec.success_policy == ""
        and spec.run_policy.backoff_limit is None
        and spec.replica("Worker").replicas == 1
    )
    assert spec.manifest["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 1
    assert doc["spec"]["tfReplicaSpecs"]["Worker"].get("replicas") is None  # the input is not changed
    worker_only = edit(PYTORCH, spec__pytorchReplicaSpecs__Master=DELETE, spec__nprocPerNode="2")
    spec = parse_training_job(worker_only, str(DATA))
    assert [r.type for r in spec.replicas] == ["Worker"] and spec.nproc_per_node == "2"


def test_random_experiment() -> None:
    spec = load_spec(DATA / "katib-random.yaml", kind=Kind.EXPERIMENT)
    assert isinstance(spec, ExperimentSpec)
    assert (spec.name, spec.namespace, spec.algorithm.name) == ("random", "kubeflow", "random")
    assert spec.objective.type == "maximize" and spec.objective.goal == 0.99
    assert spec.objective.metric_strategies == (("Validation-accuracy", "max"), ("Train-accuracy", "latest"))
    assert [(p.name, p.parameter_type, p.min, p.max, p.list) for p in spec.parameters] == [
        ("lr", "double", "0.01", "0.03", ()),
        ("num-layers", "int", "2", "5", ()),
        ("optimizer", "categorical", None, None, ("sgd", "adam", "ftrl")),
    ]
    template = spec.trial_template
    assert [(t.name, t.reference) for t in template.trial_parameters][0] == ("learningRate", "lr")
    assert template.primary_container_name == "training-container"
    assert template.success_condition == 'status.conditions.#(type=="Complete")#|#(status=="True")#'
    assert template.failure_condition == 'status.conditions.#(type=="Failed")#|#(status=="True")#'
    assert (spec.parallel_trial_count, spec.max_trial_count, spec.max_failed_trial_count) == (3, 12, 3)
    assert spec.resume_policy == "Never" and spec.early_stopping is None
    stored = spec.manifest["spec"]
    assert stored["metricsCollectorSpec"]["collector"]["kind"] == "StdOut"
    assert stored["trialTemplate"]["successCondition"] == template.success_condition
    assert (
        "${trialParameters.learningRate}"
        in template.trial_spec["spec"]["template"]["spec"]["containers"][0]["command"][3]
    )


def test_tpe_experiment_with_pytorch_trials() -> None:
    spec = load_spec(DATA / "katib-tpe.yaml")
    assert isinstance(spec, ExperimentSpec)
    assert spec.algorithm.settings == (("gamma", "0.25"), ("n_EI_candidates", "24"), ("random_state", "7"))
    assert spec.algorithm.setting("random_state") == "7" and spec.algorithm.setting("prior_weight") is None
    assert spec.objective.metric_strategies == (("loss", "min"), ("accuracy", "max"))
    assert spec.early_stopping.name == "medianstop" and spec.early_stopping.setting("start_step") == "2"
    assert spec.parameters[0].distribution == "logUniform" and spec.parameters[1].list == (
        "0.5",
        "0.9",
        "0.99",
    )
    assert spec.metrics_format and spec.parallel_trial_count == 2
    template = spec.trial_template
    assert template.trial_parameters[2].reference == "${trialSpec.Name}"
    assert template.success_condition == 'status.conditions.#(type=="Succeeded")#|#(status=="True")#'
    assert spec.manifest["spec"]["trialTemplate"]["primaryPodLabels"] == {
        "training.kubeflow.org/job-role": "master"
    }


def test_experiment_kubectl_style_json_file(tmp_path: Path) -> None:
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(RANDOM))
    spec = load_spec(str(path))
    assert isinstance(spec, ExperimentSpec) and spec.base_dir == str(tmp_path)


# ---------------------------------------------------------------- kinds, files and ${params}


def test_wrong_kind_requested() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(DATA / "katib-random.yaml", kind="training-job")
    assert (
        str(info.value)
        == "kind: expected a PyTorchJob or TFJob manifest for 'training-job', got 'Experiment'"
    )
    with pytest.raises(SpecError, match="^kind: expected one of pipeline, experiment, training-job"):
        load_spec(PYTORCH, kind="job")
    with pytest.raises(SpecError, match="^kind: expected PyTorchJob, TFJob, Experiment"):
        load_spec({"apiVersion": "batch/v1", "kind": "Job"})


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [PyTorchJob\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert "not valid YAML" in str(info.value) and "\n" not in str(info.value)
    two = tmp_path / "two.yaml"
    two.write_text("kind: A\n---\nkind: B\n")
    with pytest.raises(SpecError, match="exactly one document, found 2"):
        load_spec(two)


def test_params_substitution() -> None:
    spec = load_spec(
        DATA / "pytorch-params.yaml", params={"name": "run-7", "epochs": "3", "learning_rate": "0.1"}
    )
    assert spec.name == "run-7"
    assert spec.replicas[0].container.args == ("--epochs", "3", "--lr=0.1")
    assert (
        spec.manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"][2]
        == "--lr=0.1"
    )


def test_params_unknown_name_points_at_the_field() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(DATA / "pytorch-params.yaml", params={"name": "j", "epochs": "3", "lr": "0.1"})
    assert str(info.value) == (
        "spec.pytorchReplicaSpecs.Master.template.spec.containers[0].args[2]: "
        "unknown parameter 'learning_rate' (given: epochs, lr, name)"
    )


def test_params_unused_are_rejected() -> None:
    with pytest.raises(SpecError, match=r"^params: not used by the manifest: batch"):
        load_spec(
            DATA / "pytorch-params.yaml",
            params={"name": "j", "epochs": "3", "learning_rate": "1", "batch": "8"},
        )
    with pytest.raises(SpecError, match=r"^params: not used by the manifest: lr"):
        load_spec(DATA / "katib-random.yaml", params={"lr": "0.1"})


def test_params_leave_katib_placeholders_alone() -> None:
    doc = at(RANDOM, "metadata.name", "${params.name}")
    spec = parse_experiment(doc, None, params={"name": "hp-1"})
    assert spec.name == "hp-1"
    command = spec.trial_template.trial_spec["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--lr=${trialParameters.learningRate}" in command


# ---------------------------------------------------------------- pipeline runs


def test_pipeline_run_document() -> None:
    spec = load_spec(DATA / "pipeline-run.yaml", params={"b": "4"})
    assert isinstance(spec, PipelineRunSpec) and spec.kind is Kind.PIPELINE
    assert spec.name == "add-numbers" and spec.namespace == "team-a"
    assert spec.pipeline == str(DATA / "pipelines" / "add.yaml")
    assert spec.parameters == {"a": 1, "b": "4"}  # CLI params override and stay strings
    assert (spec.experiment, spec.enable_caching, spec.pipeline_root) == ("demos", False, "/tmp/kfp-root")
    assert spec.base_dir == str(DATA)


def test_compiled_pipeline_given_directly() -> None:
    path = DATA / "pipelines" / "add.yaml"
    spec = load_spec(path, kind="pipeline", params={"a": "3"})
    assert isinstance(spec, PipelineRunSpec)
    assert (spec.name, spec.pipeline, spec.parameters) == ("add-pipeline", str(path), {"a": "3"})
    with pytest.raises(SpecError, match="^params: unknown pipeline parameter 'z'"):
        load_spec(path, params={"z": "1"})
    with pytest.raises(SpecError, match="for 'experiment', got a compiled KFP pipeline"):
        load_spec(path, kind="experiment")


def test_pipeline_function_reference_is_not_imported() -> None:
    doc = at(PIPELINE, "spec", {"pipeline": "no_such_package.pipelines:train"})
    spec = load_spec(doc)
    assert spec.pipeline == "no_such_package.pipelines:train" and spec.base_dir  # cwd for a mapping


# ---------------------------------------------------------------- builders


def test_pytorch_job_builder() -> None:
    spec = pytorch_job("demo", "python train.py --epochs 2", workers=3, env={"A": "1"}, backoff_limit=1)
    assert [(r.type, r.replicas) for r in spec.replicas] == [("Master", 1), ("Worker", 3)]
    assert spec.replicas[1].container.command == ("python", "train.py", "--epochs", "2")
    assert spec.replicas[0].container.env == (("A", "1"),) and spec.run_policy.backoff_limit == 1
    assert spec.manifest["kind"] == "PyTorchJob"
    with pytest.raises(SpecError, match="^metadata.name:"):
        pytorch_job("Demo", ["python"])


def test_tf_job_builder() -> None:
    spec = tf_job("tf", ["python", "t.py"], workers=2, ps=1, active_deadline_seconds=60)
    assert [(r.type, r.replicas, r.restart_policy) for r in spec.replicas] == [
        ("Chief", 1, "Never"),
        ("Worker", 2, "Never"),
        ("PS", 1, "Never"),
    ]
    assert spec.run_policy.active_deadline_seconds == 60
    assert [r.type for r in tf_job("tf", ["x"], chief=False).replicas] == ["Worker"]


def test_katib_experiment_builder() -> None:
    spec = katib_experiment(
        "hp",
        objective_metric="loss",
        goal=0.1,
        algorithm="tpe",
        algorithm_settings={"random_state": 3},
        parameters={
            "lr": ("double", 0.001, 0.1),
            "n": ("int", 10, 200),
            "opt": ("categorical", ["sgd", "adam"]),
        },
        trial_command=["python", "t.py", "--lr=${trialParameters.lr}", "--opt=${trialParameters.opt}"],
    )
    assert [(p.name, p.parameter_type, p.min, p.max, p.list) for p in spec.parameters] == [
        ("lr", "double", "0.001", "0.1", ()),
        ("n", "int", "10", "200", ()),
        ("opt", "categorical", None, None, ("sgd", "adam")),
    ]
    assert [t.name for t in spec.trial_template.trial_parameters] == ["lr", "opt"]
    assert spec.trial_template.primary_container_name == "training"
    assert spec.trial_template.trial_spec["kind"] == "Job" and spec.algorithm.setting("random_state") == "3"
    assert spec.objective.goal == 0.1 and spec.max_trial_count == 10
    with pytest.raises(SpecError, match=r"trialParameters\[0\]\.reference: unknown parameter .x."):
        katib_experiment(
            "hp",
            objective_metric="loss",
            parameters={"lr": ("double", 0, 1)},
            trial_command="t ${trialParameters.x}",
        )
    with pytest.raises(SpecError, match=r"^parameters\.lr: expected"):
        katib_experiment("hp", objective_metric="loss", parameters={"lr": ("double", 1)}, trial_command="t")


def test_pipeline_run_builder() -> None:
    spec = pipeline_run("add.yaml", parameters={"a": 2}, experiment="e", base_dir=str(DATA / "pipelines"))
    assert (spec.name, spec.pipeline, spec.parameters) == (
        "add",
        str(DATA / "pipelines" / "add.yaml"),
        {"a": 2},
    )
    assert pipeline_run("pkg.mod:train_pipeline").name == "train_pipeline"


# ---------------------------------------------------------------- upstream schemas


def _crd_schema(reference_specs: Path, kind: str) -> dict[str, Any]:
    name = {"PyTorchJob": "kubeflow.org_pytorchjobs.yaml", "TFJob": "kubeflow.org_tfjobs.yaml"}[kind]
    crd = yaml.load((reference_specs / "training-operator-v1" / name).read_text(), Loader=_LOADER)
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def _katib_schema(reference_specs: Path) -> dict[str, Any]:
    """Katib's typed swagger; Kubernetes core types it refers to but does not define are left open."""
    swagger = json.loads((reference_specs / "katib-v1beta1" / "pkg-apis-v1beta1-swagger.json").read_text())
    definitions = dict(swagger["definitions"])
    for ref in re.findall(r'"#/definitions/([^"]+)"', json.dumps(definitions)):
        definitions.setdefault(ref, {})
    return {"$ref": "#/definitions/v1beta1.Experiment", "definitions": definitions}


@functools.cache
def _validator(reference_specs: Path, kind: str) -> Any:
    """Parsing the CRDs takes seconds, so each schema is read once per session."""
    import jsonschema

    schema = _katib_schema(reference_specs) if kind == "Experiment" else _crd_schema(reference_specs, kind)
    return jsonschema.Draft4Validator(schema)


def _schema_errors(reference_specs: Path, doc: dict[str, Any]) -> list[str]:
    return [e.message for e in _validator(reference_specs, doc["kind"]).iter_errors(doc)]


@pytest.mark.parametrize(
    "name", ["pytorch-mnist.yaml", "tfjob-dist.yaml", "katib-random.yaml", "katib-tpe.yaml"]
)
def test_valid_manifests_match_upstream_schema(reference_specs: Path, name: str) -> None:
    spec = load_spec(DATA / name)
    assert _schema_errors(reference_specs, manifest(name)) == []
    assert _schema_errors(reference_specs, dict(spec.manifest)) == []  # the defaulted manifest too


def test_builder_manifests_match_upstream_schema(reference_specs: Path) -> None:
    specs = [pytorch_job("a", ["x"], backoff_limit=1), tf_job("b", ["x"], ps=1)]
    specs.append(
        katib_experiment(
            "c", objective_metric="m", parameters={"p": ("int", 1, 3)}, trial_command="t ${trialParameters.p}"
        )
    )
    for spec in specs:
        assert _schema_errors(reference_specs, dict(spec.manifest)) == []


@pytest.mark.parametrize("kind", ["PyTorchJob", "TFJob"])
def test_pod_template_fields_are_the_crd_schema_fields(reference_specs: Path, kind: str) -> None:
    """kubectl's strict field validation refuses what the CRD's structural schema lacks: our lists
    of pod template, PodSpec and Container fields are exactly the schema's."""
    from shared.specs import pod_fields

    spec = _crd_schema(reference_specs, kind)["properties"]["spec"]["properties"]
    replica = spec["pytorchReplicaSpecs" if kind == "PyTorchJob" else "tfReplicaSpecs"]["additionalProperties"]
    template = replica["properties"]["template"]
    pod = template["properties"]["spec"]
    box = pod["properties"]["containers"]["items"]["properties"]
    pairs = [
        (pod_fields.TEMPLATE, template),
        (pod_fields.POD_SPEC, pod),
        (pod_fields.CONTAINER, pod["properties"]["containers"]["items"]),
        (pod_fields.CONTAINER, pod["properties"]["initContainers"]["items"]),
        (pod_fields.ENV_VAR, box["env"]["items"]),
        (pod_fields.PORT, box["ports"]["items"]),
        (pod_fields.RESOURCES, box["resources"]),
        (pod_fields.VOLUME_MOUNT, box["volumeMounts"]["items"]),
    ]
    for ours, schema in pairs:
        assert set(ours) == set(schema["properties"])


def test_a_job_trial_is_checked_as_a_batch_job() -> None:
    doc = at(RANDOM, f"{TRIAL}.trialSpec.spec.template.spec.containers[0].comand", ["x"])
    with pytest.raises(SpecError) as info:
        parse_experiment(doc)
    assert info.value.path == f"{TRIAL}.trialSpec.spec.template.spec.containers[0].comand"
    assert "did you mean 'command'" in str(info.value)


SCHEMA_LEVEL = [c for c in MALFORMED if c[4]]
_MAP_KEY = re.compile(r"\[[A-Za-z]")  # `[Master]`: how the webhooks, never the schema, write a map entry


def test_schema_errors_use_the_schema_spelling_and_webhook_errors_the_webhook_spelling() -> None:
    """The API server reports schema errors as `...Specs.Master.x`, the webhooks as `...Specs[Master].x`."""
    replica_rows = [c for c in MALFORMED if re.search(r"ReplicaSpecs[.\[]", c[2])]
    assert [c[0] for c in replica_rows if c[4] and _MAP_KEY.search(c[2])] == []
    # our own checks of fields the webhooks never look at keep the schema's spelling
    own = (".restartPolicy", ".name")
    # unknown fields are refused by the API server's strict field validation: the schema's spelling
    strict = {"container-field-misspelt", "pod-spec-field-misspelt", "env-entry-field-unknown"}
    # the API server's own check of the scale subresource's replicas path (seen on the real stack)
    strict |= {"replicas-negative"}
    webhook_level = [c for c in replica_rows if not c[4] and not c[2].endswith(own) and c[0] not in strict]
    assert [c[0] for c in replica_rows if c[0] in strict and _MAP_KEY.search(c[2])] == []
    assert webhook_level and [c[0] for c in webhook_level if not _MAP_KEY.search(c[2])] == []


@pytest.mark.parametrize("doc", [c[1] for c in SCHEMA_LEVEL], ids=[c[0] for c in SCHEMA_LEVEL])
def test_schema_level_cases_are_rejected_by_upstream_schema(
    reference_specs: Path, doc: dict[str, Any]
) -> None:
    assert _schema_errors(reference_specs, doc)


# ---------------------------------------------------------------- import weight


def test_loading_a_spec_imports_no_heavy_library() -> None:
    code = (
        "import sys, shared, shared.specs, shared.specs.builders\n"
        f"shared.specs.load_spec({str(DATA / 'katib-tpe.yaml')!r})\n"
        f"shared.specs.load_spec({str(DATA / 'pytorch-mnist.yaml')!r})\n"
        f"shared.specs.load_spec({str(DATA / 'pipeline-run.yaml')!r})\n"
        "heavy = ('kfp', 'kubernetes', 'mlflow', 'optuna', 'hyperopt', 'skopt', 'torch')\n"
        "messages = 'kfp.pipeline_spec.pipeline_spec_pb2'  # a compiled pipeline is parsed with these\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy and m != messages))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"

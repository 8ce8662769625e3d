"""Conformance with the real upstream manifests: every file of `../shared/conformance` gets the
verdict its upstream server gives it (see that folder's README), and probes one edit away from an
upstream example check the rules one at a time.

A `cluster` verdict (a trial template read from a ConfigMap) means accepted by the spec layer: only
the cluster can read the ConfigMap. A refusal is one line naming the field.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.errors import SpecError
from shared.specs import PipelineRunSpec, load_spec, parse_experiment
from tests.conftest import REFERENCE_DIR

CONFORMANCE = REFERENCE_DIR / "conformance"


def _rows() -> list[tuple[str, str, str]]:
    table = CONFORMANCE / "expected.tsv"
    if not table.is_file():
        return [("missing", "", "")]
    lines = table.read_text().splitlines()[1:]
    return [tuple(line.split("\t")) for line in lines if line.strip()]  # type: ignore[misc]


ROWS = _rows()
# Why upstream refuses each `reject` file, as the field our one-line error must name.
REJECTED_FIELD = {
    # maxFailedTrialCount 3 > maxTrialCount 2 (validator: "should be less than or equal to")
    "katib@v0.19.0/examples/v1beta1/hp-tuning/simple-pbt.yaml": "spec.maxFailedTrialCount",
    # declares learningRate but the steps use $(trialParameters.lr), never ${trialParameters.learningRate}
    "katib@v0.19.0/examples/v1beta1/tekton/pipeline-run.yaml": "spec.trialTemplate.trialParameters[0].name",
    "katib@v0.19.0/test/e2e/v1beta1/testdata/invalid-experiment.yaml": "spec.algorithm.algorithmName",
    "pipelines@2.17.0/test_data/sdk_compiled_pipelines/invalid/invalid_yaml.yaml": "components_1",
    "pipelines@2.17.0/test_data/sdk_compiled_pipelines/invalid/no_name.yaml": "pipelineInfo.name",
    "pipelines@2.17.0/test_data/sdk_compiled_pipelines/invalid/empty_file.yaml": "<file>",
}


@pytest.fixture(scope="module")
def corpus(conformance: Path) -> Path:
    return conformance


def test_the_corpus_is_all_there(corpus: Path) -> None:
    assert len(ROWS) >= 220
    assert {r[2] for r in ROWS} == {"accept", "reject", "cluster"}
    assert {r[0] for r in ROWS if r[2] == "reject"} == set(REJECTED_FIELD)


@pytest.mark.parametrize(("path", "kind", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_upstream_verdict(corpus: Path, path: str, kind: str, expected: str) -> None:
    file = corpus / path
    if expected in ("accept", "cluster"):
        spec = load_spec(file)
        if kind.startswith("KFP"):
            assert isinstance(spec, PipelineRunSpec) and spec.pipeline == str(file)
        return
    with pytest.raises(SpecError) as info:
        load_spec(file)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    wanted = REJECTED_FIELD[path]
    assert info.value.path == (str(file) if wanted == "<file>" else wanted), message


def test_a_platform_spec_is_kept_with_its_pipeline(corpus: Path) -> None:
    from shared.specs.kfp_package import read_package

    package = read_package(
        str(corpus / "pipelines@2.17.0/kubernetes_platform/python/test/snapshot/data/secret_as_env.yaml")
    )
    executors = package.kubernetes_executors()
    assert executors and all("secretAsEnv" in e for e in executors.values())
    assert [sorted(d)[:1] for d in package.ir_documents()] == [["components"], ["platforms"]]


# ---------------------------------------------------------------- probes: one edit from an example


def _example(corpus: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load((corpus / "katib@v0.19.0/examples/v1beta1" / name).read_text())


def _probe(corpus: Path, name: str, edit: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_example(corpus, name))
    edit(doc["spec"])
    return doc


def _fs(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["metricsCollectorSpec"]["source"]["fileSystemPath"]


def _trial_params(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec["trialTemplate"]["trialParameters"]


def _tekton_fixed(spec: dict[str, Any]) -> None:
    """The Tekton example as it was meant: the step uses ${trialParameters.learningRate}."""
    steps = spec["trialTemplate"]["trialSpec"]["spec"]["pipelineSpec"]["tasks"][1]["taskSpec"]["steps"]
    steps[0]["command"][-1] = "--lr=${trialParameters.learningRate}"


PROBES_REFUSED = [
    # (id, example, edit, field)
    (
        "file-collector-relative-path",
        "metrics-collector/file-metrics-collector.yaml",
        lambda s: _fs(s).update(path="katib/mnist.log"),
        "spec.metricsCollectorSpec.source.fileSystemPath.path",
    ),
    (
        "json-format-with-filter",
        "metrics-collector/file-metrics-collector-with-json-format.yaml",
        lambda s: s["metricsCollectorSpec"]["source"].update(filter={"metricsFormat": ["(a)=(b)"]}),
        "spec.metricsCollectorSpec.source.filter",
    ),
    (
        "file-format-unknown",
        "metrics-collector/file-metrics-collector.yaml",
        lambda s: _fs(s).update(format="YAML"),
        "spec.metricsCollectorSpec.source.fileSystemPath.format",
    ),
    (
        "tfevent-with-format",
        "kubeflow-training-operator/tfjob-mnist-with-summaries.yaml",
        lambda s: _fs(s).update(format="TEXT"),
        "spec.metricsCollectorSpec.source.fileSystemPath.format",
    ),
    (
        "tfevent-file-kind",
        "kubeflow-training-operator/tfjob-mnist-with-summaries.yaml",
        lambda s: _fs(s).update(kind="File"),
        "spec.metricsCollectorSpec.source.fileSystemPath.path",
    ),
    (
        "filter-one-group",
        "metrics-collector/file-metrics-collector.yaml",
        lambda s: s["metricsCollectorSpec"]["source"]["filter"].update(metricsFormat=["loss=([0-9.]+)"]),
        "spec.metricsCollectorSpec.source.filter.metricsFormat[0]",
    ),
    (
        "custom-without-custom-collector",
        "metrics-collector/custom-metrics-collector.yaml",
        lambda s: s["metricsCollectorSpec"]["collector"].pop("customCollector"),
        "spec.metricsCollectorSpec.collector.customCollector",
    ),
    (
        "two-trial-parameters-one-reference",
        "hp-tuning/random.yaml",
        lambda s: _trial_params(s)[1].update(reference=_trial_params(s)[0]["reference"]),
        "spec.trialTemplate.trialParameters[1].reference",
    ),
    (
        "trial-spec-sets-metadata-name",
        "hp-tuning/random.yaml",
        lambda s: s["trialTemplate"]["trialSpec"].update(metadata={"name": "fixed"}),
        "spec.trialTemplate.trialSpec.metadata.name",
    ),
    (
        "no-primary-container-for-a-workflow",
        "argo/argo-workflow.yaml",
        lambda s: s["trialTemplate"].pop("primaryContainerName"),
        "spec.trialTemplate.primaryContainerName",
    ),
    (
        "argo-primary-container-is-main",
        "argo/argo-workflow.yaml",
        lambda s: s["trialTemplate"].update(primaryContainerName="model-training"),
        "spec.trialTemplate.primaryContainerName",
    ),
    (
        "tekton-primary-container-is-step-name",
        "tekton/pipeline-run.yaml",
        lambda s: (_tekton_fixed(s), s["trialTemplate"].update(primaryContainerName="model-training")),
        "spec.trialTemplate.primaryContainerName",
    ),
    (
        "nas-and-parameters",
        "nas/darts-cpu.yaml",
        lambda s: s.update(parameters=[{"name": "a", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "2"}}]),
        "spec.nasConfig",
    ),
    (
        "config-map-without-template-path",
        "trial-template/trial-configmap-source.yaml",
        lambda s: s["trialTemplate"]["configMap"].pop("templatePath"),
        "spec.trialTemplate.configMap.templatePath",
    ),
    (
        "config-map-and-trial-spec",
        "trial-template/trial-configmap-source.yaml",
        lambda s: s["trialTemplate"].update(trialSpec={"apiVersion": "batch/v1", "kind": "Job"}),
        "spec.trialTemplate",
    ),
    (
        "min-greater-than-max",
        "hp-tuning/random.yaml",
        lambda s: s["parameters"][0]["feasibleSpace"].update(min="0.5", max="0.1"),
        "spec.parameters[0].feasibleSpace.min",
    ),
]


@pytest.mark.parametrize(
    ("example", "edit", "field"), [p[1:] for p in PROBES_REFUSED], ids=[p[0] for p in PROBES_REFUSED]
)
def test_probe_is_refused_naming_the_field(corpus: Path, example: str, edit: Any, field: str) -> None:
    doc = _probe(corpus, example, edit)
    with pytest.raises(SpecError) as info:
        parse_experiment(doc)
    assert info.value.path == field, str(info.value)
    assert "\n" not in str(info.value)


PROBES_ACCEPTED = [
    ("min-equals-max", "hp-tuning/random.yaml", lambda s: s["parameters"][0]["feasibleSpace"].update(max=s["parameters"][0]["feasibleSpace"]["min"])),
    ("tekton-as-meant", "tekton/pipeline-run.yaml", _tekton_fixed),
    ("trial-spec-metadata-labels", "hp-tuning/random.yaml", lambda s: s["trialTemplate"]["trialSpec"].update(metadata={"labels": {"a": "b"}})),
]


@pytest.mark.parametrize(("example", "edit"), [p[1:] for p in PROBES_ACCEPTED], ids=[p[0] for p in PROBES_ACCEPTED])
def test_probe_is_accepted(corpus: Path, example: str, edit: Any) -> None:
    parse_experiment(_probe(corpus, example, edit))


def test_the_defaulter_fills_file_collector_path_and_format(corpus: Path) -> None:
    doc = _probe(corpus, "metrics-collector/file-metrics-collector.yaml", lambda s: None)
    spec = parse_experiment(doc)
    assert spec.metrics_collector == "File"
    assert _fs(dict(spec.manifest)["spec"])["format"] == "TEXT"
    doc["spec"]["metricsCollectorSpec"]["source"].pop("fileSystemPath")
    defaulted = parse_experiment(doc).manifest["spec"]["metricsCollectorSpec"]["source"]["fileSystemPath"]
    assert defaulted == {"path": "/var/log/katib/metrics.log", "kind": "File", "format": "TEXT"}

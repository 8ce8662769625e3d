"""Compiled KFP pipelines read as the KFP server reads an upload: every package form, the platform
spec kept beside the PipelineSpec, a strict parse with KFP's protobuf messages; and a
kfp-kubernetes pipeline run locally with its no-effect settings ignored, said once in the log."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from airflow_provider.specs import resolve_spec
from shared.errors import SpecError
from shared.specs import Kind, PipelineRunSpec, load_spec
from shared.specs.kfp_package import read_package
from shared.status import State
from tests.test_local_pipeline import COMPILED, runner_for

SNAPSHOTS = "pipelines@2.17.0/kubernetes_platform/python/test/snapshot/data"


def _tar(path: Path, name: str, text: str) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def test_every_package_form_the_server_takes(tmp_path: Path) -> None:
    text = COMPILED.read_text()
    forms = [
        _tar(tmp_path / "p.tar.gz", "pipeline.yaml", text),
        _tar(tmp_path / "p.tgz", "pipeline.yaml", text),
        _zip(tmp_path / "p.zip", {"pipeline.yaml": text}),
        tmp_path / "p.json",
    ]
    forms[-1].write_text(json.dumps(yaml.safe_load(text)))
    for path in forms:
        spec = load_spec(path, kind=Kind.PIPELINE, params={"name": "x"})
        assert isinstance(spec, PipelineRunSpec) and spec.pipeline == str(path), path
        assert spec.name == read_package(str(COMPILED)).name


def test_bad_packages_are_one_line_errors(tmp_path: Path) -> None:
    text = COMPILED.read_text()
    two = _zip(tmp_path / "two.zip", {"a.yaml": text, "b.yaml": text})
    no_yaml = _tar(tmp_path / "none.tar.gz", "README", "hello")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not gzip")
    for path, fragment in ((two, "exactly one file"), (no_yaml, "no .yaml"), (broken, "not a valid pipeline package")):
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert info.value.path == str(path) and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("edit", "field", "fragment"),
    [
        (lambda d: next(iter(d["root"]["dag"]["tasks"].values())).update(componentReff={}),
         "root.dag.tasks[{task}].componentReff", "unknown field; ml_pipelines.PipelineTaskSpec has:"),
        (lambda d: next(iter(d["root"]["dag"]["tasks"].values())).update(cachingOptions={"enableCache": "yes"}),
         "root.dag.tasks[{task}].cachingOptions.enableCache", "true or false"),
        (lambda d: d.update(schemaVersion="2.0.0"), "schemaVersion", "2.1.0"),
        (lambda d: d["pipelineInfo"].update(name="-"), "pipelineInfo.name", "lower-case"),
    ],
    ids=["unknown-task-field", "wrong-type", "schema-version", "bad-name"],
)
def test_a_pipeline_is_parsed_strictly_naming_the_field(tmp_path: Path, edit, field, fragment) -> None:
    doc = yaml.safe_load(COMPILED.read_text())
    task = next(iter(doc["root"]["dag"]["tasks"]))
    edit(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.path == field.format(task=task) and fragment in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    # the same file named by a PipelineRun document: the error says which file and which field
    run = {"apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun", "metadata": {"name": "r"},
           "spec": {"pipeline": "bad.yaml"}}
    with pytest.raises(SpecError) as info:
        load_spec(run, base_dir=str(tmp_path))
    assert info.value.path == f"spec.pipeline(bad.yaml).{field.format(task=task)}", str(info.value)


def test_multi_document_pipelines_everywhere_a_pipeline_is_read(conformance: Path, tmp_path: Path) -> None:
    source = conformance / SNAPSHOTS / "secret_as_env.yaml"
    # the CLI and DolphinScheduler (load_spec), a PipelineRun document, and Airflow's operator
    assert load_spec(source).pipeline == str(source)
    run = {"apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun", "metadata": {"name": "r"},
           "spec": {"pipeline": str(source)}}
    assert load_spec(run).pipeline == str(source)
    named = resolve_spec(Kind.PIPELINE, str(source), params=None, name="nightly", base_dir=str(tmp_path))
    assert (named.name, named.pipeline) == ("nightly", str(source))
    assert resolve_spec(Kind.PIPELINE, str(source), params=None, name=None, base_dir=str(tmp_path)).pipeline == str(source)


@pytest.mark.e2e
def test_a_kfp_kubernetes_pipeline_runs_locally_with_no_effect_settings_ignored(
    conformance: Path, tmp_path: Path
) -> None:
    """node_selector.yaml as compiled upstream: a node selector means nothing here; one log line."""
    spec = load_spec(conformance / SNAPSHOTS / "node_selector.yaml")
    assert isinstance(spec, PipelineRunSpec)
    run = runner_for(tmp_path, spec)
    status = run.runner.run()
    assert status.state is State.SUCCEEDED, status.message
    said = [line for line in run.lines if "without effect on this machine" in line]
    assert said == ["[kubeflow-tasks] kfp-kubernetes settings without effect on this machine, ignored: exec-comp: nodeSelector"]
    assert "platforms" not in (run.workdir / "kfp" / "pipeline-local.yaml").read_text()


@pytest.mark.e2e
def test_a_pipeline_from_a_tarball_runs_locally(tmp_path: Path) -> None:
    package = _tar(tmp_path / "hello.tar.gz", "pipeline.yaml", COMPILED.read_text())
    spec = load_spec(package, params={"name": "tar", "times": "1"})
    assert isinstance(spec, PipelineRunSpec)
    status = runner_for(tmp_path, spec).runner.run()
    assert status.state is State.SUCCEEDED, status.message
    assert Path(status.outputs["outputs"]["Output"]).read_text() == "hello tar"

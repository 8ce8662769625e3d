"""The key rule on the kubernetes backend (issue 10, item 3): a retry with the same spec adopts, another
spec under the key while the work runs is refused naming the object that holds the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import KeyConflict
from shared.operations import submit_or_adopt
from shared.specs import load_spec


def job(command: str) -> dict:
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "keyed"},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "pytorch", "image": "python:3.11", "command": ["python", "-c", command]}]}}}}},
    }


def test_another_spec_under_a_running_key_is_refused_and_the_same_spec_adopts(k8s_double, tmp_path):
    from shared.backends.kubernetes import KubernetesBackend

    k8s_double.set_behaviour(job_run_seconds=60)
    backend = KubernetesBackend(kubeconfig=str(k8s_double.write_kubeconfig(tmp_path / "kubeconfig")))
    first = submit_or_adopt(backend, load_spec(job("print(1)")), "nightly")
    again = submit_or_adopt(backend, load_spec(job("print(1)")), "nightly")
    assert again.adopted and again.handle.id == first.handle.id
    with pytest.raises(KeyConflict, match=first.handle.id):
        submit_or_adopt(backend, load_spec(job("print(2)")), "nightly")
    assert len(k8s_double.objects("pytorchjobs")) == 1
    backend.cancel(first.handle)


# ---------------------------------------------------------------- KFP runs carry the fingerprint too

SPECS = Path(__file__).resolve().parent / "data" / "specs"
ADD_PIPELINE = SPECS / "pipelines" / "add.yaml"


def pipeline(a: float) -> dict:
    return {
        "apiVersion": "kubeflow-tasks/v1",
        "kind": "PipelineRun",
        "metadata": {"name": "keyed-run"},
        "spec": {"pipeline": str(ADD_PIPELINE), "parameters": {"a": a, "b": 2}},
    }


def with_kfp(k8s_double, tmp_path):
    from shared.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(
        kubeconfig=str(k8s_double.write_kubeconfig(tmp_path / "kubeconfig")),
        kfp_host=k8s_double.kfp_url,
        kfp_token=k8s_double.kfp_token,
        kfp_poll_interval=0.2,
    )


def test_a_pipeline_run_with_other_parameters_under_a_running_key_is_refused(k8s_double, tmp_path):
    k8s_double.set_behaviour(kfp_run_seconds=60)
    backend = with_kfp(k8s_double, tmp_path)
    first = submit_or_adopt(backend, load_spec(pipeline(1)), "nightly-run")
    again = submit_or_adopt(backend, load_spec(pipeline(1)), "nightly-run")
    assert again.adopted and again.handle.id == first.handle.id
    with pytest.raises(KeyConflict, match=first.handle.id):
        submit_or_adopt(backend, load_spec(pipeline(5)), "nightly-run")
    assert len(k8s_double.runs()) == 1
    backend.cancel(first.handle)


def test_a_pipeline_run_made_before_fingerprints_is_still_read_and_adopted(k8s_double, tmp_path):
    """An older run's description holds only the key: it keeps its key and is trusted, as before."""
    from shared.backends.kubernetes import pipelines

    k8s_double.set_behaviour(kfp_run_seconds=60)
    backend = with_kfp(k8s_double, tmp_path)
    first = submit_or_adopt(backend, load_spec(pipeline(1)), "old-run")
    run = k8s_double.kfp.runs[first.handle.id.removeprefix("kfp/")]
    assert pipelines.field_of(run, "fingerprint")  # what this change stores ...
    run["description"] = f"{pipelines.DESCRIPTION_PREFIX}old-run"  # ... and what an older version stored
    assert backend.get(first.handle.id).key == "old-run"
    adopted = submit_or_adopt(backend, load_spec(pipeline(5)), "old-run")
    assert adopted.adopted and adopted.handle.id == first.handle.id
    backend.cancel(first.handle)


@pytest.mark.parametrize("key", ["plain", "two\nlines", "kubeflow-tasks fingerprint: looks like a field"])
def test_the_description_gives_back_the_key_and_fields_it_was_made_from(key):
    from shared.backends.kubernetes import pipelines

    text = pipelines.describe(key, fingerprint="f" * 64, config="c0ffee")
    assert pipelines.key_of({"description": text}) == key
    assert pipelines.field_of({"description": text}, "fingerprint") == "f" * 64
    assert pipelines.field_of({"description": text}, "config") == "c0ffee"
    assert pipelines.key_of({"description": pipelines.describe(key)}) == key
    assert pipelines.key_of({"description": "someone else's run"}) is None


def test_looking_up_a_key_costs_one_list_per_kind_plus_one_kfp_list(k8s_double, tmp_path):
    """Measured: a fresh submission reads each kind once (3 custom-resource lists in the one
    namespace searched, a kind found not served is not asked again) and KFP's runs once."""
    k8s_double.set_behaviour(absent={"experiments"})
    backend = with_kfp(k8s_double, tmp_path)
    submit_or_adopt(backend, load_spec(job("print(1)")), "counted")
    lists = [(m, p) for m, p, _ in k8s_double.request_log if m == "GET" and ("/apis/kubeflow.org/" in p or "/runs" in p)]
    assert sorted(p.split("?")[0].rsplit("/", 1)[-1] for _, p in lists) == ["experiments", "pytorchjobs", "runs", "tfjobs"]


def test_run_training_job_after_run_experiment_under_one_key_exits_2_naming_the_experiment(
    k8s_double, tmp_path, capsys, monkeypatch
):
    """The CLI's face of the rule: one line, exit 2, the holder named, nothing submitted."""
    import yaml

    from shared.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    k8s_double.set_behaviour(trial_run_seconds=60)
    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kubeconfig")
    backend = with_kfp(k8s_double, tmp_path)
    experiment = yaml.safe_load((SPECS / "katib-random.yaml").read_text())
    experiment["metadata"] = {"name": "tune"}
    held = submit_or_adopt(backend, load_spec(experiment), "nightly-tune").handle
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(job("print(1)")))
    token = tmp_path / "kfp-token"
    token.write_text(k8s_double.kfp_token)
    code = main(["run", "training-job", "--spec", str(spec), "--backend", "kubernetes", "--kubeconfig",
                 str(kubeconfig), "--kfp-host", k8s_double.kfp_url, "--kfp-token-file", str(token),
                 "--key", "nightly-tune"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "--key" in lines[0] and f"held by Experiment {held.id}" in lines[0], lines
    assert k8s_double.objects("pytorchjobs") == []
    backend.cancel(held)


def test_a_kfp_that_refuses_us_does_not_stop_a_training_job_but_stops_a_pipeline_run(k8s_double, tmp_path, caplog):
    """KFP is not this task's: its 401 is logged and its runs count as nothing; for a pipeline run
    the same 401 is the error."""
    from shared.backends.kubernetes import KubernetesBackend
    from shared.errors import ApiError

    backend = KubernetesBackend(kubeconfig=str(k8s_double.write_kubeconfig(tmp_path / "kubeconfig")),
                                kfp_host=k8s_double.kfp_url, kfp_token="wrong-token", namespace="default")
    submitted = submit_or_adopt(backend, load_spec(job("print(1)")), "kfp-refuses")
    assert not submitted.adopted and len(k8s_double.objects("pytorchjobs")) == 1
    assert "KFP runs skipped" in caplog.text and "401" in caplog.text and "wrong-token" not in caplog.text
    with pytest.raises(ApiError, match="401"):
        submit_or_adopt(backend, load_spec(pipeline(1)), "kfp-refuses-run")
    assert k8s_double.runs() == []
    backend.cancel(submitted.handle)

"""The provider as Airflow sees it, and the rules that need no running task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from airflow_env import ROOT, new_airflow

from airflow_provider.compat import AIRFLOW_MINOR
from airflow_provider.connection import FIELDS, ConnectionOptions, conn_fields
from airflow_provider.get_provider_info import get_provider_info
from airflow_provider.hooks.kubeflow import KubeflowHook
from airflow_provider.specs import resolve_spec
from airflow_provider.triggers.kubeflow import KubeflowRunTrigger
from shared.errors import SpecError
from shared.status import Kind

HEAVY = ("kfp", "kubernetes", "mlflow", "optuna", "torch")


@pytest.mark.e2e
def test_airflow_lists_the_provider_and_its_connection_type(tmp_path: Path) -> None:
    env = new_airflow(tmp_path)
    providers = env.airflow_json("providers", "list")
    ours = next(p for p in providers if p["package_name"] == "kubeflow-tasks")
    assert ours["version"] == "0.1.0"
    hooks = env.airflow_json("providers", "hooks")
    kubeflow = next(h for h in hooks if h["connection_type"] == "kubeflow")
    assert kubeflow["class"] == "airflow_provider.hooks.kubeflow.KubeflowHook"
    assert kubeflow["conn_id_attribute_name"] == "kubeflow_conn_id"


def test_importing_operators_and_the_dag_loads_no_heavy_client() -> None:
    code = (
        "import sys, runpy\n"
        "import airflow_provider.operators.kubeflow, airflow_provider.operators.registry, airflow_provider.operators.recurring\n"
        "import airflow_provider.sensors.kubeflow\n"
        "import airflow_provider.triggers.kubeflow, airflow_provider.hooks.kubeflow, airflow_provider.links\n"
        "runpy.run_path('dags/commodity_nightly_retraining.py')\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_provider_info_declares_fields_links_and_triggers() -> None:
    info = get_provider_info()
    (conn,) = info["connection-types"]
    assert conn["connection-type"] == "kubeflow"
    assert set(conn["conn-fields"]) == set(FIELDS)  # the same keys as the legacy form widgets
    assert conn["ui-field-behaviour"]["relabeling"] == {"host": "KFP endpoint", "password": "KFP token"}
    assert conn_fields()["backend"]["schema"]["enum"] == ["local", "kubernetes"]
    assert info["triggers"][0]["python-modules"] == ["airflow_provider.triggers.kubeflow"]
    assert len(info["extra-links"]) == 3


def test_connection_options_are_validated_and_keep_the_token_secret() -> None:
    extra = {"backend": "kubernetes", "namespace": "team-a", "allowed_namespaces": "team-a, team-b",
             "mlflow_tracking_uri": "https://bob:hunter2@mlflow.example.com", "katib_ui_url": "https://kf.example.com/katib"}
    options = ConnectionOptions.parse(host="https://kf.example.com/pipeline", password="s3cret-token", extra=extra)
    assert options.allowed_namespaces == ("team-a", "team-b")
    assert options.backend_options()["kfp_token"] == "s3cret-token"
    assert sorted(options.secrets()) == ["hunter2", "s3cret-token"]
    assert "s3cret" not in repr(options)
    assert options.mlflow_run_url("3", "abc") == "https://mlflow.example.com/#/experiments/3/runs/abc"
    assert options.katib_experiment_url("tune", None) == "https://kf.example.com/katib/experiment/tune?ns=team-a"
    backend = KubeflowHook.backend_for(options)  # builds, sends nothing: the cluster is not needed yet
    assert backend.name == "kubernetes" and backend.allowed == ("team-a", "team-b")
    legacy = ConnectionOptions.parse(host=None, password=None, extra={"extra__kubeflow__backend": "kubernetes"})
    assert legacy.backend == "kubernetes"

    bad = [
        ({"backend": "docker"}, None, "backend: expected one of local, kubernetes, got 'docker'"),
        ({"backend": "kubernetes", "namespace": "x", "allowed_namespaces": "a"}, None, "namespace:"),
        ({"backend": "kubernetes", "in_cluster": "true", "kubeconfig_path": "/k"}, None, "in_cluster:"),
        ({}, "token", "kfp_token: only applies with backend kubernetes"),
    ]
    for extra, password, message in bad:
        with pytest.raises(SpecError) as err:
            ConnectionOptions.parse(host=None, password=password, extra=extra)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
        assert "token" != password or "token'" not in str(err.value)


def test_trigger_serialises_ids_connection_and_deadline_only() -> None:
    handle = {"backend": "local", "kind": "training-job", "id": "train-1", "key": "d/t/r/-1"}
    trigger = KubeflowRunTrigger(handle=handle, kubeflow_conn_id="kf", deadline=1234.5)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider.triggers.kubeflow.KubeflowRunTrigger"
    assert kwargs == {"handle": handle, "kubeflow_conn_id": "kf", "deadline": 1234.5, "cancel_on_kill": True,
                      "startup_timeout": None}
    assert KubeflowRunTrigger(**kwargs).serialize() == (path, kwargs)


def test_specs_are_validated_before_anything_is_submitted(tmp_path: Path) -> None:
    specs = ROOT / "dags" / "commodity"
    job = resolve_spec(Kind.TRAINING_JOB, "pytorchjob.yaml", params={"data_path": "/d", "learning_rate": 0.1,
                       "num_estimators": 20}, name="renamed", base_dir=str(specs))
    assert job.name == "renamed" and "0.1" in job.replicas[0].container.command
    with pytest.raises(SpecError, match="^kind: expected a PyTorchJob or TFJob manifest"):
        resolve_spec(Kind.TRAINING_JOB, "experiment.yaml", params={"data_path": "/d"}, name=None, base_dir=str(specs))
    with pytest.raises(SpecError, match="^spec: a function is accepted for pipelines only"):
        resolve_spec(Kind.EXPERIMENT, print, params=None, name=None, base_dir=str(tmp_path))
    pipeline = resolve_spec(Kind.PIPELINE, "dags.commodity.pipeline:commodity_pipeline", params={"data_path": "/d"},
                            name=None, base_dir=str(ROOT))
    assert pipeline.pipeline == "dags.commodity.pipeline:commodity_pipeline" and pipeline.parameters == {"data_path": "/d"}


def test_a_kfp_pipeline_object_is_referenced_by_its_importable_name() -> None:
    from airflow_provider.specs import pipeline_reference
    from dags.commodity.pipeline import commodity_pipeline

    assert pipeline_reference(commodity_pipeline) == "dags.commodity.pipeline:commodity_pipeline"

    def local_pipeline() -> None: ...

    with pytest.raises(SpecError, match="^spec: pipeline .* must be a top-level function"):
        pipeline_reference(local_pipeline)


@pytest.mark.e2e
def test_airflow_connections_test_reaches_the_cluster_or_says_why_not_in_one_line(tmp_path: Path, k8s_double) -> None:
    env = new_airflow(tmp_path, AIRFLOW__CORE__TEST_CONNECTION="Enabled")
    kubeconfig = str(k8s_double.write_kubeconfig(tmp_path / "kubeconfig"))
    extra = {"backend": "kubernetes", "kubeconfig_path": kubeconfig, "namespace": "default"}
    env.set_connection("kf_ok", "kubeflow", extra, host=k8s_double.kfp_url, password=k8s_double.kfp_token)
    env.set_connection("kf_bad", "kubeflow", extra, host=k8s_double.kfp_url, password="wrong-s3cret")
    ok = env.airflow("connections", "test", "kf_ok", check=False)
    assert ok.returncode == 0 and "Connection success!" in ok.stdout, ok.stdout + ok.stderr[-3000:]
    bad = env.airflow("connections", "test", "kf_bad", check=False)
    assert bad.returncode == (1 if AIRFLOW_MINOR >= (3, 3) else 0), bad.stdout  # 3.0 exits 0 either way
    reason = bad.stdout.split("Connection failed!", 1)[1].strip()
    # the KFP API's own refusal, in one line: which call, the status and the server's reason
    assert "\n" not in reason and "HTTP 401" in reason and "list_runs" in reason, bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr and "wrong-s3cret" not in bad.stdout + bad.stderr


def test_labels_and_annotations_reach_the_remote_object_and_bad_ones_are_one_line(tmp_path: Path, k8s_double) -> None:
    from shared.backends.kubernetes import KubernetesBackend
    from shared.operations import submit_or_adopt

    specs = ROOT / "dags" / "commodity"
    values = {"data_path": "/d", "learning_rate": "0.1", "num_estimators": "20"}
    job = resolve_spec(Kind.TRAINING_JOB, "pytorchjob.yaml", params=values, name=None, base_dir=str(specs),
                       labels={"team": "forecasting", "example.com/cost-center": "ml-42"},
                       annotations={"example.com/owner": "Ana <ana@example.com>"})
    backend = KubernetesBackend(kubeconfig=str(k8s_double.write_kubeconfig(tmp_path / "kubeconfig")))
    submit_or_adopt(backend, job, "dag/train/run/-1")
    (created,) = k8s_double.objects("pytorchjobs")
    meta = created["metadata"]
    assert meta["labels"]["team"] == "forecasting" and meta["labels"]["example.com/cost-center"] == "ml-42"
    assert meta["annotations"]["example.com/owner"] == "Ana <ana@example.com>"
    assert "kubeflow-tasks.dev/key-hash" in meta["labels"]  # ours are kept beside them

    bad = [
        ({"labels": {"team": "a b"}}, Kind.TRAINING_JOB, "labels: value 'a b' of 'team'"),
        ({"labels": {"-x": "1"}}, Kind.TRAINING_JOB, "labels: '-x' is not a Kubernetes key"),
        ({"annotations": {"a": "1"}}, Kind.PIPELINE, "annotations: a KFP run has no labels"),
    ]
    for extra, kind, message in bad:
        spec = "pytorchjob.yaml" if kind is Kind.TRAINING_JOB else "pipeline_run.yaml"
        with pytest.raises(SpecError) as err:
            resolve_spec(kind, spec, params=values, name=None, base_dir=str(specs), **extra)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)

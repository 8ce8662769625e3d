"""Runs of pipelines uploaded to KFP, by name and version (`kfp run submit --pipeline-name`).

The CLI runs as a real subprocess with the real kfp_server_api client against the wire-level KFP
double (tests/k8s_double/kfp.py: bodies checked against the v2beta1 swagger, list filters and
sorting, namespaces in multi-user mode). Pipelines are uploaded through our own upload path
(`recurring.upload_pipeline`), as `kubeflow-tasks schedule` uploads them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from shared.errors import SpecError
from tests.k8s_double.fixture import double_cli

REPO = Path(__file__).resolve().parents[1]
ADD = REPO / "tests" / "data" / "specs" / "pipelines" / "add.yaml"


def upload(k8s_double, tmp_path: Path, version: str, *, name: str = "adder", namespace: str | None = None) -> dict:
    """Upload add.yaml as pipeline `name`, version `version`; the version's ids.

    KFP's timestamps have whole seconds, so uploads in one second have no order by time, on the real
    server as here: each version made is given a second of its own (the upload of a new pipeline
    also makes a first version named after it)."""
    from shared.backends.kubernetes import KubernetesBackend
    from shared.backends.kubernetes.recurring import upload_pipeline
    from shared.specs.builders import pipeline_run

    with k8s_double.kfp.lock:
        before = set(k8s_double.kfp.versions)
    backend = KubernetesBackend(kfp_host=k8s_double.kfp_url, kfp_token=k8s_double.kfp_token)
    made = upload_pipeline(backend.kfp, pipeline_run(str(ADD), name=name), version_name=version, namespace=namespace)
    with k8s_double.kfp.lock:
        for n, version_id in enumerate(k8s_double.kfp.versions):  # in the order they were made
            if version_id not in before:
                k8s_double.kfp.versions[version_id]["created_at"] = f"2026-01-01T00:00:{n:02d}Z"
    return made.to_dict()


@pytest.fixture
def cli(k8s_double, tmp_path):
    env = {"MLFLOW_TRACKING_URI": "", "KUBEFLOW_TASKS_STATE_DIR": str(tmp_path / "state")}
    return double_cli(k8s_double, tmp_path, "run", "pipeline", "--quiet", env=env)


def creates(k8s_double) -> list[str]:
    return [p for m, p, _ in list(k8s_double.request_log) if m == "POST"]


def test_a_run_by_name_runs_the_newest_version_by_reference_and_a_retry_adopts_it(cli, k8s_double, tmp_path):
    upload(k8s_double, tmp_path, "v1")
    new = upload(k8s_double, tmp_path, "v2")
    code, out, err = cli("--pipeline-name", "adder", "--param", "a=1", "--param", "b=2.5", "--key", "nightly/1")
    assert code == 0, err
    assert out["state"] == "SUCCEEDED" and not out["adopted"]
    (run,) = k8s_double.runs()
    assert run["pipeline_version_reference"] == {
        "pipeline_id": new["pipeline_id"], "pipeline_version_id": new["pipeline_version_id"]}
    assert "pipeline_spec" not in run  # the server's version runs, not a copy of it
    assert run["runtime_config"]["parameters"] == {"a": 1.0, "b": 2.5}  # typed by the version's inputs
    assert run["description"] == "kubeflow-tasks key: nightly/1"

    code, again, err = cli("--pipeline-name", "adder", "--param", "a=1", "--param", "b=2.5", "--key", "nightly/1")
    assert code == 0, err
    assert again["adopted"] and again["id"] == out["id"]
    assert len(k8s_double.runs()) == 1


def test_a_named_version_runs_that_version(cli, k8s_double, tmp_path):
    first = upload(k8s_double, tmp_path, "v1")
    upload(k8s_double, tmp_path, "v2")
    code, out, err = cli("--pipeline-name", "adder", "--pipeline-version", "v1", "--param", "a=1", "--param", "b=2")
    assert code == 0, err
    (run,) = k8s_double.runs()
    assert run["pipeline_version_reference"]["pipeline_version_id"] == first["pipeline_version_id"]


def test_a_pipeline_run_document_may_name_the_pipeline(cli, k8s_double, tmp_path):
    made = upload(k8s_double, tmp_path, "v1")
    doc = tmp_path / "run.yaml"
    doc.write_text(yaml.safe_dump({
        "apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun", "metadata": {"name": "nightly-adder"},
        "spec": {"pipelineName": "adder", "pipelineVersion": "v1", "parameters": {"a": 3, "b": 4},
                 "experiment": "nightly"},
    }))
    code, out, err = cli("--spec", str(doc))
    assert code == 0, err
    (run,) = k8s_double.runs()
    assert run["pipeline_version_reference"]["pipeline_version_id"] == made["pipeline_version_id"]
    assert run["display_name"].startswith("nightly-adder-")
    experiment = k8s_double.kfp.experiments[run["experiment_id"]]
    assert experiment["display_name"] == "nightly"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--pipeline-name", "no-such"], "--pipeline-name: no pipeline named 'no-such'"),
        (["--pipeline-name", "adder", "--pipeline-version", "v9"], "--pipeline-version: pipeline 'adder' has no version 'v9' (newest: 'v1', 'adder')"),
        (["--pipeline-name", "adder", "--param", "c=1"], "parameters.c: the pipeline has no such parameter"),
        (["--pipeline-name", "adder", "--param", "a=many"], "parameters.a: "),  # typed by the version
        (["--pipeline-version", "v1", "--spec", str(ADD)], "--pipeline-version: applies with --pipeline-name"),
        (["--pipeline-name", "adder", "--spec", str(ADD)], "--pipeline-name: give --spec or --pipeline-name, not both"),
    ],
)
def test_what_does_not_exist_is_one_line_exit_2_before_anything_is_created(cli, k8s_double, tmp_path, args, expected):
    upload(k8s_double, tmp_path, "v1")
    before = creates(k8s_double)
    code, _, err = cli(*args, "--key", "k")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"kubeflow-tasks: error: {expected}"), line
    assert creates(k8s_double) == before  # not an experiment, not a run
    assert not k8s_double.runs()


def test_the_document_names_its_own_fields(cli, k8s_double, tmp_path):
    doc = tmp_path / "run.yaml"
    doc.write_text(yaml.safe_dump({
        "apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun", "metadata": {"name": "r"},
        "spec": {"pipelineName": "adder", "pipeline": str(ADD)},
    }))
    code, _, err = cli("--spec", str(doc))
    assert code == 2 and err.strip() == (
        "kubeflow-tasks: error: spec.pipelineName: give spec.pipeline (a file or module:function) "
        "or spec.pipelineName, not both")
    doc.write_text(yaml.safe_dump({
        "apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun", "metadata": {"name": "r"},
        "spec": {"pipelineName": "adder", "enableCaching": False},
    }))
    code, _, err = cli("--spec", str(doc))
    assert code == 2 and err.startswith("kubeflow-tasks: error: spec.enableCaching: applies to a pipeline file")


def test_multi_user_looks_in_the_profile_namespace_then_the_shared_pipelines(cli, k8s_double, tmp_path):
    k8s_double.set_behaviour(kfp_multi_user=True)
    mine = upload(k8s_double, tmp_path, "v1", namespace="team-a")
    shared = upload(k8s_double, tmp_path, "s1", name="shared-adder")
    upload(k8s_double, tmp_path, "b1", name="their-adder", namespace="team-b")

    code, _, err = cli("--pipeline-name", "adder", "--namespace", "team-a", "--param", "a=1", "--param", "b=2")
    assert code == 0, err
    code, _, err = cli("--pipeline-name", "shared-adder", "--namespace", "team-a", "--param", "a=1", "--param", "b=2")
    assert code == 0, err
    references = [r["pipeline_version_reference"]["pipeline_version_id"] for r in k8s_double.runs()]
    assert sorted(references) == sorted([mine["pipeline_version_id"], shared["pipeline_version_id"]])
    for run in k8s_double.runs():  # both belong to the profile namespace, through its experiment
        assert k8s_double.kfp.experiments[run["experiment_id"]]["namespace"] == "team-a"

    code, _, err = cli("--pipeline-name", "their-adder", "--namespace", "team-a", "--param", "a=1", "--param", "b=2")
    assert code == 2
    assert err.strip() == (f"kubeflow-tasks: error: --pipeline-name: no pipeline named 'their-adder' on "
                           f"{k8s_double.kfp_url} (looked in 'team-a' or the shared pipelines)")
    code, _, err = cli("--pipeline-name", "adder", "--param", "a=1", "--param", "b=2")
    assert code == 2 and "multi-user mode" in err and len(err.splitlines()) == 1


def test_the_local_backend_refuses_in_one_line(cli, tmp_path):
    code, _, err = cli("--pipeline-name", "adder", "--param", "a=1", backend="local")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("kubeflow-tasks: error: --pipeline-name: the local backend has no pipeline registry")
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("spec.json"))


DAG = '''
import pendulum
from airflow.sdk import DAG
from airflow_provider.operators import KubeflowPipelineRunOperator

with DAG("kft_uploaded", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
    KubeflowPipelineRunOperator(task_id="run", kubeflow_conn_id="kfp_double", pipeline_name="adder",
                                pipeline_version="{{ 'v' ~ (0 + 1) }}", spec_params={"a": "{{ 2 + 1 }}", "b": "4"})
'''


@pytest.mark.e2e
def test_the_airflow_operator_runs_an_uploaded_pipeline_by_name(k8s_double, tmp_path):
    from airflow_env import new_airflow, run_to_end

    first = upload(k8s_double, tmp_path, "v1")
    upload(k8s_double, tmp_path, "v2")
    env = new_airflow(tmp_path)
    (env.dags_folder / "kft_uploaded.py").write_text(DAG)
    env.set_connection("kfp_double", "kubeflow", {"backend": "kubernetes", "kubeconfig_path": str(
        k8s_double.write_kubeconfig(tmp_path / "kubeconfig"))}, host=k8s_double.kfp_url, password=k8s_double.kfp_token)
    code, output = run_to_end(env, "dags", "test", "kft_uploaded", log_name="dags-test.log")
    assert code == 0, output[-3000:]
    (run,) = k8s_double.runs()
    assert run["pipeline_version_reference"]["pipeline_version_id"] == first["pipeline_version_id"]  # templated
    assert run["runtime_config"]["parameters"] == {"a": 3.0, "b": 4.0}
    assert env.task_states("kft_uploaded") == {"run": "success"}
    assert env.xcoms("kft_uploaded", "run")["return_value"]["id"] == f"kfp/{run['run_id']}"


def test_the_dolphinscheduler_task_runs_an_uploaded_pipeline_by_name(k8s_double, tmp_path):
    from dolphinscheduler_tasks import KubeflowPipeline, offline
    from tests.ds_harness import SUCCESS, Worker

    made = upload(k8s_double, tmp_path, "v1")
    token = tmp_path / "kfp-token"
    token.write_text(k8s_double.kfp_token)
    with offline():
        task = KubeflowPipeline(
            name="run", pipeline_name="adder", params={"a": "${a}", "b": "2"}, backend="kubernetes",
            kubeconfig=str(k8s_double.write_kubeconfig(tmp_path / "kubeconfig")), kfp_host=k8s_double.kfp_url,
            kfp_token_file=str(token),
        ).get_define()
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""}
    result = Worker(tmp_path / "worker", env, global_params={"a": "5"}).run(task)
    assert result.state == SUCCESS, result.log[-3000:]
    (run,) = k8s_double.runs()
    assert result.var_pool["id"] == f"kfp/{run['run_id']}" and result.var_pool["state"] == "SUCCEEDED"
    assert run["pipeline_version_reference"]["pipeline_version_id"] == made["pipeline_version_id"]
    assert run["runtime_config"]["parameters"] == {"a": 5.0, "b": 2.0}
    with pytest.raises(SpecError, match=r"^spec: give spec or pipeline_name"):
        KubeflowPipeline(name="both", spec=str(ADD), pipeline_name="adder")

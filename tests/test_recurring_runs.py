"""`kubeflow-tasks schedule pipeline` against the KFP double: one recurring run per key, in a profile namespace.

The CLI runs as a real subprocess with the real kfp_server_api client against the wire-level double
(tests/k8s_double/kfp.py, which checks bodies against the v2beta1 swagger).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.k8s_double.fixture import double_cli

REPO = Path(__file__).resolve().parents[1]
ADD = REPO / "tests" / "data" / "specs" / "pipelines" / "add.yaml"
NAMESPACE = "team-a"  # multi-user KFP: runs, pipelines and recurring runs live in a profile namespace


def run_spec(tmp_path: Path, name: str = "adder", parameters: dict | None = None) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"pipeline": str(ADD), "parameters": parameters or {"a": 1, "b": 2}},
    }))
    return path


@pytest.fixture
def schedule(k8s_double, tmp_path):
    return double_cli(k8s_double, tmp_path, "schedule", "pipeline")


def recurring(k8s_double) -> list[dict]:
    with k8s_double.kfp.lock:
        return [dict(r) for r in k8s_double.kfp.recurring.values()]


def test_one_recurring_run_per_key_created_kept_replaced_disabled_deleted(schedule, k8s_double, tmp_path):
    spec = run_spec(tmp_path)
    code, first, err = schedule("--spec", str(spec), "--cron", "0 2 * * *", "--key", "nightly")
    assert code == 0, err
    assert first["action"] == "created" and first["status"] == "ENABLED"
    (made,) = recurring(k8s_double)
    assert made["namespace"] == NAMESPACE
    assert made["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}  # KFP's six fields, seconds first
    assert made["runtime_config"]["parameters"] == {"a": 1, "b": 2}
    assert made["pipeline_version_reference"]["pipeline_version_id"] == first["pipeline_version_id"]
    assert first["pipeline_version"].startswith("v-")
    versions_before = len(k8s_double.kfp.versions)

    # The same again: nothing new, not even a pipeline version.
    code, again, err = schedule("--spec", str(spec), "--cron", "0 2 * * *", "--key", "nightly")
    assert code == 0, err
    assert again["action"] == "unchanged" and again["recurring_run_id"] == first["recurring_run_id"]
    assert len(recurring(k8s_double)) == 1 and len(k8s_double.kfp.versions) == versions_before

    # A new cron replaces it: still one, a new id.
    code, replaced, err = schedule("--spec", str(spec), "--cron", "30 3 * * *", "--key", "nightly")
    assert code == 0, err
    assert replaced["action"] == "replaced" and replaced["removed"] == [first["recurring_run_id"]]
    (now,) = recurring(k8s_double)
    assert now["recurring_run_id"] == replaced["recurring_run_id"]
    assert now["trigger"]["cron_schedule"]["cron"] == "0 30 3 * * *"

    # Another key is another recurring run; ours is never touched by it.
    assert schedule("--spec", str(spec), "--cron", "0 4 * * *", "--key", "weekly")[0] == 0
    assert len(recurring(k8s_double)) == 2

    code, disabled, err = schedule("--spec", str(spec), "--cron", "30 3 * * *", "--key", "nightly", "--disable")
    assert code == 0, err
    assert disabled["action"] == "disabled" and disabled["recurring_run_id"] == replaced["recurring_run_id"]
    assert k8s_double.kfp.recurring[replaced["recurring_run_id"]]["status"] == "DISABLED"

    code, deleted, err = schedule("--spec", str(spec), "--key", "nightly", "--delete")
    assert code == 0, err
    assert deleted["action"] == "deleted" and deleted["removed"] == [replaced["recurring_run_id"]]
    assert [r["description"].splitlines()[0] for r in recurring(k8s_double)] == ["kubeflow-tasks key: weekly"]


def test_a_changed_parameter_replaces_and_the_same_content_reuses_its_pipeline_version(schedule, k8s_double, tmp_path):
    code, first, err = schedule("--spec", str(run_spec(tmp_path)), "--cron", "0 2 * * *", "--key", "k")
    assert code == 0, err
    code, second, err = schedule("--spec", str(run_spec(tmp_path, parameters={"a": 5, "b": 2})), "--cron", "0 2 * * *", "--key", "k")
    assert code == 0, err
    assert second["action"] == "replaced"
    assert second["pipeline_version_id"] == first["pipeline_version_id"] and not second["created"]
    (only,) = recurring(k8s_double)
    assert only["runtime_config"]["parameters"]["a"] == 5


@pytest.mark.parametrize("cron", ["61 * * * *", "0 2 * *", "every night", "0 0 2 * * 9"])
def test_a_bad_cron_exits_2_before_anything_is_contacted(schedule, k8s_double, tmp_path, cron):
    before = len(k8s_double.request_log)
    code, _, err = schedule("--spec", str(run_spec(tmp_path)), "--cron", cron, "--key", "k")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("kubeflow-tasks: error: --cron:")
    assert len(k8s_double.request_log) == before  # not one request reached the double


def test_the_local_backend_refuses_in_one_line(schedule, tmp_path):
    code, _, err = schedule("--spec", str(run_spec(tmp_path)), "--cron", "0 2 * * *", "--key", "k", backend="local")
    assert code == 2
    (line,) = err.splitlines()
    assert "the scheduler that runs this command is the recurrence" in line


def test_the_airflow_operator_applies_the_same_rules(k8s_double, tmp_path, monkeypatch):
    """The operator's execute, in process, with the connection from an AIRFLOW_CONN_ variable."""
    from airflow_provider.operators.recurring import KubeflowRecurringRunOperator
    from shared.errors import SpecError

    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("AIRFLOW_CONN_KFP_DOUBLE", json.dumps({
        "conn_type": "kubeflow", "host": k8s_double.kfp_url, "password": k8s_double.kfp_token,
        "extra": {"backend": "kubernetes", "kubeconfig_path": str(kubeconfig)},
    }))
    spec = str(run_spec(tmp_path))

    def operator(cron: str, **kwargs) -> KubeflowRecurringRunOperator:
        return KubeflowRecurringRunOperator(task_id="schedule", spec=spec, cron=cron, key="dag/schedule",
                                            kubeflow_conn_id="kfp_double", **kwargs)

    assert operator("0 2 * * *").execute({})["action"] == "created"
    assert operator("0 2 * * *").execute({})["action"] == "unchanged"
    assert operator("0 5 * * *").execute({})["action"] == "replaced"
    assert operator("0 5 * * *", disable=True).execute({})["status"] == "DISABLED"
    assert len(recurring(k8s_double)) == 1
    with pytest.raises(SpecError, match=r"^cron: "):
        operator("0 25 * * *")  # when the DAG is parsed


def test_a_document_naming_an_uploaded_pipeline_schedules_that_version_without_uploading(schedule, k8s_double, tmp_path):
    code, first, err = schedule("--spec", str(run_spec(tmp_path)), "--cron", "0 2 * * *", "--key", "uploaded")
    assert code == 0, err
    versions = len(k8s_double.kfp.versions)
    doc = tmp_path / "by-name.yaml"
    doc.write_text(yaml.safe_dump({
        "apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun", "metadata": {"name": "by-name", "namespace": NAMESPACE},
        "spec": {"pipelineName": "adder", "pipelineVersion": first["pipeline_version"], "parameters": {"a": 7},
                 "experiment": "nightly"},
    }))
    code, made, err = schedule("--spec", str(doc), "--cron", "0 3 * * *", "--key", "by-name")
    assert code == 0, err
    assert made["action"] == "created" and made["pipeline_version_id"] == first["pipeline_version_id"]
    ours = k8s_double.kfp.recurring[made["recurring_run_id"]]
    assert k8s_double.kfp.experiments[ours["experiment_id"]]["display_name"] == "nightly"  # the spec's experiment
    assert len(k8s_double.kfp.versions) == versions  # nothing uploaded
    ours = next(r for r in recurring(k8s_double) if r["recurring_run_id"] == made["recurring_run_id"])
    assert ours["runtime_config"]["parameters"] == {"a": 7.0}
    doc.write_text(doc.read_text().replace(first["pipeline_version"], "v-missing"))
    code, _, err = schedule("--spec", str(doc), "--cron", "0 3 * * *", "--key", "by-name")
    assert code == 2 and err.strip().startswith("kubeflow-tasks: error: spec.pipelineVersion: pipeline 'adder' has no version 'v-missing'")


@pytest.mark.parametrize(
    ("cli", "keywords", "field"),
    [
        (["--disable", "--delete"], {"disable": True, "delete": True}, "disable"),
        ([], {}, "cron"),
        (["--cron", "0 2 * * *", "--max-concurrency", "11"], {"cron": "0 2 * * *", "max_concurrency": 11}, "max_concurrency"),
    ],
)
def test_the_cli_the_operator_and_the_task_check_a_schedule_by_the_same_rule(schedule, k8s_double, tmp_path, cli, keywords, field):
    from airflow_provider.operators.recurring import KubeflowRecurringRunOperator
    from dolphinscheduler_tasks import KubeflowRecurringRun, offline
    from shared.errors import SpecError

    spec = str(run_spec(tmp_path))
    message = None
    if field != "disable":  # (the CLI's argparse refuses --disable with --delete first, in its own words)
        code, _, err = schedule("--spec", spec, "--key", "k", *cli)
        flag = "--" + field.replace("_", "-")
        assert code == 2 and err.startswith(f"kubeflow-tasks: error: {flag}:") and len(err.splitlines()) == 1
        message = err.split(f"{flag}: ", 1)[1].strip().replace("--", "")
    with pytest.raises(SpecError) as operator:
        KubeflowRecurringRunOperator(task_id="s", spec=spec, **keywords)
    with pytest.raises(SpecError) as task, offline():
        KubeflowRecurringRun(name="s", spec=spec, **keywords)
    for raised in (operator.value, task.value):
        assert raised.path == field and (message is None or raised.detail == message)

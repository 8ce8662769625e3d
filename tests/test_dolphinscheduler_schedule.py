"""The KubeflowRecurringRun task type: defined offline, run the way a worker runs it against the KFP double."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from dolphinscheduler_tasks import KubeflowRecurringRun, offline
from shared.errors import SpecError
from tests.ds_harness import SUCCESS, Worker

REPO = Path(__file__).resolve().parents[1]
ADD = REPO / "tests" / "data" / "specs" / "pipelines" / "add.yaml"


def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "adder.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun", "metadata": {"name": "adder", "namespace": "team-a"},
        "spec": {"pipeline": str(ADD), "parameters": {"a": 1, "b": 2}},
    }))
    return path


def test_a_bad_cron_fails_when_the_task_is_defined(tmp_path):
    with offline(), pytest.raises(SpecError, match=r"^cron: "):
        KubeflowRecurringRun(name="s", spec=spec_file(tmp_path), cron="61 * * * *")


def test_the_task_keeps_one_recurring_run_across_workflow_instances(k8s_double, tmp_path):
    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kubeconfig")
    token = tmp_path / "token"
    token.write_text(k8s_double.kfp_token)
    options = {"kubeconfig": str(kubeconfig), "kfp_host": k8s_double.kfp_url, "kfp_token_file": str(token)}
    with offline():
        task = KubeflowRecurringRun(name="schedule", spec=spec_file(tmp_path), cron="0 2 * * *", **options).get_define()
        changed = KubeflowRecurringRun(name="schedule", spec=spec_file(tmp_path), cron="0 3 * * *", **options).get_define()
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "PYTHONPATH": str(REPO)}
    first = Worker(tmp_path / "night1", env).run(task)
    second = Worker(tmp_path / "night2", env).run(task)  # another workflow instance: the same key
    assert first.state == second.state == SUCCESS, second.log[-2000:]
    assert "recurring run created" in first.log and "recurring run unchanged" in second.log
    assert len(k8s_double.kfp.recurring) == 1
    third = Worker(tmp_path / "night3", env).run(changed)
    assert third.state == SUCCESS and "recurring run replaced" in third.log
    (only,) = k8s_double.kfp.recurring.values()
    assert only["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *" and only["namespace"] == "team-a"

"""A real DolphinScheduler (standalone server from Maven Central) runs a SHELL workflow and passes OUT parameters.

The workflow is submitted through pydolphinscheduler to the real Python gateway, started through the real REST
API, and executed by the real worker in a real bash; `${setValue(x=1)}` must reach the downstream task. Building
the server takes minutes the first time (cached under $KUBEFLOW_TASKS_TESTENV), starting it one to three more.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realstack import dolphinscheduler as ds
from tests.realstack.dolphinscheduler_api import RestApi
from tests.waiting import wait_until

pytestmark = [pytest.mark.real, pytest.mark.timeout(1800)]

SCRIPT = Path(__file__).parent / "scripts" / "ds_setvalue_workflow.py"
FINAL_STATES = {"SUCCESS", "FAILURE", "STOP", "PAUSE", "KILL"}  # 3.1 WorkflowExecutionStatus names
TESTENV = Path(os.environ.get("KUBEFLOW_TASKS_TESTENV", "~/.cache/kubeflow-tasks/testenv")).expanduser()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    ds.build(TESTENV, ds.DEFAULT_VERSION, print)
    proc, state = ds.start(TESTENV, ds.DEFAULT_VERSION, tmp_path_factory.mktemp("dolphinscheduler"))
    try:
        yield state
    finally:
        ds.stop(proc)


def _out_params(task: dict) -> dict[str, str]:
    return {param["prop"]: param["value"] for param in json.loads(task.get("varPool") or "[]")}


def test_shell_workflow_runs_on_the_real_worker_and_passes_setvalue_downstream(server: dict) -> None:
    host, port = server["gateway"].split(":")
    env = {**os.environ, "PYDS_JAVA_GATEWAY_ADDRESS": host, "PYDS_JAVA_GATEWAY_PORT": port}
    submitted = subprocess.run(
        [server["client_python"], str(SCRIPT), "--project", server["project"], "--tenant", server["tenant"],
         "--name", "setvalue-smoke"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    workflow = json.loads(submitted.stdout.strip().splitlines()[-1])["workflow"]

    api = RestApi(server["api"], server["user"], server["password"])
    assert api.try_login()
    project = api.project_code(server["project"])
    api.start_workflow(project, workflow)

    def finished() -> dict | None:
        instances = api.workflow_instances(project, "setvalue-smoke")
        done = [item for item in instances if item["state"] in FINAL_STATES]
        return done[0] if done else None

    instance = wait_until(finished, timeout=600, what="the workflow instance to finish", interval=1.0)
    tasks = {task["name"]: task for task in api.task_instances(project, instance["id"])}
    assert instance["state"] == "SUCCESS", (instance["state"], {name: t["state"] for name, t in tasks.items()})
    assert {name: task["state"] for name, task in tasks.items()} == {"produce": "SUCCESS", "consume": "SUCCESS"}
    assert _out_params(tasks["produce"]) == {"x": "1"}
    assert _out_params(tasks["consume"]).get("seen") == "1"
    assert "consumed x=1" in api.task_log(tasks["consume"]["id"])

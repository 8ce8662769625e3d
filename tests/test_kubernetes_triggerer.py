"""The Airflow side of the Kubernetes backend in one process (issue 9, item 8): the trigger never
blocks the event loop, triggers of one connection share one backend (one API client, one watch), and
a resumed task whose log cannot be read still succeeds.

Real Airflow classes (the connection comes from an `AIRFLOW_CONN_*` variable, as Airflow reads it),
real `kubernetes` clients, the wire-level double; the kubeconfig's user is an exec plugin (as on EKS
or GKE), a real program that takes a second and counts its runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.backends.kubernetes import KubernetesBackend
from shared.operations import submit_or_adopt
from shared.specs import load_spec

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "tests" / "data" / "specs"
RUN_SECONDS = "double.kubeflow-tasks.dev/run-seconds"

pytestmark = pytest.mark.e2e

EXEC_PLUGIN = """
import json, pathlib, sys, time
pathlib.Path(sys.argv[1]).open("a").write("run\\n")
time.sleep(1.0)
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": "s3cr3t-token"}}))
"""


def exec_kubeconfig(double, tmp_path: Path) -> tuple[Path, Path]:
    """A kubeconfig whose credential comes from a slow exec plugin; returns it and the plugin's run log."""
    plugin, runs = tmp_path / "credential.py", tmp_path / "plugin-runs"
    plugin.write_text(EXEC_PLUGIN)
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": double.url}}],
        "users": [{"name": "double", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
            "args": [str(plugin), str(runs)], "interactiveMode": "Never"}}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "double", "namespace": "default"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path, runs


def connection(monkeypatch, tmp_path: Path, kubeconfig: Path) -> str:
    conn_id = f"kf_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(
        {"conn_type": "kubeflow", "extra": {"backend": "kubernetes", "kubeconfig_path": str(kubeconfig)}}))
    return conn_id


def job(tmp_path: Path, name: str, seconds: str = "1.0") -> Any:
    doc = yaml.safe_load((SPECS / "pytorch-mnist.yaml").read_text())
    doc["metadata"] = {"name": name, "annotations": {RUN_SECONDS: seconds}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_spec(path)


def test_triggers_share_one_backend_and_never_block_the_loop(k8s_double, tmp_path, monkeypatch):
    from airflow_provider.triggers.kubeflow import KubeflowRunTrigger

    kubeconfig, plugin_runs = exec_kubeconfig(k8s_double, tmp_path)
    conn_id = connection(monkeypatch, tmp_path, kubeconfig)
    submitter = KubernetesBackend(kubeconfig=str(k8s_double.write_kubeconfig(tmp_path / "plain")))
    handles = [submit_or_adopt(submitter, job(tmp_path, f"deferred-{i}"), f"trig/{i}").handle for i in range(3)]
    triggers = [KubeflowRunTrigger(handle=h.to_dict(), kubeflow_conn_id=conn_id) for h in handles]
    from airflow_provider.hooks.kubeflow import KubeflowHook

    asyncio.run(KubeflowHook(conn_id).aoptions())  # a running triggerer has Airflow's modules loaded already

    async def scenario() -> tuple[list[dict[str, Any]], float]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def heartbeat() -> None:  # what the triggerer's "blocked main thread" check measures
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async def first_event(trigger) -> dict[str, Any]:
            async for event in trigger.run():
                return event.payload
            raise AssertionError("no event")

        beat = asyncio.ensure_future(heartbeat())
        events = await asyncio.wait_for(asyncio.gather(*(first_event(t) for t in triggers)), 60)
        stop.set()
        await beat
        return events, max(gaps)

    events, worst_gap = asyncio.run(scenario())

    assert [e["event"] for e in events] == ["success"] * 3, events
    assert worst_gap < 0.5, f"the event loop was blocked for {worst_gap:.2f}s"
    assert plugin_runs.read_text().count("run") == 1  # one backend, one client, for every trigger
    assert len({id(t._backend) for t in triggers}) == 1


class _TaskInstance:
    """The part of Airflow's RuntimeTaskInstance that execute_complete writes to: XComs."""

    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def test_a_resumed_task_whose_log_cannot_be_read_still_succeeds(k8s_double, tmp_path, monkeypatch, caplog, capsys):
    from airflow_provider.operators.kubeflow import PyTorchJobOperator
    from shared.status import Status

    conn_id = connection(monkeypatch, tmp_path, k8s_double.write_kubeconfig(tmp_path / "plain"))
    backend = KubernetesBackend(kubeconfig=str(tmp_path / "plain"))
    handle = submit_or_adopt(backend, job(tmp_path, "resumed", "0.2"), "resume/1").handle
    status = asyncio.run(_until_done(backend, handle))
    k8s_double.faults.inject("500", count=1000, path_contains="/log")  # pods/log keeps failing
    operator = PyTorchJobOperator(task_id="train", spec=str(SPECS / "pytorch-mnist.yaml"), kubeflow_conn_id=conn_id)
    ti = _TaskInstance()

    result = operator.execute_complete(
        {"ti": ti}, {"event": "success", "message": "", "handle": handle.to_dict(), "status": status.to_dict()}
    )

    assert result["state"] == "SUCCEEDED" and ti.xcoms["state"] == "SUCCEEDED"
    printed = capsys.readouterr()
    assert "could not read the log" in caplog.text + printed.out + printed.err
    assert Status.from_dict(result).terminal


async def _until_done(backend, handle):
    from shared.operations import wait_for

    return await asyncio.wait_for(wait_for(backend, handle), 30)


def test_a_namespace_of_many_jobs_is_listed_in_pages(k8s_double, tmp_path, monkeypatch):
    """The shared watch lists in pages of `LIST_PAGE`: one body of 1,000 PyTorchJobs took 0.3-0.5 s to
    decode while holding the GIL (a blocked-loop warning in the triggerer); a waiter on the last page
    still gets its object. (Pages of 10 here, so that a few objects make three pages.)"""
    from kubernetes import client, config

    from shared.backends.kubernetes import hub

    monkeypatch.setattr(hub, "LIST_PAGE", 10)
    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kubeconfig")
    api = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
    others = 2 * hub.LIST_PAGE + 5
    for i in range(others):
        doc = yaml.safe_load((SPECS / "pytorch-mnist.yaml").read_text())
        doc["metadata"] = {"name": f"other-{i}", "annotations": {RUN_SECONDS: "3600"}}
        api.create_namespaced_custom_object("kubeflow.org", "v1", "default", "pytorchjobs", doc)
    backend = KubernetesBackend(kubeconfig=str(kubeconfig))
    handle = submit_or_adopt(backend, job(tmp_path, "listed-last", seconds="0.5"), "pages/last").handle

    async def statuses() -> list[str]:
        seen = []
        async for _, status in backend.watch([handle]):
            seen.append(status.state.value)
        return seen

    seen = asyncio.run(asyncio.wait_for(statuses(), 30))

    lists = [path for method, path, _ in list(k8s_double.request_log)
             if method == "GET" and "/pytorchjobs?" in path and "watch=" not in path and "labelSelector" not in path]
    assert len(lists) == 3, lists  # 2 * LIST_PAGE + 6 objects
    assert all(f"limit={hub.LIST_PAGE}" in path for path in lists), lists
    assert ["continue=" in path for path in lists] == [False, True, True], lists
    assert seen[-1] == "SUCCEEDED", seen


def test_triggers_that_start_together_read_the_connection_once(k8s_double, tmp_path, monkeypatch):
    """In a triggerer each connection lookup is a round trip to its supervisor, answered between its
    database work; 1,000 triggers asking one by one got their first status minutes late. Here the
    lookup (Airflow's, wrapped to count and to take as long as a busy supervisor) is asked once for
    triggers that start together, and again once the reading is older than OPTIONS_SECONDS."""
    from airflow_provider.hooks.kubeflow import KubeflowHook
    from airflow_provider.triggers import kubeflow as triggers_module
    from airflow_provider.triggers.kubeflow import KubeflowRunTrigger

    conn_id = connection(monkeypatch, tmp_path, k8s_double.write_kubeconfig(tmp_path / "kubeconfig"))
    lookups: list[str] = []
    original = KubeflowHook.aget_connection.__func__

    async def slow_lookup(cls, conn: str):
        lookups.append(conn)
        await asyncio.sleep(0.5)
        return await original(cls, conn)

    monkeypatch.setattr(KubeflowHook, "aget_connection", classmethod(slow_lookup))
    submitter = KubernetesBackend(kubeconfig=str(k8s_double.write_kubeconfig(tmp_path / "plain")))
    handles = [submit_or_adopt(submitter, job(tmp_path, f"together-{i}", "0.5"), f"once/{i}").handle for i in range(20)]

    async def first_event(handle) -> str:
        async for event in KubeflowRunTrigger(handle=handle.to_dict(), kubeflow_conn_id=conn_id).run():
            return event.payload["event"]
        raise AssertionError("no event")

    async def scenario() -> tuple[list[str], str]:
        together = await asyncio.wait_for(asyncio.gather(*(first_event(h) for h in handles)), 60)
        monkeypatch.setattr(triggers_module, "OPTIONS_SECONDS", 0.0)  # the reading is now stale
        later = await asyncio.wait_for(first_event(handles[0]), 60)
        return together, later

    together, later = asyncio.run(scenario())

    assert together == ["success"] * 20 and later == "success"
    assert lookups == [conn_id, conn_id]  # once for the twenty, once more when stale

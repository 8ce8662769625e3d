"""Local PyTorchJob/TFJob runs: real replica processes, the operator's environment and rules.

Replicas run small scripts from tests/scripts; torch is imported only by the two tests that need a
real gloo process group (the all_reduce proof and the demo's train_ddp.py), because each import
costs seconds on a 2-core machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from waiting import wait_until

from shared.backends.local import procs
from shared.backends.local.runner import RunContext
from shared.backends.local.training import TrainingRunner, pytorch_env, tf_config
from shared.specs import load_spec, parse_training_job
from shared.specs.model import ContainerSpec, TrainingJobSpec
from shared.status import State, Status

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
PYTHON = "python"  # bare, as in a manifest: the runner maps it to this interpreter


class Run:
    """A runner with a recording context: every reported Status and every run-log line."""

    def __init__(self, spec: TrainingJobSpec, workdir: Path, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.reports: list[Status] = []
        self.lines: list[str] = []
        ctx = RunContext(
            workdir=workdir, env=env or {}, mlflow={}, report=self.reports.append, log=self.lines.append
        )
        self.runner = TrainingRunner(spec, ctx)

    def __call__(self) -> Status:
        return self.runner.run()

    def log(self, replica: str) -> str:
        return (self.workdir / "logs" / f"{replica}.log").read_text()


def replica(*argv: str, replicas: int = 1, restart: str = "Never", container: str = "pytorch", env=None):
    spec: dict[str, Any] = {"name": container, "image": "python:3.11-slim", "command": [PYTHON, *argv]}
    if env:
        spec["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {"replicas": replicas, "restartPolicy": restart, "template": {"spec": {"containers": [spec]}}}


def job(kind: str = "PyTorchJob", run_policy: dict | None = None, **fields: Any) -> TrainingJobSpec:
    """A manifest as a user writes it, through the real spec parser; replica types as keywords."""
    key = "pytorchReplicaSpecs" if kind == "PyTorchJob" else "tfReplicaSpecs"
    types = {k: v for k, v in fields.items() if k[0].isupper()}
    spec: dict[str, Any] = {key: types, **{k: v for k, v in fields.items() if not k[0].isupper()}}
    if run_policy:
        spec["runPolicy"] = run_policy
    manifest = {"apiVersion": "kubeflow.org/v1", "kind": kind, "metadata": {"name": "demo"}, "spec": spec}
    return parse_training_job(manifest, str(SCRIPTS))


def pids(pid_dir: Path) -> list[int]:
    return [int(p.name) for p in pid_dir.iterdir() if p.name.isdigit()] if pid_dir.is_dir() else []


def assert_gone(pid_list: list[int]) -> None:
    assert pid_list
    for pid in pid_list:
        assert not procs.pid_alive(pid), pid
        assert not procs.group_alive(pid), pid


# ---------------------------------------------------------------- distributed PyTorch


def test_master_and_workers_form_one_gloo_process_group(tmp_path):
    spec = job(Master=replica("allreduce.py"), Worker=replica("allreduce.py", replicas=2))
    run = Run(spec, tmp_path)

    status = run()

    assert status.state is State.SUCCEEDED, status
    for name, rank in (("master-0", 0), ("worker-0", 1), ("worker-1", 2)):
        assert f"rank={rank} world=3 env_rank={rank} sum=6" in run.log(name)
    assert "[master-0] rank=0 world=3 env_rank=0 sum=6" in run.lines
    assert status.message == "PyTorchJob demo successfully completed."
    assert status.raw_state == "Succeeded"


def test_pytorch_replicas_get_the_operators_environment(tmp_path):
    show = ("show_env.py", "--out", str(tmp_path / "env"), "--wait-count", "3")
    spec = job(
        Master=replica(*show, env={"FROM_CONTAINER": "yes"}),
        Worker=replica(*show, replicas=2, env={"FROM_CONTAINER": "yes"}),
        nprocPerNode="2",
    )
    run = Run(spec, tmp_path / "run", env={"FROM_CONTEXT": "mlflow-and-friends"})

    assert run().state is State.SUCCEEDED

    envs = sorted(
        (json.loads(p.read_text()) for p in (tmp_path / "env").glob("*.json")), key=lambda e: e["RANK"]
    )
    port = envs[0]["MASTER_PORT"]
    for rank, env in enumerate(envs):
        assert env == {
            "PYTHONUNBUFFERED": "1",
            "MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "PET_MASTER_PORT": port,
            "WORLD_SIZE": "6",  # 3 replicas x nprocPerNode 2
            "RANK": str(rank),
            "PET_NODE_RANK": str(rank),
            "PET_NNODES": "3",
            "PET_NPROC_PER_NODE": "2",
            "FROM_CONTAINER": "yes",
            "FROM_CONTEXT": "mlflow-and-friends",
        }
    assert int(port) > 0
    assert any(line.startswith("[worker-1] ENV ") for line in run.lines)


def test_elastic_policy_sets_the_rendezvous_variables_and_no_master_ones():
    spec = job(
        Worker=replica("x.py", replicas=2),
        elasticPolicy={"minReplicas": 1, "maxReplicas": 3, "rdzvId": "r1", "maxRestarts": 4},
    )
    env = pytorch_env(spec, "Worker", 1, master_port=1111, rdzv_port=2222)
    assert env == {
        "PYTHONUNBUFFERED": "1",
        "PET_RDZV_ENDPOINT": "127.0.0.1:2222",
        "PET_RDZV_BACKEND": "c10d",
        "PET_NNODES": "1:3",
        "PET_MAX_RESTARTS": "4",
        "PET_RDZV_ID": "r1",
    }


# ---------------------------------------------------------------- TFJob


def test_tfjob_replicas_get_tf_config(tmp_path):
    show = ("show_env.py", "--out", str(tmp_path / "env"), "--wait-count", "4")
    spec = job(
        "TFJob",
        Chief=replica(*show, container="tensorflow"),
        Worker=replica(*show, replicas=2, container="tensorflow"),
        PS=replica(*show, container="tensorflow"),
    )
    run = Run(spec, tmp_path / "run")

    status = run()

    assert status.state is State.SUCCEEDED, status  # the Chief decides
    configs = [json.loads(json.loads(p.read_text())["TF_CONFIG"]) for p in (tmp_path / "env").glob("*.json")]
    tasks = sorted((c["task"]["type"], c["task"]["index"]) for c in configs)
    assert tasks == [("chief", 0), ("ps", 0), ("worker", 0), ("worker", 1)]
    cluster = configs[0]["cluster"]
    assert list(cluster) == ["chief", "ps", "worker"]
    assert [len(cluster[t]) for t in ("chief", "ps", "worker")] == [1, 1, 2]
    addresses = [a for hosts in cluster.values() for a in hosts]
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", a) for a in addresses)
    assert len(set(addresses)) == 4  # a port of its own per replica
    for config in configs:
        assert config["cluster"] == cluster
        assert config["environment"] == "cloud"
    assert status.outputs["replica_statuses"]["Chief"] == {"active": 0, "succeeded": 1, "failed": 0}


def test_a_single_replica_tfjob_gets_no_tf_config(tmp_path):
    spec = job("TFJob", Worker=replica("show_env.py", "--out", str(tmp_path / "env"), container="tensorflow"))
    assert Run(spec, tmp_path / "run")().state is State.SUCCEEDED
    (env_file,) = (tmp_path / "env").glob("*.json")
    assert "TF_CONFIG" not in json.loads(env_file.read_text())


def test_dynamic_worker_tf_config_is_sparse():
    spec = job(
        "TFJob",
        Worker=replica("x.py", replicas=2, container="tensorflow"),
        PS=replica("x.py", container="tensorflow"),
        enableDynamicWorker=True,
    )
    ports = {("Worker", 0): 10, ("Worker", 1): 11, ("PS", 0): 20}
    assert json.loads(tf_config(spec, "Worker", 1, ports)) == {
        "sparseCluster": {"worker": {"1": "127.0.0.1:11"}, "ps": ["127.0.0.1:20"]},
        "task": {"type": "worker", "index": 1},
    }


# ---------------------------------------------------------------- success and failure rules


def test_master_success_ends_the_job_while_a_worker_still_runs(tmp_path):
    pid_dir = tmp_path / "pids"
    spec = job(
        Master=replica("replica.py", "--pid-dir", str(pid_dir), "--wait-pids", "2"),
        Worker=replica("replica.py", "--pid-dir", str(pid_dir), "--sleep", "60"),
    )
    run = Run(spec, tmp_path / "run")
    started = time.monotonic()

    status = run()

    assert status.state is State.SUCCEEDED, status
    assert time.monotonic() - started < 20
    assert status.outputs["replica_statuses"] == {
        "Master": {"active": 0, "succeeded": 1, "failed": 0},
        "Worker": {"active": 0, "succeeded": 0, "failed": 0},
    }
    assert_gone(pids(pid_dir))
    assert not any((tmp_path / "run" / "procs").iterdir())


def test_a_failed_replica_with_restart_policy_never_fails_the_job(tmp_path):
    pid_dir = tmp_path / "pids"
    spec = job(
        Master=replica("replica.py", "--pid-dir", str(pid_dir), "--sleep", "60", restart="OnFailure"),
        Worker=replica("replica.py", "--pid-dir", str(pid_dir), "--wait-pids", "2", "--exit", "3"),
    )
    status = Run(spec, tmp_path / "run")()

    assert status.state is State.FAILED
    assert status.raw_state == "Failed"
    assert status.message == "PyTorchJob demo has failed because 1 Worker replica(s) failed."
    assert status.outputs["replica_statuses"]["Worker"]["failed"] == 1
    assert status.outputs["restarts"] == 0
    assert_gone(pids(pid_dir))


def test_on_failure_restarts_the_replica_and_the_job_then_succeeds(tmp_path):
    spec = job(Master=replica("replica.py", "--fail-once", str(tmp_path / "marker"), restart="OnFailure"))
    run = Run(spec, tmp_path / "run")

    status = run()

    assert status.state is State.SUCCEEDED, status
    assert status.outputs["restarts"] == 1
    raw = [r.raw_state for r in run.reports]
    assert raw[:2] == ["Created", "Running"]
    assert run.reports[0].state is State.PENDING
    restarting = next(r for r in run.reports if r.raw_state == "Restarting")
    assert restarting.state is State.RUNNING
    assert restarting.message == "PyTorchJob demo is restarting because 1 Master replica(s) failed."
    assert restarting.outputs["restarts"] == 1
    log = run.log("master-0")  # both runs, in order, in the one file
    assert log.index("failing once with 1") < log.index("done exit=0")
    assert log.count("start pid=") == 2


def test_restarts_beyond_the_backoff_limit_fail_the_job(tmp_path):
    spec = job(
        run_policy={"backoffLimit": 2},
        Master=replica("replica.py", "--exit", "1", restart="OnFailure"),
    )
    run = Run(spec, tmp_path / "run")

    status = run()

    assert status.state is State.FAILED
    assert status.message == "Job demo has failed because it has reached the specified backoff limit"
    assert status.outputs["reason"] == "BackoffLimitExceeded"
    assert status.outputs["restarts"] == 2
    assert run.log("master-0").count("start pid=") == 3


@pytest.mark.parametrize(
    ("code", "state", "restarts"),
    [(1, State.FAILED, 0), (130, State.SUCCEEDED, 1)],
    ids=["1-is-permanent", "130-is-retried"],
)
def test_exit_code_policy_retries_only_codes_from_128(tmp_path, code, state, restarts):
    marker = str(tmp_path / "marker")
    spec = job(
        Master=replica("replica.py", "--fail-once", marker, "--fail-code", str(code), restart="ExitCode")
    )

    status = Run(spec, tmp_path / "run")()

    assert status.state is state, status
    assert status.outputs["restarts"] == restarts
    if state is State.FAILED:
        assert status.message == "PyTorchJob demo has failed because 1 Master replica(s) failed."


def test_active_deadline_kills_the_replicas_and_fails_the_job(tmp_path):
    pid_dir = tmp_path / "pids"
    spec = job(
        run_policy={"activeDeadlineSeconds": 1},
        Master=replica("replica.py", "--pid-dir", str(pid_dir), "--sleep", "60"),
        Worker=replica("replica.py", "--pid-dir", str(pid_dir), "--sleep", "60"),
    )
    started = time.monotonic()

    status = Run(spec, tmp_path / "run")()

    assert status.state is State.FAILED
    assert status.outputs["reason"] == "DeadlineExceeded"
    assert status.message == "Job demo has failed because it was active longer than specified deadline"
    assert 1 <= time.monotonic() - started < 10
    assert_gone(pids(pid_dir))


def test_a_suspended_job_waits_pending_until_cancelled(tmp_path):
    """Suspended is a queue, not an outcome (Kueue resumes such jobs on a cluster): never terminal."""
    spec = job(run_policy={"suspend": True}, Master=replica("replica.py"))
    run = Run(spec, tmp_path / "run")
    result: list[Status] = []
    worker = threading.Thread(target=lambda: result.append(run()), daemon=True)
    worker.start()

    wait_until(lambda: run.reports, timeout=10)
    assert (run.reports[-1].state, run.reports[-1].raw_state) == (State.PENDING, "Suspended")
    assert run.reports[-1].message.startswith("queued/suspended by runPolicy.suspend")
    assert worker.is_alive()  # still waiting: not FAILED, not CANCELLED

    run.runner.stop()
    worker.join(10)
    assert result and result[0].state is State.CANCELLED
    assert not (tmp_path / "run" / "logs").exists()


def test_a_command_that_does_not_exist_fails_the_job(tmp_path):
    spec = job(Master=replica("replica.py"))
    spec = dataclasses.replace(
        spec,
        replicas=(
            dataclasses.replace(
                spec.replicas[0], container=ContainerSpec("pytorch", "img", ("no-such-tool",))
            ),
        ),
    )
    status = Run(spec, tmp_path / "run")()

    assert status.state is State.FAILED
    assert "no-such-tool" in status.message


# ---------------------------------------------------------------- stop


def test_stop_kills_every_replica_and_run_returns_cancelled(tmp_path):
    pid_dir = tmp_path / "pids"
    spec = job(
        Master=replica("replica.py", "--pid-dir", str(pid_dir), "--ignore-term", "--sleep", "60"),
        Worker=replica("replica.py", "--pid-dir", str(pid_dir), "--sleep", "60", replicas=2),
    )
    run = Run(spec, tmp_path / "run")
    result: list[Status] = []
    thread = threading.Thread(target=lambda: result.append(run()))
    thread.start()
    wait_until(lambda: len(pids(pid_dir)) == 3)

    stopped = time.monotonic()
    run.runner.stop()
    thread.join(timeout=15)

    assert not thread.is_alive()
    assert time.monotonic() - stopped < 8  # SIGTERM, ~2 s grace for the one ignoring it, SIGKILL
    assert result[0].state is State.CANCELLED
    assert_gone(pids(pid_dir))
    assert not any((tmp_path / "run" / "procs").iterdir())


# ---------------------------------------------------------------- the demo's training job


def test_the_commodity_pytorchjob_trains_with_ddp_and_logs_to_the_mlflow_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    # MLflow's file store keeps this test fast (a new SQLite store costs ~15 s of migrations).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    client = MlflowClient(uri)
    run_id = client.create_run("0").info.run_id
    rng = np.random.default_rng(0)
    prices = 100 + np.cumsum(rng.normal(0, 1, 200)) + 5 * np.sin(np.arange(200) / 10)
    data = tmp_path / "prices.csv"
    data.write_text("day,price\n" + "".join(f"{day},{price:.4f}\n" for day, price in enumerate(prices)))
    spec = load_spec(
        REPO / "dags" / "commodity" / "pytorchjob.yaml",
        params={"data_path": str(data), "learning_rate": "0.01", "num_estimators": "3"},
    )
    assert isinstance(spec, TrainingJobSpec)
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id, "MLFLOW_ALLOW_FILE_STORE": "true"}
    run = Run(spec, tmp_path / "run", env=env)

    status = run()

    assert status.state is State.SUCCEEDED, (status, run.lines[-20:])
    log = run.log("master-0")
    assert re.search(r"^epoch=3 loss=\S+$", log, re.M)
    (rmse,) = re.findall(r"^val_rmse=(\S+)$", log, re.M)
    assert math.isfinite(float(rmse)) and float(rmse) > 0
    logged = client.get_run(run_id)
    assert logged.data.params == {"learning_rate": "0.01", "num_estimators": "3", "world_size": "2"}
    assert logged.data.metrics["val_rmse"] == pytest.approx(float(rmse), rel=1e-4)
    assert len(client.get_metric_history(run_id, "train_loss")) == 3
    assert logged.info.status == "RUNNING"  # the run's owner ends it, not the training job

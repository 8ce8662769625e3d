"""The MLflow hand-off against a real MLflow server on loopback (the `mlflow_server` fixture)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from shared.errors import TransientError
from shared.mlflow_handoff import (
    ParentRun,
    finish_parent_run,
    finish_trial_run,
    open_parent_run,
    resolve_tracking_uri,
    set_remote_tags,
    start_trial_run,
    trial_env,
)
from shared.status import Handle, Kind, State

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no MLflow settings from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("MLFLOW_"):
            monkeypatch.delenv(name)


@pytest.fixture
def client(mlflow_server: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server)


@pytest.fixture
def experiment() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def _key() -> str:
    # Quotes and slashes as in real scheduler identities; the search must still find the run.
    return f"dag/task/manual__'{uuid.uuid4().hex[:8]}'/-1"


def _closed_port_uri(credentials: str = "") -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://{credentials}127.0.0.1:{port}"


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    return {**env, **extra}


def test_resolve_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_tracking_uri(None) is None
    assert resolve_tracking_uri("") is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert resolve_tracking_uri(None) == "http://from-env:5000"
    assert resolve_tracking_uri("http://explicit:5000") == "http://explicit:5000"


def test_importing_the_handoff_does_not_import_mlflow() -> None:
    code = "import sys, shared.mlflow_handoff, shared.retry; print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'requests', 'urllib3', 'kubernetes', 'kfp_server_api')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parent_run_is_created_with_tags(mlflow_server: str, client, experiment: str) -> None:
    key = _key()
    parent = open_parent_run(
        mlflow_server,
        key=key,
        run_name="train-mnist",
        experiment_name=experiment,
        tags={"kubeflow_tasks.scheduler": "airflow", "kubeflow_tasks.task": "dag.task"},
    )
    run = client.get_run(parent.run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "train-mnist"
    assert client.get_experiment(parent.experiment_id).name == experiment
    assert run.data.tags["kubeflow_tasks.key"] == key
    assert run.data.tags["kubeflow_tasks.scheduler"] == "airflow"
    assert run.data.tags["kubeflow_tasks.task"] == "dag.task"
    assert "kubeflow_tasks.previous_run_id" not in run.data.tags

    assert parent.env() == {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_RUN_ID": parent.run_id,
        "MLFLOW_EXPERIMENT_ID": parent.experiment_id,
    }
    assert ParentRun.from_context(parent.context()) == parent


def test_same_key_adopts_the_open_run_and_a_finished_one_gets_a_successor(
    mlflow_server: str, client, experiment: str
) -> None:
    key = _key()
    first = open_parent_run(mlflow_server, key=key, run_name="r", experiment_name=experiment)
    assert open_parent_run(mlflow_server, key=key, run_name="r", experiment_name=experiment) == first
    # Another key in the same experiment is another run.
    assert open_parent_run(mlflow_server, key=_key(), run_name="r", experiment_name=experiment) != first

    # The work's own `with mlflow.start_run()` ended it; we have not: still the task's run.
    client.set_terminated(first.run_id, "FINISHED")
    assert open_parent_run(mlflow_server, key=key, run_name="r", experiment_name=experiment) == first

    finish_parent_run(first, state=State.FAILED, message="attempt 1 failed")
    second = open_parent_run(mlflow_server, key=key, run_name="r", experiment_name=experiment)
    assert second.run_id != first.run_id
    assert second.experiment_id == first.experiment_id
    run = client.get_run(second.run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["kubeflow_tasks.previous_run_id"] == first.run_id


def test_attempts_map_to_runs(mlflow_server: str, client, experiment: str) -> None:
    key = _key()
    first = open_parent_run(mlflow_server, key=key, attempt=1, run_name="r", experiment_name=experiment)
    finish_parent_run(first, state=State.SUCCEEDED)
    # A retried task that adopts the succeeded attempt 1 gets attempt 1's run back.
    assert (
        open_parent_run(mlflow_server, key=key, attempt=1, run_name="r", experiment_name=experiment) == first
    )
    second = open_parent_run(mlflow_server, key=key, attempt=2, run_name="r", experiment_name=experiment)
    assert second != first
    tags = client.get_run(second.run_id).data.tags
    assert tags["kubeflow_tasks.attempt"] == "2"
    assert tags["kubeflow_tasks.previous_run_id"] == first.run_id


def test_remote_tags(mlflow_server: str, client, experiment: str) -> None:
    parent = open_parent_run(mlflow_server, key=_key(), run_name="r", experiment_name=experiment)
    handle = Handle(
        backend="kubernetes",
        kind=Kind.TRAINING_JOB,
        id="mnist-abc",
        key="k",
        namespace="team-a",
        url="https://kubeflow.example/jobs/mnist-abc",
        resource="PyTorchJob",
    )
    set_remote_tags(parent, handle=handle.to_dict())
    tags = client.get_run(parent.run_id).data.tags
    assert tags["kubeflow_tasks.backend"] == "kubernetes"
    assert tags["kubeflow_tasks.kind"] == "training-job"
    assert tags["kubeflow_tasks.remote_id"] == "mnist-abc"
    assert tags["kubeflow_tasks.remote_url"] == "https://kubeflow.example/jobs/mnist-abc"
    assert tags["kubeflow_tasks.namespace"] == "team-a"


def test_trials_are_nested_runs_in_the_parent_experiment(mlflow_server: str, client, experiment: str) -> None:
    parent = open_parent_run(mlflow_server, key=_key(), run_name="hpo", experiment_name=experiment)
    ctx = parent.context()
    good = start_trial_run(ctx, trial_name="hpo-trial-1", parameters={"lr": 0.01, "optimizer": "adam"})
    bad = start_trial_run(ctx, trial_name="hpo-trial-2", parameters={"lr": 0.5, "optimizer": "sgd"})
    assert good and bad

    # The trial's process resumes its own run through the hand-off variables.
    env = trial_env(ctx, good)
    assert env == {
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_RUN_ID": good,
        "MLFLOW_EXPERIMENT_ID": parent.experiment_id,
    }
    script = "import mlflow\nwith mlflow.start_run() as run:\n    mlflow.log_metric('epoch_loss', 0.3)\nprint(run.info.run_id)"
    out = subprocess.run(
        [sys.executable, "-c", script], env=_child_env(env), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == good

    finish_trial_run(ctx, good, metrics={"accuracy": 0.93}, state="FINISHED")
    finish_trial_run(ctx, bad, metrics={}, state="FAILED")

    children = client.search_runs(
        [parent.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'"
    )
    by_id = {run.info.run_id: run for run in children}
    assert set(by_id) == {good, bad}
    assert parent.experiment_id != "0"
    for run in children:
        assert run.info.experiment_id == parent.experiment_id
    assert by_id[good].info.status == "FINISHED"
    assert by_id[good].info.run_name == "hpo-trial-1"
    assert by_id[good].data.tags["kubeflow_tasks.trial"] == "hpo-trial-1"
    assert by_id[good].data.params == {"lr": "0.01", "optimizer": "adam"}
    assert by_id[good].data.metrics == {"epoch_loss": 0.3, "accuracy": 0.93}
    assert by_id[bad].info.status == "FAILED"
    assert by_id[bad].data.params == {"lr": "0.5", "optimizer": "sgd"}

    with pytest.raises(ValueError, match="state"):
        finish_trial_run(ctx, good, metrics={}, state="SUCCEEDED")


def test_work_logs_into_our_run_and_the_remote_outcome_wins(
    mlflow_server: str, client, experiment: str
) -> None:
    parent = open_parent_run(mlflow_server, key=_key(), run_name="job", experiment_name=experiment)
    script = textwrap.dedent(
        """
        import mlflow
        with mlflow.start_run() as run:
            mlflow.log_metric("loss", 0.25)
            mlflow.log_param("batch_size", 64)
        print(run.info.run_id, run.info.experiment_id)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=_child_env(parent.env()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == [parent.run_id, parent.experiment_id]
    assert client.get_run(parent.run_id).info.status == "FINISHED"  # the work's block ended it

    outputs = {
        "best_parameters": [{"name": "lr", "value": "0.01"}],
        "best_metrics": [{"name": "accuracy", "latest": "0.91", "min": "0.5", "max": "0.91"}],
        "epochs": 3,
        "model_uri": "s3://bucket/model",
        "replicas": {"Master": 1},
    }
    finish_parent_run(parent, state=State.FAILED, message="Worker-1 exited with code 1", outputs=outputs)
    run = client.get_run(parent.run_id)
    assert run.info.status == "FAILED"
    assert run.info.end_time is not None
    assert run.data.tags["kubeflow_tasks.state"] == "FAILED"
    assert run.data.tags["kubeflow_tasks.message"] == "Worker-1 exited with code 1"
    assert run.data.tags["kubeflow_tasks.output.model_uri"] == "s3://bucket/model"
    assert run.data.params == {"batch_size": "64", "best.lr": "0.01"}
    assert run.data.metrics == {"loss": 0.25, "accuracy": 0.91, "epochs": 3.0}

    # Idempotent: a second call logs nothing twice.
    finish_parent_run(parent, state=State.FAILED, message="Worker-1 exited with code 1", outputs=outputs)
    assert len(client.get_metric_history(parent.run_id, "epochs")) == 1
    assert client.get_run(parent.run_id).info.status == "FAILED"


@pytest.mark.parametrize(("state", "status"), [(State.SUCCEEDED, "FINISHED"), (State.CANCELLED, "KILLED")])
def test_finish_maps_states(mlflow_server: str, client, experiment: str, state: State, status: str) -> None:
    parent = open_parent_run(mlflow_server, key=_key(), run_name="r", experiment_name=experiment)
    finish_parent_run(parent, state=state)
    run = client.get_run(parent.run_id)
    assert run.info.status == status
    assert run.data.tags["kubeflow_tasks.state"] == state.value
    with pytest.raises(ValueError, match="terminal"):
        finish_parent_run(parent, state=State.RUNNING)


def test_secrets_stay_out_of_tags_and_logs(
    mlflow_server: str, client, experiment: str, monkeypatch: pytest.MonkeyPatch, caplog, capfd
) -> None:
    token = "tok-" + uuid.uuid4().hex
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)  # sent as a bearer token; the test server ignores it
    caplog.set_level(logging.DEBUG)
    parent = open_parent_run(
        mlflow_server,
        key=_key(),
        run_name="r",
        experiment_name=experiment,
        tags={"kubeflow_tasks.note": f"copied by mistake: {token}"},
    )
    set_remote_tags(
        parent, handle={"backend": "local", "kind": "pipeline", "id": "x", "url": f"http://h/?t={token}"}
    )
    finish_parent_run(
        parent, state=State.FAILED, message=f"auth failed for {token}", outputs={"token": token}
    )

    run = client.get_run(parent.run_id)
    recorded = [*run.data.tags.values(), *run.data.params.values()]
    assert not any(token in value for value in recorded)
    assert run.data.tags["kubeflow_tasks.note"] == "copied by mistake: ***"
    assert token not in caplog.text
    captured = capfd.readouterr()
    assert token not in captured.out + captured.err
    assert "View run" not in captured.out  # MLflow's URL banner stays off the CLI's stdout


def test_outage_after_submission_is_tolerated_quickly(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    uri = _closed_port_uri("alice:s3cret-pass@")
    parent = ParentRun(uri, "0123456789abcdef", "7")
    started = time.monotonic()
    finish_parent_run(parent, state=State.SUCCEEDED, outputs={"accuracy": 0.9})
    # Our client defaults bound the outage (MLflow's own: 7 retries, minutes).
    assert time.monotonic() - started < 20
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # not leaked

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the user's setting wins
    set_remote_tags(parent, handle={"backend": "local", "id": "x"})
    assert start_trial_run(parent.context(), trial_name="t", parameters={"lr": 1}) is None
    assert trial_env(parent.context(), None) == {}
    finish_trial_run(parent.context(), "abc", metrics={"m": 1.0}, state="FAILED")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"

    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == "shared.mlflow_handoff"
    ]
    assert len(warnings) == 4
    assert all("http://127.0.0.1:" in r.getMessage() for r in warnings)
    assert "s3cret-pass" not in caplog.text


def test_open_parent_run_raises_when_mlflow_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = _closed_port_uri("alice:s3cret-pass@")
    with pytest.raises(TransientError) as info:
        open_parent_run(uri, key="k", run_name="r")
    message = str(info.value)
    assert message.startswith(
        f"MLflow at {uri.replace('alice:s3cret-pass@', '')}: cannot open the run for key 'k'"
    )
    assert "s3cret-pass" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_child_started_while_our_mlflow_call_runs_inherits_none_of_our_client_defaults() -> None:
    """MLflow reads its timeout, retries and URL printing only from os.environ, so our defaults are
    there while our call runs (see `shared.mlflow_client._ClientDefaults`); a process that another
    thread starts meanwhile (a local run's supervisor, a replica, an evaluation) must not keep them.
    The MLflow server here holds its answer until released: a fault, so the call is surely in flight."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from shared.backends.local import procs
    from shared.mlflow_client import _CLIENT_DEFAULTS, best_effort

    arrived, release = threading.Event(), threading.Event()

    class Held(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            arrived.set()
            release.wait(30)
            body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "held"}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Held)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    call = threading.Thread(target=best_effort, args=(uri, "read an experiment", lambda c: c.get_experiment_by_name("x")))
    call.start()
    try:
        assert arrived.wait(30), "our MLflow call never reached the server"
        assert os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") == "15"  # the window is open (the documented limit)
        printed = subprocess.run(
            [sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
            env=procs.child_env({}), capture_output=True, text=True, check=True, timeout=60,
        )
    finally:
        release.set()
        call.join(30)
        server.shutdown()
        server.server_close()
    child = json.loads(printed.stdout)
    assert [name for name in _CLIENT_DEFAULTS if name in child] == []
    assert "PATH" in child  # the rest of our environment is still handed on
    assert not any(name in os.environ for name in _CLIENT_DEFAULTS)  # and ours is clean again

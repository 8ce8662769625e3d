"""The local backend against a careless user and a hostile neighbour (issue 10).

Each test plants what an attacker or a crash would leave, runs the real CLI and backend, and checks
that nothing outside the run was touched: a stranger's process survives, an outside file stays,
a private file is not printed, a fresh run is never declared lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from waiting import wait_until

from shared.backends.local import LocalBackend, run_id_for
from shared.cli import main
from shared.operations import submit_or_adopt
from shared.specs import load_spec

REPO = Path(__file__).resolve().parents[1]


def quick_job(tmp_path: Path, name: str = "quick", code: str = "print('done')", file: str | None = None) -> Path:
    """A one-replica PyTorchJob whose Master runs `python -c code`."""
    manifest = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "Never", "template": {
            "spec": {"containers": [{"name": "pytorch", "image": "python:3.11", "command": ["python", "-c", code]}]}}}}},
    }
    path = tmp_path / (file or f"{name}.yaml")
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture
def stranger():
    """A process that is not ours, in a process group of its own (what a recycled PID would name)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def fake_run(folder: Path, run_id: str, *, state: str = "RUNNING") -> Path:
    """What a planted run directory holds: a handle, a status and a log."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = {"backend": "local", "kind": "training-job", "id": run_id, "key": "k", "attempt": 1,
              "name": "x", "resource": "PyTorchJob"}
    (folder / "handle.json").write_text(json.dumps(handle))
    (folder / "status.json").write_text(json.dumps({"state": state, "raw_state": "Running"}))
    (folder / "log.txt").write_text("")
    return folder


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


# ---------------------------------------------------------------- 1. run ids stay under runs/


@pytest.mark.parametrize("command", ["status", "logs", "cancel"])
@pytest.mark.parametrize("run_id", ["../../outside", "{outside}", "..", "outside/../../outside"])
def test_a_run_id_that_is_a_path_is_refused(state_dir: Path, tmp_path: Path, capsys, command, run_id):
    """`../../outside` from runs/ is a complete fake run: it must not be read, cancelled or followed."""
    run_id = run_id.format(outside=tmp_path / "outside")
    outside = fake_run(tmp_path / "outside", run_id)  # its handle names itself by the path given
    (outside / "log.txt").write_text("OUTSIDE-LOG-LINE\n")
    (state_dir / "runs" / "outside").mkdir(parents=True)
    code = main([command, run_id])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kubeflow-tasks: error: run_id: "), captured.err
    assert "OUTSIDE-LOG-LINE" not in captured.out and captured.out == ""
    assert not (outside / "cancel-requested").exists()
    assert json.loads((outside / "status.json").read_text())["state"] == "RUNNING"


def test_a_symlinked_run_directory_is_not_followed(state_dir: Path, tmp_path: Path, capsys, stranger):
    """runs/<id> -> a directory elsewhere naming a stranger's process group: nothing is signalled or deleted."""
    outside = fake_run(tmp_path / "elsewhere", "planted")
    (outside / "procs").mkdir()
    (outside / "procs" / str(stranger.pid)).write_text(str(stranger.pid))
    (outside / "supervisor.pid").write_text("999999")
    (outside / "log.txt").write_text("outside secret\n")
    (state_dir / "runs").mkdir(parents=True)
    (state_dir / "runs" / "planted").symlink_to(outside, target_is_directory=True)

    assert main(["list"]) == 0
    assert "planted" not in capsys.readouterr().out
    for command in ("status", "logs", "cancel"):
        assert main([command, "planted"]) == 2, command
        line = one_line_error(capsys)
        assert "planted" in line and "outside secret" not in line
    assert stranger.poll() is None, "a stranger's process group was signalled"
    assert (outside / "procs" / str(stranger.pid)).exists(), "a file outside the state directory was deleted"
    assert not (outside / "cancel-requested").exists(), "a file was written outside the state directory"


def test_files_of_a_run_are_not_followed_outside(state_dir: Path, tmp_path: Path, capsys, stranger):
    """A real run directory whose log.txt and procs/ are symlinks to elsewhere."""
    private = tmp_path / "private.txt"
    private.write_text("TOP-SECRET-CONTENT\n")
    private.chmod(0o600)
    elsewhere = tmp_path / "elsewhere-procs"
    elsewhere.mkdir()
    (elsewhere / str(stranger.pid)).write_text(str(stranger.pid))
    run = fake_run(state_dir / "runs" / "symlinked-files", "symlinked-files")
    (run / "log.txt").unlink()
    (run / "log.txt").symlink_to(private)
    (run / "procs").symlink_to(elsewhere, target_is_directory=True)

    assert main(["logs", "symlinked-files"]) == 2
    captured = capsys.readouterr()
    assert "TOP-SECRET-CONTENT" not in captured.out + captured.err
    main(["status", "symlinked-files"])  # the supervisor is gone: the run is lost, its children killed
    main(["cancel", "symlinked-files"])
    capsys.readouterr()
    assert stranger.poll() is None, "a process named in a symlinked procs/ was signalled"
    assert (elsewhere / str(stranger.pid)).exists(), "a file outside the run was deleted"


# ---------------------------------------------------------------- 2. processes are ours only if proven


def test_a_recycled_supervisor_pid_does_not_keep_a_dead_run_running(state_dir: Path, capsys, stranger):
    """After a reboot the supervisor's old PID belongs to someone else: the run is lost, the stranger lives."""
    run = fake_run(state_dir / "runs" / "rebooted", "rebooted")
    started = psutil.Process(stranger.pid).create_time()
    (run / "supervisor.pid").write_text(str(stranger.pid))
    (run / "supervisor.json").write_text(json.dumps({"pid": stranger.pid, "create_time": started - 3600}))
    assert main(["status", "rebooted", "--output", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "FAILED" and "supervisor" in status["message"]
    assert stranger.poll() is None


def test_a_recycled_replica_pid_is_not_killed(state_dir: Path, capsys, stranger):
    """A dead run's procs/ names a PID that a stranger now holds: status and cancel leave it alone."""
    run = fake_run(state_dir / "runs" / "recycled", "recycled")
    started = psutil.Process(stranger.pid).create_time()
    (run / "supervisor.pid").write_text("999999")
    (run / "supervisor.json").write_text(json.dumps({"pid": 999999, "create_time": 1.0}))
    (run / "procs").mkdir()
    (run / "procs" / str(stranger.pid)).write_text(json.dumps({"pid": stranger.pid, "create_time": started - 60}))
    assert main(["status", "recycled", "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "FAILED"
    assert main(["cancel", "recycled"]) == 0
    capsys.readouterr()
    assert stranger.poll() is None, "a process whose PID was recorded but whose identity differs was killed"


POLLER = """
import sys, time
from shared.backends.local import LocalBackend
backend = LocalBackend(sys.argv[1])
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    for handle in backend.list():
        try:
            backend.status(handle)
        except Exception:
            pass
"""


def test_fresh_runs_are_never_declared_lost_by_tight_pollers(state_dir: Path, tmp_path: Path):
    """Two observers poll list()/status() as fast as they can (as a triggerer does) while runs are submitted."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pollers = [subprocess.Popen([sys.executable, "-c", POLLER, str(state_dir)], env=env) for _ in range(2)]
    try:
        backend = LocalBackend(state_dir, poll_interval=0.05)
        spec = load_spec(quick_job(tmp_path), kind="training-job")
        results = []
        for i in range(12):
            handle = submit_or_adopt(backend, spec, f"fresh-{i}").handle
            results.append(wait_until(lambda h=handle: (s := backend.status(h)).terminal and s, timeout=60,
                                      what=f"run {i} to end"))
        states = [(s.state.value, s.raw_state) for s in results]
        assert all(state == "SUCCEEDED" for state, _ in states), states
    finally:
        for poller in pollers:
            poller.kill()
            poller.wait()


def test_a_half_made_run_directory_does_not_block_its_key(state_dir: Path, tmp_path: Path, capsys):
    """A crash between mkdir and handle.json leaves a directory; the next submission under the key works."""
    spec_path = quick_job(tmp_path, name="crashed")
    half = state_dir / "runs" / run_id_for("crashed", "crash-key", 1)
    half.mkdir(parents=True)
    (half / "spec.json").write_text("{}")
    assert main(["run", "training-job", "--spec", str(spec_path), "--key", "crash-key", "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "SUCCEEDED"


def test_run_directories_are_private_and_a_shared_state_root_is_refused(state_dir: Path, tmp_path: Path, capsys):
    spec_path = quick_job(tmp_path, name="private")
    assert main(["run", "training-job", "--spec", str(spec_path), "--key", "p", "--output", "json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["id"]
    run = state_dir / "runs" / run_id
    for path in [state_dir, state_dir / "runs", run, *run.rglob("*")]:
        mode = path.lstat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{path} is mode {oct(mode)}"

    shared_root = tmp_path / "shared-root"
    shared_root.mkdir()
    shared_root.chmod(0o777)
    os.environ["KUBEFLOW_TASKS_STATE_DIR"] = str(shared_root)  # restored by the state_dir fixture's monkeypatch
    assert main(["run", "training-job", "--spec", str(spec_path), "--key", "q"]) == 2
    assert "KUBEFLOW_TASKS_STATE_DIR" in one_line_error(capsys)
    assert not (shared_root / "runs").exists()


# ---------------------------------------------------------------- 3. a key holds one kind and one spec


def test_a_key_does_not_adopt_work_of_another_kind_or_spec(state_dir: Path, tmp_path: Path, capsys):
    job = quick_job(tmp_path, name="first", code="import sys; print(sys.argv)")
    assert main(["run", "training-job", "--spec", str(job), "--key", "K", "--output", "json"]) == 0
    first = json.loads(capsys.readouterr().out)["id"]

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun", "metadata": {"name": "p"},
        "spec": {"pipeline": "dags.commodity.pipeline:commodity_pipeline"}}))
    assert main(["run", "pipeline", "--spec", str(pipeline), "--key", "K", "--output", "json"]) == 2
    line = one_line_error(capsys)
    assert "--key" in line and first in line and "PyTorchJob" in line

    other = quick_job(tmp_path, name="first", code="print('another program')", file="edited.yaml")
    assert main(["run", "training-job", "--spec", str(other), "--key", "K", "--output", "json"]) == 2
    line = one_line_error(capsys)
    assert "--key" in line and first in line and "succeeded" in line

    # The same spec adopts the success, as before.
    assert main(["run", "training-job", "--spec", str(job), "--key", "K", "--output", "json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["id"] == first and again["adopted"] is True
    assert len(list((state_dir / "runs").iterdir())) == 1


def test_adopting_with_other_params_is_refused_while_the_work_runs(state_dir: Path, tmp_path: Path, capsys):
    gate = tmp_path / "release"
    code = f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)"
    manifest = yaml.safe_load(quick_job(tmp_path, name="paramed", code=code).read_text())
    manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"].append(
        "${params.lr}")
    spec = tmp_path / "paramed.yaml"
    spec.write_text(yaml.safe_dump(manifest))
    base = ["run", "training-job", "--spec", str(spec), "--key", "P", "--output", "json"]
    assert main([*base, "--param", "lr=0.1", "--detach"]) == 0
    run_id = json.loads(capsys.readouterr().out)["id"]
    try:
        assert main([*base, "--param", "lr=0.5", "--detach"]) == 2
        line = one_line_error(capsys)
        assert run_id in line and "still running" in line
    finally:
        gate.write_text("")
    assert main([*base, "--param", "lr=0.1"]) == 0  # the same parameters adopt it
    assert json.loads(capsys.readouterr().out)["id"] == run_id


# ---------------------------------------------------------------- 8. no pickle


def test_the_supervisor_reads_json_not_pickle(state_dir: Path, tmp_path: Path, capsys):
    assert main(["run", "training-job", "--spec", str(quick_job(tmp_path, name="nopickle")), "--output", "json"]) == 0
    run = state_dir / "runs" / json.loads(capsys.readouterr().out)["id"]
    assert not list(run.glob("*.pickle"))
    assert json.loads((run / "spec.json").read_text())["kind"] == "training-job"


def test_a_stepped_wall_clock_does_not_make_our_supervisor_a_stranger(state_dir: Path, tmp_path: Path, capsys):
    """psutil's create_time moves with the wall clock (boot time = now - uptime); the start ticks do not."""
    gate = tmp_path / "release"
    code = f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)"
    spec = quick_job(tmp_path, name="clock", code=code)
    assert main(["run", "training-job", "--spec", str(spec), "--detach", "--output", "json"]) == 0
    run = state_dir / "runs" / json.loads(capsys.readouterr().out)["id"]
    try:
        recorded = json.loads((run / "supervisor.json").read_text())
        (run / "supervisor.json").write_text(json.dumps({**recorded, "create_time": recorded["create_time"] - 10}))
        assert main(["status", run.name, "--output", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] in ("PENDING", "RUNNING")
    finally:
        gate.write_text("")
    wait_until(lambda: main(["status", run.name, "--output", "json"]) == 0
               and json.loads(capsys.readouterr().out)["state"] == "SUCCEEDED", what="the run to succeed")

"""Core pieces without a scheduler: durations, the status model, keys and racing submissions."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from shared.backends.base import SubmitContext
from shared.backends.local import LocalBackend, run_id_for
from shared.durations import parse_duration
from shared.errors import SpecError
from shared.specs import load_spec
from shared.status import Handle, Kind, State, Status

HEAVY = ["kfp", "kubernetes", "mlflow", "optuna", "hyperopt", "skopt", "torch"]


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("45m", 2700), ("1h30m", 5400), ("2d", 172800), ("0.5s", 0.5)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1x", "-5", "0", "h1"])
def test_bad_durations_name_the_field(text):
    with pytest.raises(SpecError, match=r"^--timeout: "):
        parse_duration(text, "--timeout")


def test_handle_and_status_round_trip_through_json():
    handle = Handle("local", Kind.EXPERIMENT, "e-1", "k", 2, "e", None, "file:///x", "Experiment")
    assert Handle.from_dict(handle.to_dict()) == handle
    status = Status(State.SUCCEEDED, "ExperimentGoalReached", "done", {"best_trial": "t"})
    assert Status.from_dict(status.to_dict()) == status
    assert status.terminal and not Status(State.RUNNING).terminal


def test_run_ids_are_deterministic_per_key_and_attempt():
    assert run_id_for("Train Job", "k", 1) == run_id_for("Train Job", "k", 1)
    assert run_id_for("Train Job", "k", 1) != run_id_for("Train Job", "k", 2)
    assert run_id_for("Train Job", "k", 1).startswith("train-job-")


def test_light_imports():
    """The modules adapters import at parse time pull in no heavy client library."""
    code = (
        "import sys, shared, shared.specs, shared.operations, shared.cli, shared.backends;"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _submit(args: tuple[str, str]) -> str:
    state_dir, spec_path = args
    backend = LocalBackend(state_dir=state_dir)
    return backend.submit(load_spec(spec_path), "race", 1, SubmitContext()).id


def test_racing_submissions_of_one_key_create_one_run(tmp_path: Path):
    spec = tmp_path / "job.yaml"
    spec.write_text(
        """
apiVersion: kubeflow.org/v1
kind: PyTorchJob
metadata: {name: race}
spec:
  pytorchReplicaSpecs:
    Master:
      replicas: 1
      restartPolicy: Never
      template: {spec: {containers: [{name: pytorch, image: python:3.11-slim, command: [python, -c, "print(1)"]}]}}
"""
    )
    state = tmp_path / "state"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.map(_submit, [(str(state), str(spec))] * 8)
    assert len(set(ids)) == 1
    assert len(list((state / "runs").iterdir())) == 1
    backend = LocalBackend(state_dir=state)
    handle = backend.get(ids[0])
    statuses = [status for _, status in _drain(backend, handle)]
    assert statuses[-1].state is State.SUCCEEDED
    assert backend.status(handle).state is State.SUCCEEDED


def _drain(backend, handle):
    import asyncio

    async def collect():
        return [item async for item in backend.watch([handle])]

    return asyncio.run(collect())

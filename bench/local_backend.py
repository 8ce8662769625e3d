"""Benchmarks of the local backend; results are recorded in bench/RESULTS.md.

1. Submit to first line: from `LocalBackend.submit` returning control to the caller's clock start,
   until the first line a replica prints is readable in the run's log.
2. Experiment overhead per trial: an experiment of trials that do nothing but print their metric,
   with parallelTrialCount 1 and 3, against the cost of starting the same trial command bare.

Run: `.venv/bin/python bench/local_backend.py [--repeat N]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.backends.base import SubmitContext
from shared.backends.local import LocalBackend
from shared.specs import ExperimentSpec, load_spec
from shared.specs.builders import katib_experiment

TRIAL = ["python", "-c", "print('loss=0.5')"]


def pytorchjob(name: str) -> dict:
    container = {"name": "pytorch", "image": "python:3.11-slim", "command": ["python", "-c", "print('first line')"]}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "Never",
                                                     "template": {"spec": {"containers": [container]}}}}},
    }


def experiment(name: str, parallel: int, trials: int) -> ExperimentSpec:
    return katib_experiment(
        name,
        objective_metric="loss",
        parameters={"x": ("double", 0, 1)},
        trial_command=[*TRIAL, "${trialParameters.x}"],
        max_trial_count=trials,
        parallel_trial_count=parallel,
        max_failed_trial_count=0,
    )


def wait_terminal(backend: LocalBackend, handle) -> None:
    while not backend.status(handle).terminal:
        time.sleep(0.01)


def first_line(repeat: int) -> list[float]:
    delays = []
    with tempfile.TemporaryDirectory() as root:
        backend = LocalBackend(state_dir=root)
        for i in range(repeat):
            spec = load_spec(pytorchjob(f"first-line-{i}"))
            t0 = time.perf_counter()
            handle = backend.submit(spec, f"bench-{i}", 1, SubmitContext())
            log = Path(root) / "runs" / handle.id / "log.txt"
            while "first line" not in log.read_text():
                time.sleep(0.001)
            delays.append(time.perf_counter() - t0)
            wait_terminal(backend, handle)
    return delays


def experiment_seconds(parallel: int, trials: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        backend = LocalBackend(state_dir=root)
        spec = experiment(f"overhead-p{parallel}", parallel, trials)
        t0 = time.perf_counter()
        handle = backend.submit(spec, f"overhead-{parallel}", 1, SubmitContext())
        wait_terminal(backend, handle)
        elapsed = time.perf_counter() - t0
        status = backend.status(handle)
        assert status.outputs.get("trials") == trials, status
    return elapsed


def bare_trial(repeat: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        subprocess.run([sys.executable, *TRIAL[1:]], check=True, capture_output=True)
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5, help="experiments per size; the median counts")
    args = parser.parse_args()
    delays = sorted(first_line(args.repeat))
    print(f"submit -> first replica line: median {statistics.median(delays) * 1000:.0f} ms, "
          f"p95 {delays[int(0.95 * (len(delays) - 1))] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms "
          f"({args.repeat} runs)")
    bare = bare_trial(args.repeat)
    print(f"bare trial command (python -c print): {bare * 1000:.0f} ms")
    # Two sizes separate the fixed cost (supervisor start, importing the algorithm's library)
    # from the cost each further trial adds.
    small, large = args.trials, 3 * args.trials
    for parallel in (1, 3):
        # Medians of a few rounds: the fixed cost (importing hyperopt) varies by a few hundred ms.
        t_small = statistics.median(experiment_seconds(parallel, small) for _ in range(args.rounds))
        t_large = statistics.median(experiment_seconds(parallel, large) for _ in range(args.rounds))
        per_trial = (t_large - t_small) / (large - small)
        print(f"experiment, parallelTrialCount={parallel}: {per_trial * 1000:.0f} ms wall per added trial "
              f"({(per_trial - bare / parallel) * 1000:.0f} ms over the bare command's share); "
              f"fixed {max(0.0, t_small - small * per_trial):.2f} s; {small} trials {t_small:.2f} s, "
              f"{large} trials {t_large:.2f} s")


if __name__ == "__main__":
    main()

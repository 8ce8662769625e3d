"""`make demo`: the nightly commodity-price retraining, end to end on this machine.

Three tasks, each submitted and awaited through the same operations the CLI and the scheduler
adapters use: a KFP pipeline (prepare data, train a baseline, evaluate) through kfp.local; a Katib
TPE experiment over learning_rate and num_estimators; a PyTorchJob (Master + Worker, gloo on CPU)
that trains with the best parameters. Each task opens an MLflow run that names its upstream task's
run, so the night's runs form one lineage. It ends with a table of results.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from shared.backends import get_backend
from shared.backends.local.store import default_state_root
from shared.operations import Outcome, run_async
from shared.specs import load_spec
from shared.status import State

HERE = Path(__file__).resolve().parent


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_task(backend, title: str, spec, key: str, tracking_uri: str, upstream: str | None) -> Outcome:
    say(f"\n== {title}: {spec.kind.value} {spec.name}")
    started = time.monotonic()
    seen: set[tuple[str, str]] = set()

    def on_status(status) -> None:
        if (status.state.value, status.raw_state) not in seen:
            seen.add((status.state.value, status.raw_state))
            say(f"   [{time.monotonic() - started:6.1f}s] {status.state.value} {status.raw_state}")

    outcome = asyncio.run(
        run_async(
            backend,
            spec,
            key,
            mlflow_tracking_uri=tracking_uri,
            upstream_mlflow_run_id=upstream,
            timeout=1800,
            on_submitted=lambda s: say(f"   submitted as {s.handle.id}; MLflow run {s.mlflow_run_id}"),
            on_status=on_status,
            on_log=lambda line: say(f"   | {line}"),
        )
    )
    if outcome.status.state is not State.SUCCEEDED:
        say(f"\n{title} ended {outcome.status.state.value}: {outcome.status.message}")
        sys.exit(1)
    return outcome


def main() -> int:
    state = default_state_root()
    night = datetime.now().strftime("%Y%m%d-%H%M%S")
    data_path = str(state / "demo" / night / "prices.csv")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state / 'mlflow.db'}"
    state.mkdir(parents=True, exist_ok=True)
    backend = get_backend("local")
    say(f"state directory {state}\nMLflow tracking URI {tracking_uri}")

    pipeline = run_task(
        backend,
        "1/3 prepare, train baseline, evaluate",
        load_spec(HERE / "pipeline_run.yaml", kind="pipeline", params={"data_path": data_path}),
        f"demo/{night}/pipeline",
        tracking_uri,
        None,
    )
    experiment = run_task(
        backend,
        "2/3 hyperparameter search",
        load_spec(HERE / "experiment.yaml", kind="experiment", params={"data_path": data_path}),
        f"demo/{night}/experiment",
        tracking_uri,
        pipeline.submission.mlflow_run_id,
    )
    best = experiment.status.outputs["best_parameters"]
    training = run_task(
        backend,
        "3/3 distributed training with the best parameters",
        load_spec(
            HERE / "pytorchjob.yaml",
            kind="training-job",
            params={
                "data_path": data_path,
                "learning_rate": best["learning_rate"],
                "num_estimators": best["num_estimators"],
            },
        ),
        f"demo/{night}/training",
        tracking_uri,
        experiment.submission.mlflow_run_id,
    )
    print_table(pipeline, experiment, training, tracking_uri)
    return 0


def print_table(pipeline: Outcome, experiment: Outcome, training: Outcome, tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    # The training job's metrics are read back from MLflow: proof that the hand-off reached it.
    trained = MlflowClient(tracking_uri).get_run(training.submission.mlflow_run_id).data.metrics
    outputs = experiment.status.outputs
    metric = outputs.get("objective_metric", "rmse")
    rows = [
        ("baseline (pipeline) rmse", _fmt(pipeline.status.outputs.get("outputs", {}).get("Output"))),
        ("best trial", outputs.get("best_trial")),
        *((f"best {name}", value) for name, value in outputs.get("best_parameters", {}).items()),
        (f"best trial {metric}", _fmt(outputs.get("best_metrics", {}).get(metric))),
        (
            "trials (succeeded / early-stopped / failed)",
            f"{outputs.get('trials')} ({outputs.get('trials_succeeded')} / "
            f"{outputs.get('trials_early_stopped')} / {outputs.get('trials_failed')})",
        ),
        ("PyTorchJob val_rmse (from MLflow)", _fmt(trained.get("val_rmse"))),
        ("MLflow run: pipeline", pipeline.submission.mlflow_run_id),
        ("MLflow run: experiment", experiment.submission.mlflow_run_id),
        ("MLflow run: training", training.submission.mlflow_run_id),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n" + "-" * (width + 40))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("-" * (width + 40))


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)


if __name__ == "__main__":
    sys.exit(main())

"""The nightly commodity-price retraining as a DolphinScheduler workflow (pydolphinscheduler, Python).

prepare (KFP pipeline) -> tune (Katib TPE experiment) -> train (PyTorchJob with the best parameters)
-> promote (register the model, `champion` only if it beats champion and naive baseline) -> summary,
daily at 02:00. Each task hands its MLflow run id to the next through its OUT parameter
`mlflow_run_id`, which the next task names as its upstream run: one lineage per night. The tuned
values reach the training job as `${best_learning_rate}` and `${best_num_estimators}`.

    python dags/dolphinscheduler/commodity_nightly.py --define   # the definition JSON, no gateway
    python dags/dolphinscheduler/commodity_nightly.py            # submit to DolphinScheduler
    python dags/dolphinscheduler/commodity_nightly.py --run      # submit and start one instance

The same workflow as YAML: commodity_nightly.yaml beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dolphinscheduler_tasks import (
    KatibExperiment,
    KubeflowPipeline,
    ModelPromotion,
    PyTorchJob,
    Summary,
    offline,
)

COMMODITY = Path(__file__).resolve().parents[1] / "commodity"
NAME = "commodity-nightly"
SCHEDULE = "0 0 2 * * ? *"  # DolphinScheduler's Quartz crontab: every day at 02:00
DATA_ROOT = "/tmp/kubeflow-tasks/commodity"
# One data file per workflow instance: a rerun of the same night reuses it, the next night does not.
DATA_PATH = "${data_root}/${system.workflow.instance.id}/prices.csv"
RETRIES = {"fail_retry_times": 2, "fail_retry_interval": 5}
MODEL_NAME = "commodity-forecaster"
EVALUATE = ["python", "evaluate.py", "--data", DATA_PATH, "--model-uri", "{model_uri}"]  # in COMMODITY


def build_workflow(data_root: str = DATA_ROOT, **task_options: Any):
    """The workflow object; `task_options` go to every Kubeflow task (backend, namespace, ...)."""
    from pydolphinscheduler.core.workflow import Workflow

    with Workflow(name=NAME, schedule=SCHEDULE, param={"data_root": data_root}) as workflow:
        prepare = KubeflowPipeline(
            name="prepare",
            spec=COMMODITY / "pipeline_run.yaml",
            params={"data_path": DATA_PATH},
            timeout=30,
            **RETRIES,
            **task_options,
        )
        tune = KatibExperiment(
            name="tune",
            spec=COMMODITY / "experiment.yaml",
            params={"data_path": DATA_PATH},
            upstream_mlflow_run_id="${mlflow_run_id}",
            timeout=120,
            **RETRIES,
            **task_options,
        )
        train = PyTorchJob(
            name="train",
            spec=COMMODITY / "pytorchjob.yaml",
            params={
                "data_path": DATA_PATH,
                "learning_rate": "${best_learning_rate}",
                "num_estimators": "${best_num_estimators}",
            },
            upstream_mlflow_run_id="${mlflow_run_id}",
            timeout=60,
            **RETRIES,
            **task_options,
        )
        promote = ModelPromotion(
            name="promote",
            model_name=MODEL_NAME,
            run_id="${mlflow_run_id}",
            evaluate=EVALUATE,
            working_dir=COMMODITY,
            margin=0.01,
            mlflow_tracking_uri=task_options.get("mlflow_tracking_uri"),
            **RETRIES,
        )
        summary = Summary(
            name="summary",
            rows={
                "challenger": f"{MODEL_NAME} v${{model_version}}: rmse ${{value}}",
                "champion before": "v${previous_champion_version}: rmse ${champion_value}",
                "naive baseline": "rmse ${baseline_value}",
                "decision": "${decision}: ${reason}",
                "champion now": f"{MODEL_NAME} v${{champion_version}}",
                "best parameters": "${best_parameters}",
                "best trial metrics": "${best_metrics}",
                "training job": "${name} ${state}",
                "MLflow run of the training (its upstream tags lead back to the pipeline)": "${mlflow_run_id}",
            },
        )
        prepare >> tune >> train >> promote >> summary
    return workflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--define", action="store_true", help="print the definition JSON offline")
    parser.add_argument("--run", action="store_true", help="start an instance after submitting")
    args = parser.parse_args(argv)
    if args.define:
        from dolphinscheduler_tasks.__main__ import definition

        with offline():
            print(json.dumps(definition(build_workflow()), indent=2, sort_keys=True))
        return 0
    workflow = build_workflow()
    workflow.run() if args.run else workflow.submit()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`kubeflow-tasks schedule pipeline`: exactly one KFP recurring run per key.

    kubeflow-tasks schedule pipeline --spec run.yaml --cron "0 2 * * *" --key nightly --backend kubernetes

Applying the same again changes nothing; a changed spec, cron or parameter replaces the recurring
run (KFP v2beta1 cannot update one); `--disable` keeps it but stops it, `--delete` removes it. The
pipeline is uploaded as a version named by its content hash (or `--pipeline-version`). Locally the
scheduler that runs `kubeflow-tasks run` is the recurrence, so the local backend refuses.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any) -> None:
    from shared.cli import KUBERNETES_OPTIONS

    schedule = sub.add_parser("schedule", help="keep one KFP recurring run per key (kubernetes backend)")
    schedule.add_argument("kind", choices=["pipeline"], help="what to schedule (KFP recurring runs are pipelines)")
    schedule.add_argument("--spec", required=True, help="a PipelineRun document or a compiled KFP pipeline")
    schedule.add_argument("--key", required=True, help="names the recurring run: one per key")
    schedule.add_argument("--cron", help="cron: five fields (minute first, fires at second 0) or KFP's six (second first)")
    schedule.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter; repeatable")
    schedule.add_argument("--max-concurrency", type=int, default=1, help="runs at once, 1 to 10 (default 1)")
    schedule.add_argument("--no-catchup", action="store_true", help="do not start the runs missed while disabled or paused")
    schedule.add_argument("--pipeline-version", help="version name to upload as (default: v-<content hash>)")
    state = schedule.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="keep the recurring run but stop it scheduling")
    state.add_argument("--delete", action="store_true", help="delete the recurring run of this key")
    schedule.add_argument("--output", choices=["text", "json"], default="text")
    schedule.add_argument("--backend", default="kubernetes", help="kubernetes (default); local refuses: its scheduler is the recurrence")
    cluster = schedule.add_argument_group("kubernetes backend")
    for option, text in KUBERNETES_OPTIONS.items():
        cluster.add_argument(option, help=text)


def cmd_schedule(args: argparse.Namespace) -> int:
    # Everything the user typed is checked before anything is contacted.
    from shared.backends.kubernetes.recurring import apply_recurring_run, schedule_of
    from shared.cli import EXIT_OK, backend_from, parse_params, say
    from shared.errors import SpecError
    from shared.specs import load_spec

    schedule = schedule_of(
        args.cron, args.max_concurrency, args.no_catchup, args.disable, args.delete, flags=True
    )
    spec = load_spec(args.spec, kind="pipeline", params=parse_params(args.param))
    if args.backend == "local":
        raise SpecError(
            "--backend",
            "the local backend has no recurring runs: the scheduler that runs this command is the recurrence "
            "(schedule `kubeflow-tasks run pipeline` there), or use --backend kubernetes",
        )
    backend = backend_from(args)
    namespace = spec.namespace or backend.kfp.options.namespace
    experiment_id = backend.runs.experiments.id_for(spec.experiment, namespace) if spec.experiment and schedule else None
    applied = apply_recurring_run(
        backend.kfp,
        spec,
        args.key,
        schedule,
        namespace=namespace,
        experiment_id=experiment_id,
        version_name=args.pipeline_version,
    )
    result = applied.to_dict()
    say(f"recurring run {applied.action}: {applied.recurring_run_id or ', '.join(applied.removed) or 'none'}")
    if args.output == "json":
        print(json.dumps(result), flush=True)
    else:
        for name, value in result.items():
            if value not in (None, "", []):
                print(f"{name}: {value}", flush=True)
    return EXIT_OK

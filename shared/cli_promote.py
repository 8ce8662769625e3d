"""`kubeflow-tasks promote`: register a training run's model and move `champion` only when it wins.

Results: text or JSON on stdout, or DolphinScheduler OUT parameters (`--output setvalue`):
model_version, decision, champion_version (and model_name, value, reason). A rejection is an
outcome, not a failure: exit 0 either way; 1 when the evaluation or MLflow failed; 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

OUTPUTS = ["text", "json", "setvalue"]


def add_parser(sub: Any) -> None:
    from shared.cli import KUBERNETES_OPTIONS

    p = sub.add_parser("promote", help="register a training run's model; make it champion if it beats champion and baseline")
    p.add_argument("--model-name", required=True, help="registered model name")
    p.add_argument("--run-id", required=True, help="the training job's MLflow run (its logged model is registered)")
    p.add_argument("--evaluate", metavar="COMMAND",
                   help="evaluation command, run without a shell once per model with {model_uri} filled in; prints METRIC=VALUE")
    p.add_argument("--evaluate-spec", metavar="FILE",
                   help="instead of --evaluate: a TrainingJob manifest or PipelineRun document run as work once per model "
                        "with the parameter model_uri; it logs METRIC to the MLflow run handed to it")
    p.add_argument("--evaluate-param", action="append", default=[], metavar="NAME=VALUE",
                   help="with --evaluate-spec: another parameter of the evaluation; repeatable")
    p.add_argument("--metric", default="rmse", help="metric the evaluation prints (default: rmse)")
    p.add_argument("--greater-is-better", action="store_true", help="higher metric values win (default: lower)")
    p.add_argument("--margin", default="0", help="how much the challenger must beat the champion by, in metric units")
    p.add_argument("--baseline", default="naive", help="model URI of the baseline, or 'naive' (default), passed to the evaluation")
    p.add_argument("--artifact-path", default="model", help="where the training run logged the model (default: model)")
    p.add_argument("--alias", default="champion", help="the alias that marks the champion (default: champion)")
    p.add_argument("--evaluate-timeout", help="deadline per evaluation, such as 10m")
    p.add_argument("--key", help="idempotency key: a retry with the same key registers no second version")
    p.add_argument("--mlflow-tracking-uri", help="MLflow tracking and registry URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--output", choices=OUTPUTS, default="text")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--backend", default="local", help="where --evaluate-spec runs: local (default) or kubernetes")
    cluster = p.add_argument_group("kubernetes backend (for --evaluate-spec)")
    for option, text in KUBERNETES_OPTIONS.items():
        cluster.add_argument(option, help=text)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(1)  # unwinds through the evaluation, which kills its process group


def cmd_promote(args: argparse.Namespace) -> int:
    from shared.cli import EXIT_OK, backend_from, backend_options, parse_params, say
    from shared.durations import parse_duration
    from shared.errors import SpecError
    from shared.keys import new_key
    from shared.mlflow_handoff import resolve_tracking_uri
    from shared.promotion import promote, promotion_spec

    spec = promotion_spec(
        model_name=args.model_name,
        source_run_id=args.run_id,
        evaluate=args.evaluate,
        metric=args.metric,
        greater_is_better=args.greater_is_better,
        margin=args.margin,
        baseline=args.baseline,
        artifact_path=args.artifact_path,
        alias=args.alias,
        evaluate_timeout=parse_duration(args.evaluate_timeout, "--evaluate-timeout") if args.evaluate_timeout else None,
        evaluate_spec=args.evaluate_spec,
        evaluate_params=parse_params(args.evaluate_param) if args.evaluate_param else None,
    )
    backend_options(args)  # cluster options without --backend kubernetes are bad input
    uri = resolve_tracking_uri(args.mlflow_tracking_uri)
    if not uri:
        raise SpecError("--mlflow-tracking-uri", "required (or $MLFLOW_TRACKING_URI): the model registry is MLflow's")
    progress = (lambda _m: None) if args.quiet else say
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    backend = backend_from(args) if spec.evaluate_spec else None
    decision = promote(spec, args.key or new_key(), uri, progress=progress, backend=backend)
    emit_decision(decision.to_dict(), args.output)
    return EXIT_OK


def promote_arguments(spec: Any, run_id: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The options that make this command do `spec` ((flag, value) pairs, switches), for a scheduler
    that runs the CLI (DolphinScheduler): the flags are this parser's, so they are written here.
    `run_id` is given apart: on such a scheduler it is often a reference resolved only on the worker."""
    import shlex

    arguments = [("--model-name", spec.model_name), ("--run-id", run_id)]
    if spec.evaluate_spec:
        arguments.append(("--evaluate-spec", spec.evaluate_spec))
        arguments += [("--evaluate-param", f"{name}={value}") for name, value in spec.evaluate_params.items()]
    else:
        arguments.append(("--evaluate", shlex.join(spec.evaluate)))
    arguments += [
        ("--metric", spec.metric),
        ("--margin", repr(spec.margin)),
        ("--baseline", spec.baseline),
        ("--artifact-path", spec.artifact_path),
        ("--alias", spec.alias),
    ]
    if spec.evaluate_timeout is not None:
        arguments.append(("--evaluate-timeout", f"{spec.evaluate_timeout:g}s"))
    return arguments, ["--greater-is-better"] if spec.greater_is_better else []


def emit_decision(result: dict[str, Any], output: str) -> None:
    from shared.promotion import OUT_PARAMETERS
    from shared.setvalue import safe_value

    if output == "setvalue":
        for name in OUT_PARAMETERS:
            value = result.get(name)
            print(f"${{setValue({name}={safe_value('' if value is None else value)})}}", flush=True)
    elif output == "json":
        print(json.dumps(result), flush=True)
    else:
        for name, value in result.items():
            if value not in (None, ""):
                print(f"{name}: {value}", flush=True)
    sys.stdout.flush()

"""`kubeflow-tasks`: run Kubeflow work from a shell, a DolphinScheduler Shell task or a cron line.

Progress for people goes to stderr; results go to stdout (`--output json` for machines).
Exit codes: 0 the work succeeded, 1 it failed, was cancelled or timed out, 2 bad input.
SIGTERM or SIGINT while waiting cancels the remote work before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

from shared import cli_promote, cli_schedule
from shared.errors import KubeflowTasksError, NotFound, SpecError, Unreachable
from shared.status import Handle, Kind, State

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
OUTPUTS = ["text", "json", "setvalue"]
KUBERNETES_OPTIONS = {
    "--kubeconfig": "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster)",
    "--context": "kubeconfig context",
    "--namespace": "namespace of the work (a profile namespace: KFP runs too)",
    "--kfp-namespace": "namespace of KFP runs, if not --namespace (multi-user KFP requires one)",
    "--kfp-host": "KFP API endpoint (default: $KF_PIPELINES_ENDPOINT)",
    "--kfp-token-file": "file holding the KFP bearer token (re-read on 401)",
}


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too, but with a usage dump; keep one line
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kubeflow-tasks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def backend_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--backend", default="local", help="where the work runs: local (default) or kubernetes"
        )
        cluster = p.add_argument_group(
            "kubernetes backend (kubectl and kfp conventions: $KUBECONFIG, $KF_PIPELINES_ENDPOINT)"
        )
        for option, text in KUBERNETES_OPTIONS.items():
            cluster.add_argument(option, help=text)

    def target_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_id", nargs="?", help="the run id printed by `run`")
        p.add_argument("--key", help="find the newest attempt submitted under this key instead")
        backend_args(p)

    run = sub.add_parser("run", help="submit (or adopt) work and wait for it")
    run.add_argument("kind", choices=[k.value for k in Kind])
    run.add_argument(
        "--spec",
        help="YAML/JSON file: a manifest (PyTorchJob, TFJob, Experiment) or a PipelineRun",
    )
    run.add_argument("--pipeline-name", help="pipeline: run this pipeline uploaded to KFP instead of --spec "
                     "(kubernetes backend; as `kfp run submit --pipeline-name`)")
    run.add_argument("--pipeline-version", help="with --pipeline-name: the version to run (default: the newest)")
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pipeline parameter, or ${params.NAME} in a manifest; repeatable",
    )
    run.add_argument("--timeout", help="deadline such as 30m or 2h; when it passes the work is cancelled")
    run.add_argument("--startup-timeout", help="such as 10m: work whose pods are not running by then (image pull, "
                     "scheduling, crash loop) is cancelled and fails with the cluster's reason")
    run.add_argument("--key", help="idempotency key: a second run with the same key adopts the first")
    run.add_argument("--mlflow-tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; none means no MLflow)")
    run.add_argument("--mlflow-experiment",
                     help="MLflow experiment of the run (default: $MLFLOW_EXPERIMENT_NAME, else kubeflow-tasks)")
    run.add_argument("--mlflow-credentials-secret", metavar="SECRET",
                     help="kubernetes backend: Secret holding MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN for the work")
    run.add_argument("--mlflow-upstream-run-id", help="the previous task's MLflow run id, recorded as this run's upstream")
    run.add_argument("--detach", action="store_true", help="return once submitted, without waiting")
    run.add_argument("--output", choices=OUTPUTS, default="text")
    run.add_argument("--quiet", action="store_true", help="no progress or log lines on stderr")
    run.add_argument("--guard", action="store_true",
                     help="start a guard outside this process tree that cancels the work if this process is killed "
                          "(SIGKILL) before it finishes: what DolphinScheduler's stop does")
    backend_args(run)

    status = sub.add_parser("status", help="show the state of a run")
    target_args(status)
    status.add_argument("--output", choices=OUTPUTS, default="text")

    logs = sub.add_parser("logs", help="print the log of a run")
    target_args(logs)
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")

    cancel = sub.add_parser("cancel", help="cancel a run and everything it started")
    target_args(cancel)
    cancel.add_argument("--output", choices=OUTPUTS, default="text")

    lst = sub.add_parser("list", help="list runs")
    backend_args(lst)
    lst.add_argument("--output", choices=OUTPUTS, default="text")

    cli_promote.add_parser(sub)
    cli_schedule.add_parser(sub)
    return parser


MAX_KEY = 512  # characters; a key is stored as an annotation, a tag and a file name digest


def parse_params(items: Sequence[str]) -> dict[str, str]:
    from shared.params import check_params

    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SpecError("--param", f"expected NAME=VALUE, got {_short(item)}")
        name = name.strip()
        if name in params:
            raise SpecError("--param", f"{name!r} is given twice; give each parameter once")
        params[name] = value
    check_params(params, "--param")
    return params


def parse_key(value: str | None) -> str | None:
    """`--key`: absent means an ad-hoc key; given, it must be real text (an empty key adopts nothing)."""
    if value is None:
        return None
    if not value.strip():
        raise SpecError("--key", "must not be empty (leave --key out for a one-off run)")
    if "\x00" in value or not value.isprintable():
        raise SpecError("--key", "must be printable text without control characters or NUL bytes")
    if len(value) > MAX_KEY:
        raise SpecError("--key", f"is {len(value)} characters long; at most {MAX_KEY}")
    return value


def _short(text: str, limit: int = 60) -> str:
    """User input quoted in a message: repr (so control characters show), cut to `limit`."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def say(message: str) -> None:
    """A progress or error line on stderr; it may quote user input, so it can never read as a setValue."""
    from shared.setvalue import defuse

    print(f"kubeflow-tasks: {defuse(message)}", file=sys.stderr, flush=True)


def emit(data: dict[str, Any], output: str, names: Sequence[str] | None = None) -> None:
    """Print a result; with `setvalue`, only the OUT parameter `names` (default: the ids and state)."""
    if output == "setvalue":
        from shared.setvalue import BASE_NAMES, setvalue_lines

        for line in setvalue_lines(data, names or BASE_NAMES):
            print(line, flush=True)
        return
    if output == "json":
        print(json.dumps(data, default=str), flush=True)
        return
    for name, value in data.items():
        if value in (None, "", {}, []):
            continue
        text = json.dumps(value, default=str) if isinstance(value, dict | list) else value
        print(f"{name}: {text}", flush=True)


def backend_options(args: argparse.Namespace) -> dict[str, str]:
    """The cluster options given with --backend kubernetes."""
    options = {}
    for option in KUBERNETES_OPTIONS:
        value = getattr(args, option[2:].replace("-", "_"), None)
        if value is None:
            continue
        if args.backend != "kubernetes":
            raise SpecError(option, "only applies with --backend kubernetes")
        options[option[2:].replace("-", "_")] = value
    return options


def backend_from(args: argparse.Namespace):
    """The backend named by --backend, with the cluster options when it is kubernetes."""
    from shared.backends import get_backend

    return get_backend(args.backend, **backend_options(args))


def resolve_target(backend, args: argparse.Namespace) -> Handle:
    if (args.run_id is None) == (args.key is None):
        raise SpecError("run_id", "give either a run id or --key KEY")
    if args.key is not None:
        parse_key(args.key)
        handle = backend.find(args.key)
        if handle is None:
            raise NotFound(f"nothing was submitted under key {args.key!r}")
        return handle
    if not args.run_id.strip() or "\x00" in args.run_id:
        raise SpecError("run_id", f"expected a run id printed by `run`, got {_short(args.run_id)}")
    return backend.get(args.run_id)


# ---------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from shared.durations import parse_duration
    from shared.keys import new_key

    params = parse_params(args.param)
    key = parse_key(args.key)
    if args.timeout is not None and not args.timeout.strip():
        raise SpecError("--timeout", "must not be empty (leave --timeout out for no deadline)")
    timeout = parse_duration(args.timeout, "--timeout") if args.timeout is not None else None
    for option in ("mlflow_tracking_uri", "mlflow_experiment", "mlflow_credentials_secret"):
        value = getattr(args, option)
        if value is not None and (not value.strip() or not value.isprintable()):
            raise SpecError("--" + option.replace("_", "-"), "must be non-empty printable text")
    if args.mlflow_credentials_secret and args.backend != "kubernetes":
        raise SpecError("--mlflow-credentials-secret", "only applies with --backend kubernetes")
    args.startup_timeout = parse_duration(args.startup_timeout, "--startup-timeout") if args.startup_timeout else None
    spec = _run_spec(args, params)
    backend = backend_from(args)
    try:
        return asyncio.run(_run(args, backend, spec, key or new_key(), timeout))
    except SpecError as exc:  # the backend's look-up of the uploaded pipeline names the document's field
        if args.pipeline_name is not None and exc.path in _FLAG_OF_FIELD:
            raise SpecError(_FLAG_OF_FIELD[exc.path], exc.detail) from None
        raise


# A run of an uploaded pipeline given by flags: its document's fields are these flags to the user.
_FLAG_OF_FIELD = {"spec.pipelineName": "--pipeline-name", "spec.pipelineVersion": "--pipeline-version"}


def _run_spec(args: argparse.Namespace, params: dict[str, str]):
    """The spec of `run`: the --spec file, or the uploaded pipeline --pipeline-name names."""
    from shared.specs import load_spec
    from shared.specs.builders import uploaded_pipeline_run

    if args.pipeline_name is None:
        if args.pipeline_version is not None:
            raise SpecError("--pipeline-version", "applies with --pipeline-name")
        if args.spec is None:
            raise SpecError("--spec", "required (or, for a pipeline uploaded to KFP, --pipeline-name)")
        return load_spec(args.spec, kind=args.kind, params=params)
    if args.kind != Kind.PIPELINE.value:
        raise SpecError("--pipeline-name", f"runs a KFP pipeline: use `run pipeline`, not `run {args.kind}`")
    if args.spec is not None:
        raise SpecError("--pipeline-name", "give --spec or --pipeline-name, not both (a PipelineRun document "
                        "names an uploaded pipeline with spec.pipelineName)")
    try:
        return uploaded_pipeline_run(args.pipeline_name, version=args.pipeline_version, parameters=params)
    except SpecError as exc:
        raise SpecError(_FLAG_OF_FIELD.get(exc.path, exc.path), exc.detail) from None


async def _run(args: argparse.Namespace, backend, spec, key: str, timeout: float | None) -> int:
    from shared.operations import Outcome, run_async, submit_or_adopt
    from shared.setvalue import defuse, out_parameter_names

    names = out_parameter_names(spec)
    progress = (lambda _m: None) if args.quiet else say
    # DolphinScheduler parses stderr too: with setvalue output no log line of the work may set a parameter.
    shown = defuse if args.output == "setvalue" else str
    log_line = None if args.quiet else (lambda line: print(shown(line), file=sys.stderr, flush=True))

    guards = []
    mlflow = {  # the MLflow hand-off, the same whether the CLI waits or detaches
        "mlflow_tracking_uri": args.mlflow_tracking_uri,
        "upstream_mlflow_run_id": args.mlflow_upstream_run_id,
        "mlflow_experiment": args.mlflow_experiment,
        "credentials_secret": args.mlflow_credentials_secret,
    }

    def submitted(submission) -> None:
        _announce(submission, progress)
        if args.guard and not args.detach:
            from shared.guard import start_guard

            guards.append(start_guard(submission.handle.to_dict(), args.backend, backend_options(args), submission.mlflow))
        if args.output == "setvalue":  # the ids right away, so a killed task still shows what it started
            emit(
                {**submission.handle.to_dict(), "mlflow_run_id": submission.mlflow_run_id}, args.output, names
            )

    if args.detach:
        submission = await asyncio.to_thread(submit_or_adopt, backend, spec, key, **mlflow)
        submitted(submission)
        status = await asyncio.to_thread(backend.status, submission.handle)
        emit(Outcome(submission, status).to_dict(), args.output, names)
        return EXIT_OK

    seen: set[tuple[str, str]] = set()
    seen_problems: set[str] = set()

    def on_status(status) -> None:
        line = status.state.value + (f" ({status.raw_state})" if status.raw_state else "")
        if status.message.startswith("pod ") and status.message not in seen_problems:  # stuck pods: why
            seen_problems.add(status.message)
            seen.add((status.state.value, status.raw_state))
            progress(f"{line}: {status.message}")
        elif (status.state.value, status.raw_state) not in seen:  # outputs-only changes are not news
            seen.add((status.state.value, status.raw_state))
            progress(line)

    cancel_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, cancel_requested.set)
    try:
        outcome = await run_async(
            backend,
            spec,
            key,
            **mlflow,
            timeout=timeout,
            startup_timeout=args.startup_timeout,
            cancel_requested=cancel_requested,
            on_submitted=submitted,
            on_status=on_status,
            on_log=log_line,
        )
    finally:  # we end on purpose (even on an error: a retry adopts): only a kill leaves the guard to cancel
        for guard in guards:
            guard.done()
    status = outcome.status
    if cancel_requested.is_set():
        progress("cancelled on signal")
    if status.message and status.state is not State.SUCCEEDED:
        progress(status.message)
    emit(outcome.to_dict(), args.output, names)
    return EXIT_OK if status.state is State.SUCCEEDED and not outcome.timed_out else EXIT_FAILED


def _announce(submission, progress) -> None:
    handle = submission.handle
    verb = "adopted" if submission.adopted else "submitted"
    progress(
        f"{verb} {handle.resource} {handle.name} as {handle.id} (attempt {handle.attempt}, key {handle.key})"
    )
    if submission.mlflow_run_id:
        progress(f"MLflow run {submission.mlflow_run_id}")


# ---------------------------------------------------------------------------- the other commands


def cmd_status(args: argparse.Namespace) -> int:
    backend = backend_from(args)
    handle = resolve_target(backend, args)
    emit({**handle.to_dict(), **backend.status(handle).to_dict()}, args.output)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    backend = backend_from(args)
    handle = resolve_target(backend, args)
    for line in backend.logs(handle, follow=args.follow):
        print(line, flush=True)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    backend = backend_from(args)
    handle = resolve_target(backend, args)
    emit({**handle.to_dict(), **backend.cancel(handle).to_dict()}, args.output)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    backend = backend_from(args)
    rows = [{**h.to_dict(), "state": backend.status(h).state.value} for h in backend.list()]
    if args.output == "json":
        print(json.dumps(rows), flush=True)
    else:
        for row in rows:
            print(f"{row['id']}\t{row['resource']}\t{row['state']}\t{row['key']}", flush=True)
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "list": cmd_list,
    "promote": cli_promote.cmd_promote,
    "schedule": cli_schedule.cmd_schedule,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Every error is one line on stderr: exit 2 for bad input, 1 for anything else; never a traceback."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, SpecError, NotFound) as exc:
        say(f"error: {_one_line(exc)}")
        return EXIT_USAGE
    except KubeflowTasksError as exc:
        say(f"error: {_one_line(exc)}")
        # an API that refuses our credentials (ApiError 401/403) is the user's to fix, like bad input
        return EXIT_USAGE if _http_status(exc) in (401, 403) or isinstance(exc, Unreachable) else EXIT_FAILED
    except KeyboardInterrupt:
        say("error: interrupted")
        return EXIT_FAILED
    except Exception as exc:
        if _is_bad_endpoint(exc):  # wrong host, or credentials the server refuses: the user's to fix
            say(f"error: {_endpoint_problem(exc)}")
            return EXIT_USAGE  # a bug or an unexpected fault of a library: still one line, no traceback
        say(f"error: unexpected {type(exc).__name__}: {_one_line(exc)}")
        return EXIT_FAILED


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None) or getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _is_bad_endpoint(exc: BaseException) -> bool:
    """An endpoint that cannot be reached after our retries, or that refuses our credentials (401/403)."""
    if _http_status(exc) in (401, 403):
        return True
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(names & {"MaxRetryError", "NewConnectionError", "ConnectionError", "ConnectionRefusedError",
                         "NameResolutionError", "gaierror"})


def _endpoint_problem(exc: BaseException) -> str:
    status = _http_status(exc)
    if status in (401, 403):
        return f"the server refused our credentials (HTTP {status}): check the token, kubeconfig or connection"
    return f"cannot reach the server: {_one_line(exc)}"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _one_line(exc: BaseException) -> str:
    from shared.secrets import redact

    return redact(" ".join(str(exc).split()))[:2000] or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())

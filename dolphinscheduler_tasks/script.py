"""The bash scripts our task types serialise to, built without importing pydolphinscheduler.

DolphinScheduler substitutes `${name}` as TEXT into a Shell task's script before bash runs it
(ParameterUtils.convertParameterPlaceholders), so shell quoting alone cannot protect a value that
arrives from an upstream task: a quote or a newline in it would end the quoting. Every value that is
not plainly safe is therefore written into a quoted here-document (`<<'KFT_<token>'`, nothing inside
is expanded by bash) and read into a variable that is passed as "$VAR". The delimiter carries a
digest of the task's values (the same workflow gives the same definitions, no new version per
submit), and a value that contains it is refused, so a value cannot end the here-document early.
Plainly safe values (letters, digits and `_./:@%+=,-`, no `$`) are written inline: neither bash
nor DolphinScheduler can change them.

The script ends in `exec`, so the CLI is the worker's direct child and receives the worker's
SIGTERM on a timeout (and the SIGINT/SIGTERM of DolphinScheduler 3.4's stop) itself, cancels the
remote work and exits. DolphinScheduler up to 3.3 stops a task with `kill -9` on its whole process
tree, which no process can answer: the CLI runs with `--guard`, whose guard process lives outside
that tree and cancels the work when the CLI dies without finishing (shared/guard.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shared.errors import SpecError

_PLAIN = re.compile(r"[A-Za-z0-9_./:@%+=,-]+")
_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9_ .:/()-]")
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# Read a here-document into the variable named $1, minus the one newline a here-document always ends with.
_READER = """kft_value() {
  IFS= read -r -d '' "$1" || true
  printf -v "$1" '%s' "${!1%$'\\n'}"
}"""


def key_template() -> str:
    """The idempotency key: the workflow instance and the task definition, the same for every retry
    and failover of this task in this workflow instance, so a retry adopts the work already running."""
    return "dolphinscheduler/${system.workflow.instance.id}/${system.task.definition.code}"


# How long a cancel may take: the Kubernetes backend waits up to 60 s for a deleted object to go
# (KubernetesBackend cancel_timeout), plus 15 s for the API calls' retries and the exit.
CANCEL_BOUND_SECONDS = 75.0


def cli_deadline_seconds(timeout_minutes: int) -> int:
    """Our own deadline for a DolphinScheduler timeout of `timeout_minutes`.

    DolphinScheduler's timeout kills the task (state KILL, never retried). Our deadline fires
    earlier, so the CLI cancels the remote work and exits 1 (FAILURE, retried while retries
    remain). The margin leaves room for a whole cancel: 5% of the timeout but at least the cancel
    bound (75 s) and at most 5 min; a timeout too short for that keeps half of it. Should the
    worker still kill the CLI mid-cancel, its guard finishes the cancel.
    """
    total = timeout_minutes * 60
    margin = min(max(total * 0.05, CANCEL_BOUND_SECONDS), 300.0, total / 2)
    return max(1, int(total - margin))


def refuse_passwords(**urls: str | None) -> None:
    """A URL with a password would be stored in clear in the task definition, which every
    DolphinScheduler user of the project can read: credentials belong on the worker."""
    from urllib.parse import urlsplit

    for field_name, url in urls.items():
        if url and urlsplit(url).password:
            raise SpecError(field_name, "holds a password; the script is visible in DolphinScheduler, "
                            "configure credentials on the worker instead")


@dataclass
class ScriptWriter:
    """Accumulates the values to read from here-documents and renders the script.

    The delimiter is derived from those values when the script is rendered (see the module
    docstring), so it is only known then; `read` hands out variable names in the meantime.
    """

    texts: list[str] = field(default_factory=list)

    def value(self, text: str) -> str:
        """A shell word that expands to exactly `text` after DolphinScheduler's substitution."""
        if _PLAIN.fullmatch(text):
            return text
        return f'"{self.read(text)}"'

    def read(self, text: str) -> str:
        """Read `text` (as substituted by DolphinScheduler) into a fresh variable; returns `$NAME`."""
        self.texts.append(text)
        return f"$KFT_{len(self.texts)}"

    def delimiter(self) -> str:
        """`KFT_` and 24 hex digits of the values' digest: the same values give the same delimiter."""
        delimiter = f"KFT_{hashlib.sha256(chr(0).join(self.texts).encode()).hexdigest()[:24]}"
        if any(delimiter in text for text in self.texts):  # a value holding its own digest: never in practice
            raise SpecError("params", "a value contains the here-document delimiter")
        return delimiter

    def render(self, header: str, command: Sequence[str], prelude: Sequence[str] = (), exec_: bool = True) -> str:
        # A comment is still shell: no `$` (DolphinScheduler would substitute) and no line break in it.
        lines = [f"# {_COMMENT_UNSAFE.sub('_', header)}", "# Values are read from quoted here-documents: substituted text is data, never shell."]
        if self.texts:
            end = self.delimiter()
            lines.append(_READER)
            lines += [f"kft_value KFT_{n} <<'{end}'\n{text}\n{end}" for n, text in enumerate(self.texts, 1)]
        lines += prelude
        lines.append(("exec " if exec_ else "") + " \\\n  ".join(command))
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RunOptions:
    """How the CLI reaches the backend and MLflow; None means the CLI's own default."""

    backend: str = "local"
    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    kfp_host: str | None = None
    kfp_token_file: str | None = None
    mlflow_tracking_uri: str | None = None
    upstream_mlflow_run_id: str | None = None
    mlflow_experiment: str | None = None
    cli: str = "kubeflow-tasks"

    def flags(self) -> list[tuple[str, str]]:
        pairs = [("--backend", self.backend)]
        for flag, value in (
            ("--namespace", self.namespace),
            ("--kubeconfig", self.kubeconfig),
            ("--context", self.context),
            ("--kfp-host", self.kfp_host),
            ("--kfp-token-file", self.kfp_token_file),
            ("--mlflow-tracking-uri", self.mlflow_tracking_uri),
            ("--mlflow-upstream-run-id", self.upstream_mlflow_run_id),
            ("--mlflow-experiment", self.mlflow_experiment),
        ):
            if value is not None:
                pairs.append((flag, value))
        return pairs


def run_script(
    kind: str,
    title: str,
    spec_path: str | None,
    spec_json: str | None,
    params: Mapping[str, str],
    options: RunOptions,
    deadline_seconds: int | None,
) -> str:
    """`exec kubeflow-tasks run KIND ...` with every value safely quoted.

    Exactly one of `spec_path` (a file the worker can read) and `spec_json` (the spec itself, written
    to a file in the task's directory first) is given.
    """
    writer = ScriptWriter()
    prelude: list[str] = []
    if spec_json is not None:
        prelude.append(f"printf '%s\\n' \"{writer.read(spec_json)}\" > kubeflow-tasks-spec.json")
        spec_word = "kubeflow-tasks-spec.json"
    else:
        assert spec_path is not None
        spec_word = writer.value(spec_path)
    command = [f"{writer.value(options.cli)} run {kind}", f"--spec {spec_word}"]
    for name, value in params.items():
        if not PARAM_NAME.fullmatch(name):
            raise SpecError("params", f"{name!r} is not a parameter name (letters, digits, _ . -)")
        command.append(f"--param {writer.value(f'{name}={value}')}")
    command.append(f"--key {writer.value(key_template())}")
    command += [f"{flag} {writer.value(value)}" for flag, value in options.flags()]
    if deadline_seconds is not None:
        command.append(f"--timeout {deadline_seconds}s")
    command.append("--output setvalue --guard")
    return writer.render(title, command, prelude)


def summary_script(title: str, rows: Mapping[str, str]) -> str:
    """Print `label: value` lines, values read safely (upstream values are substituted as text)."""
    writer = ScriptWriter()
    words = [f"{writer.value(label)} {writer.value(value)}" for label, value in rows.items()]
    return writer.render(title, ["printf '%s: %s\\n'", *words], exec_=False)

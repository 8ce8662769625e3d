"""The evaluation the user names, run once per model on the same holdout.

The command is argv (never a shell): `{model_uri}` is replaced by the model to judge, which is also in
`$KUBEFLOW_TASKS_MODEL_URI`, and the MLflow hand-off variables point at the tracking server so the
script can load `models:/...` and `runs:/...` URIs. It prints `<metric>=<value>`; the last such line
counts (Katib's StdOut metrics format, the format our trials already use).
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
from collections.abc import Mapping

from shared.errors import BackendError
from shared.mlflow_client import client_defaults
from shared.promotion.spec import MODEL_URI_PLACEHOLDER, PromotionSpec

MODEL_URI_ENV = "KUBEFLOW_TASKS_MODEL_URI"
_TAIL = 2000  # characters of the evaluator's stderr quoted in an error


def metric_value(output: str, metric: str) -> float | None:
    """The last `<metric>=<number>` in the output, or None."""
    pattern = re.compile(rf"(?:^|[\s,;]){re.escape(metric)}\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
    found = None
    for line in output.splitlines():
        for match in pattern.finditer(line):
            found = float(match.group(1))
    return found if found is not None and math.isfinite(found) else None


def evaluate(spec: PromotionSpec, model_uri: str, tracking_uri: str | None) -> float:
    """Run the evaluation for one model; its metric value. BackendError when it fails or prints none."""
    argv = [word.replace(MODEL_URI_PLACEHOLDER, model_uri) for word in spec.evaluate]
    env: Mapping[str, str] = {**client_defaults.environ(), MODEL_URI_ENV: model_uri}
    if tracking_uri:
        env = {**env, "MLFLOW_TRACKING_URI": tracking_uri}
    env = {k: v for k, v in env.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    try:
        # A process group of its own, so a timeout ends everything the script started.
        proc = subprocess.Popen(
            argv,
            cwd=spec.working_dir or None,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise BackendError(f"evaluate: cannot start {argv[0]!r}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(timeout=spec.evaluate_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BackendError(f"evaluate: {model_uri} not judged within {spec.evaluate_timeout:g}s") from None
    except BaseException:  # a signal or Ctrl-C: stop the evaluation with us
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if proc.returncode != 0:
        tail = " ".join((err or out or "").strip()[-_TAIL:].split())
        raise BackendError(f"evaluate: exited {proc.returncode} for {model_uri}: {tail}")
    value = metric_value(out, spec.metric)
    if value is None:
        raise BackendError(f"evaluate: printed no {spec.metric}=<number> for {model_uri}")
    return value

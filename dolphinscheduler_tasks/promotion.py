"""ModelPromotion: the `kubeflow-tasks promote` step as a DolphinScheduler task type.

A Shell task whose script `exec`s the CLI (values read from quoted here-documents, see script.py),
keyed by the workflow instance and task code so a retry registers no second version and decides
once. OUT parameters: model_version, decision (promoted | rejected), champion_version, and
model_name, value, reason. The arguments are checked when the task is defined; the run id is usually
`${mlflow_run_id}`, the training task's OUT parameter, known only on the worker.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import Any

from dolphinscheduler_tasks.script import ScriptWriter, key_template
from dolphinscheduler_tasks.tasks import Shell, _OfflineCodes
from shared.errors import SpecError
from shared.promotion import OUT_PARAMETERS, promotion_spec


def promote_script(
    title: str,
    arguments: Sequence[tuple[str, str]],
    switches: Sequence[str] = (),
    cli: str = "kubeflow-tasks",
    working_dir: str | None = None,
) -> str:
    """`[cd DIR;] exec kubeflow-tasks promote ... --key <instance/task> --output setvalue`, every value quoted."""
    writer = ScriptWriter()
    prelude = [f"cd {writer.value(working_dir)}"] if working_dir else []
    command = [f"{writer.value(cli)} promote", *switches]
    command += [f"{flag} {writer.value(value)}" for flag, value in arguments]
    command.append(f"--key {writer.value(key_template())}")
    command.append("--output setvalue")
    return writer.render(title, command, prelude)


class ModelPromotion(_OfflineCodes, Shell):
    """Register the training run's model in MLflow and move `champion` only if it wins.

    `evaluate`: the evaluation command (a string or argv) with `{model_uri}` in it; it runs on the
    worker and prints `<metric>=<value>`. `run_id`: the training run, usually "${mlflow_run_id}".
    `working_dir`: where the evaluation runs (made absolute here, like a task's spec path; default:
    the task's own directory on the worker). `mlflow_tracking_uri`: the registry (default: the
    worker's $MLFLOW_TRACKING_URI).
    """

    def __init__(
        self,
        name: str,
        *,
        model_name: str,
        run_id: str,
        evaluate: str | Sequence[str],
        metric: str = "rmse",
        greater_is_better: bool = False,
        margin: float | str = 0.0,
        baseline: str = "naive",
        artifact_path: str = "model",
        alias: str = "champion",
        working_dir: str | os.PathLike[str] | None = None,
        mlflow_tracking_uri: str | None = None,
        cli: str = "kubeflow-tasks",
        **kwargs: Any,
    ):
        from urllib.parse import urlsplit

        from pydolphinscheduler.core.parameter import ParameterType

        checked = promotion_spec(  # a stand-in run id when it is a DolphinScheduler reference
            model_name=model_name,
            source_run_id="stand-in" if "${" in run_id else run_id,
            evaluate=evaluate,
            metric=metric,
            greater_is_better=greater_is_better,
            margin=margin,
            baseline=baseline,
            artifact_path=artifact_path,
            alias=alias,
        )
        if mlflow_tracking_uri and urlsplit(mlflow_tracking_uri).password:
            raise SpecError("mlflow_tracking_uri", "holds a password; configure credentials on the worker instead")
        arguments = [
            ("--model-name", checked.model_name),
            ("--run-id", run_id),
            ("--evaluate", shlex.join(checked.evaluate)),
            ("--metric", checked.metric),
            ("--margin", repr(checked.margin)),
            ("--baseline", checked.baseline),
            ("--artifact-path", checked.artifact_path),
            ("--alias", checked.alias),
        ]
        if mlflow_tracking_uri:
            arguments.append(("--mlflow-tracking-uri", mlflow_tracking_uri))
        switches = ["--greater-is-better"] if checked.greater_is_better else []
        folder = os.path.abspath(os.fspath(working_dir)) if working_dir else None
        title = f"kubeflow-tasks promote: DolphinScheduler task {name}"
        script = promote_script(title, arguments, switches, cli, folder)
        outputs = {n: ParameterType.VARCHAR("") for n in OUT_PARAMETERS}
        outputs.update(kwargs.pop("output_params", None) or {})
        super().__init__(name, script, output_params=outputs, **kwargs)

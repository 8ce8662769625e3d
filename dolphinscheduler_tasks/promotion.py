"""ModelPromotion: the `kubeflow-tasks promote` step as a DolphinScheduler task type.

A Shell task whose script `exec`s the CLI (values read from quoted here-documents, see script.py),
keyed by the workflow instance and task code so a retry registers no second version and decides
once. OUT parameters: model_version, decision (promoted | rejected), champion_version, and
model_name, value, reason. The arguments are checked when the task is defined; the run id is usually
`${mlflow_run_id}`, the training task's OUT parameter, known only on the worker.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dolphinscheduler_tasks.script import ScriptWriter, key_template, refuse_passwords
from dolphinscheduler_tasks.tasks import Shell, _OfflineCodes
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
    worker and prints `<metric>=<value>`. Or `evaluate_spec` (+ `evaluate_params`): a TrainingJob
    or PipelineRun file taking `${params.model_uri}`, run as work once per model on `backend` (with
    the cluster options of the other task types); it logs the metric to the MLflow run handed to it. `run_id`: the training run, usually "${mlflow_run_id}".
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
        evaluate: str | Sequence[str] | None = None,
        metric: str = "rmse",
        greater_is_better: bool = False,
        margin: float | str = 0.0,
        baseline: str = "naive",
        artifact_path: str = "model",
        alias: str = "champion",
        working_dir: str | os.PathLike[str] | None = None,
        mlflow_tracking_uri: str | None = None,
        evaluate_spec: str | os.PathLike[str] | None = None,
        evaluate_params: Mapping[str, Any] | None = None,
        backend: str = "local",
        namespace: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        kfp_host: str | None = None,
        kfp_token_file: str | None = None,
        cli: str = "kubeflow-tasks",
        **kwargs: Any,
    ):
        from pydolphinscheduler.core.parameter import ParameterType

        from dolphinscheduler_tasks.script import RunOptions
        from shared.cli_promote import promote_arguments
        from shared.params import texts

        folder = os.path.abspath(os.fspath(working_dir)) if working_dir else None
        values = texts(evaluate_params)
        # DolphinScheduler references are only known on the worker: stand-ins check the rest now.
        checked = promotion_spec(
            model_name=model_name,
            source_run_id="stand-in" if "${" in run_id else run_id,
            evaluate=evaluate,
            metric=metric,
            greater_is_better=greater_is_better,
            margin=margin,
            baseline=baseline,
            artifact_path=artifact_path,
            alias=alias,
            evaluate_spec=os.fspath(evaluate_spec) if evaluate_spec is not None else None,
            evaluate_params={k: ("1" if "${" in v else v) for k, v in values.items()} if values else None,
            working_dir=folder,
        )
        refuse_passwords(mlflow_tracking_uri=mlflow_tracking_uri)
        if values:  # the values as given, references and all
            checked = dataclasses.replace(checked, evaluate_params=values)
        arguments, switches = promote_arguments(checked, run_id)
        if mlflow_tracking_uri:
            arguments.append(("--mlflow-tracking-uri", mlflow_tracking_uri))
        if checked.evaluate_spec:  # where the evaluation runs
            cluster = RunOptions(backend=backend, namespace=namespace, kubeconfig=kubeconfig, context=context,
                                 kfp_host=kfp_host, kfp_token_file=kfp_token_file)
            arguments += cluster.flags()
        title = f"kubeflow-tasks promote: DolphinScheduler task {name}"
        script = promote_script(title, arguments, switches, cli, folder)
        outputs = {n: ParameterType.VARCHAR("") for n in OUT_PARAMETERS}
        outputs.update(kwargs.pop("output_params", None) or {})
        super().__init__(name, script, output_params=outputs, **kwargs)

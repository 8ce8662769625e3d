"""pydolphinscheduler task types for Kubeflow work: KubeflowPipeline, KatibExperiment, PyTorchJob, TFJob.

DolphinScheduler runs only task types with a Java plugin, so these are Shell tasks (taskType SHELL)
whose script `exec`s the `kubeflow-tasks` CLI (see script.py for the quoting). Everything the core
does comes with it: a key from the workflow instance and the task code, so a retry adopts the work
its previous try started; a deadline that fires before DolphinScheduler's own timeout kill, so our
cancel runs and the exit code 1 lets DolphinScheduler retry; cancel on SIGINT/SIGTERM; the MLflow
hand-off; and the results as OUT parameters (`${setValue(...)}` lines printed by the CLI).

The spec is checked when the task is defined, so a bad manifest is a one-line error naming the field
before anything reaches DolphinScheduler.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, ClassVar

from dolphinscheduler_tasks.offline import is_offline, offline_code
from dolphinscheduler_tasks.script import (
    RunOptions,
    cli_deadline_seconds,
    refuse_passwords,
    run_script,
    summary_script,
)
from shared.errors import SpecError
from shared.params import texts
from shared.setvalue import out_parameter_names
from shared.status import Kind


@contextlib.contextmanager
def _quiet_gateway_probe() -> Iterator[None]:
    """pydolphinscheduler probes its Java gateway when imported; with none running, py4j logs an ERROR
    traceback and the SDK warns about versions. Nothing is wrong for offline use, and online calls
    still report their own errors, so the probe is kept quiet."""
    py4j = logging.getLogger("py4j")
    level = py4j.level
    py4j.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using unmatched version of pydolphinscheduler")
            yield
    finally:
        py4j.setLevel(level)


with _quiet_gateway_probe():
    from pydolphinscheduler.core.parameter import ParameterType
    from pydolphinscheduler.tasks.shell import Shell
    from pydolphinscheduler.utils.date import timedelta2timeout

KILLING_STRATEGIES = ("FAILED", "WARNFAILED")


class _OfflineCodes:
    """Task codes without the gateway inside `offline()` (see offline.py)."""

    def gen_code_and_version(self) -> tuple[int, int]:
        if is_offline():
            workflow = self.workflow
            return offline_code(workflow._project if workflow else "", workflow.name if workflow else "", self.name), 1
        return super().gen_code_and_version()


class KubeflowTask(_OfflineCodes, Shell):
    """A Shell task that runs one piece of Kubeflow work through the `kubeflow-tasks` CLI.

    `spec`: a file path (read on the worker; made absolute here) or a mapping (embedded in the
    script). `params`: fill `${params.NAME}` in a manifest or set pipeline parameters; values may
    hold DolphinScheduler references such as `${best_learning_rate}`, substituted on the worker.
    `upstream_mlflow_run_id`: usually "${mlflow_run_id}", the upstream task's OUT parameter.
    `timeout` (minutes or a timedelta) with strategy FAILED (the default) or WARNFAILED also sets the
    CLI's own, slightly earlier deadline; WARN only alerts, so the CLI then waits as long as it takes.
    The other keyword arguments are pydolphinscheduler's (fail_retry_times, worker_group, ...).
    """

    kind: ClassVar[Kind]
    resource: ClassVar[str | None] = None

    def __init__(
        self,
        name: str,
        spec: str | os.PathLike[str] | Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        *,
        backend: str = "local",
        namespace: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        kfp_host: str | None = None,
        kfp_token_file: str | None = None,
        mlflow_tracking_uri: str | None = None,
        upstream_mlflow_run_id: str | None = None,
        mlflow_experiment: str | None = None,
        cli: str = "kubeflow-tasks",
        timeout: int | timedelta | None = None,
        timeout_notify_strategy: str | None = None,
        output_params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        values = texts(params)  # the one rule of shared.params, as the Airflow operators use
        parsed = self._check_spec(spec, values)
        refuse_passwords(mlflow_tracking_uri=mlflow_tracking_uri, kfp_host=kfp_host)
        strategy = timeout_notify_strategy or ("FAILED" if timeout else None)
        minutes = timedelta2timeout(timeout) if isinstance(timeout, timedelta) else timeout
        deadline = cli_deadline_seconds(minutes) if minutes and strategy in KILLING_STRATEGIES else None
        options = RunOptions(
            backend=backend,
            namespace=namespace,
            kubeconfig=kubeconfig,
            context=context,
            kfp_host=kfp_host,
            kfp_token_file=kfp_token_file,
            mlflow_tracking_uri=mlflow_tracking_uri,
            upstream_mlflow_run_id=upstream_mlflow_run_id,
            mlflow_experiment=mlflow_experiment,
            cli=cli,
        )
        is_path = not isinstance(spec, Mapping)
        command = run_script(
            self.kind.value,
            f"kubeflow-tasks run {self.kind.value}: DolphinScheduler task {name}",
            os.path.abspath(os.fspath(spec)) if is_path else None,
            None if is_path else json.dumps(spec, sort_keys=True),
            values,
            options,
            deadline,
        )
        self.out_parameter_names = out_parameter_names(parsed)
        outputs: dict[str, Any] = {n: ParameterType.VARCHAR("") for n in self.out_parameter_names}
        outputs.update(output_params or {})
        super().__init__(
            name,
            command,
            timeout=timeout,
            timeout_notify_strategy=strategy,
            output_params=outputs,
            **kwargs,
        )

    def _check_spec(self, spec: str | os.PathLike[str] | Mapping[str, Any], params: Mapping[str, str]):
        """Parse the spec now: a bad manifest fails here, naming the field. Values that are
        DolphinScheduler references are only known on the worker; a stand-in checks the rest."""
        from shared.specs import load_spec, require_resource

        stand_in = {k: ("1" if "${" in v or "$[" in v else v) for k, v in params.items()}
        return require_resource(load_spec(spec, kind=self.kind, params=stand_in), self.resource, type(self).__name__)


class KubeflowPipeline(KubeflowTask):
    """A Kubeflow Pipelines run: a PipelineRun document or a compiled pipeline YAML; or, instead of
    `spec`, `pipeline_name` a pipeline uploaded to KFP and optionally `pipeline_version` one of its
    versions (default: the newest), as `kfp run submit --pipeline-name` (Kubernetes backend)."""

    kind = Kind.PIPELINE

    def __init__(
        self,
        name: str,
        spec: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        pipeline_name: str | None = None,
        pipeline_version: str | None = None,
        **kwargs: Any,
    ):
        from shared.specs.builders import uploaded_pipeline_manifest

        if (spec is None) == (pipeline_name is None):
            raise SpecError("spec", "give spec or pipeline_name (a pipeline uploaded to KFP), one of them")
        if pipeline_version is not None and pipeline_name is None:
            raise SpecError("pipeline_version", "applies with pipeline_name")
        if pipeline_name is not None:  # the PipelineRun document is embedded in the script like any mapping
            spec = uploaded_pipeline_manifest(pipeline_name, version=pipeline_version)
        super().__init__(name, spec, params, **kwargs)


class KatibExperiment(KubeflowTask):
    """A Katib Experiment; OUT parameters add best_parameters, best_<name> per parameter, best_metrics."""

    kind = Kind.EXPERIMENT


class PyTorchJob(KubeflowTask):
    """A Kubeflow training operator PyTorchJob."""

    kind = Kind.TRAINING_JOB
    resource = "PyTorchJob"


class TFJob(KubeflowTask):
    """A Kubeflow training operator TFJob."""

    kind = Kind.TRAINING_JOB
    resource = "TFJob"


class Summary(_OfflineCodes, Shell):
    """Print `label: value` lines; values may be upstream references, read as data, never as shell."""

    def __init__(self, name: str, rows: Mapping[str, Any], **kwargs: Any):
        text_rows = texts(rows)
        super().__init__(name, summary_script(f"summary: DolphinScheduler task {name}", text_rows), **kwargs)


TASK_TYPES = (KubeflowPipeline, KatibExperiment, PyTorchJob, TFJob, Summary)


def register() -> None:
    """Make `task_type: KatibExperiment` (etc.) resolve in pydolphinscheduler YAML workflows, which
    look task classes up by name in `pydolphinscheduler.tasks.__all__`."""
    from pydolphinscheduler import tasks

    from dolphinscheduler_tasks.promotion import ModelPromotion
    from dolphinscheduler_tasks.schedule import KubeflowRecurringRun

    for cls in (*TASK_TYPES, ModelPromotion, KubeflowRecurringRun):
        setattr(tasks, cls.__name__, cls)
        if cls.__name__ not in tasks.__all__:
            tasks.__all__.append(cls.__name__)



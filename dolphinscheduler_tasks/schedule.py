"""KubeflowRecurringRun: `kubeflow-tasks schedule pipeline` as a DolphinScheduler task type.

A Shell task whose script `exec`s the CLI with every value quoted (see script.py). The key is the
task definition (not the workflow instance): every instance of the workflow applies the same
recurring run, which is what "exactly one per key" is for. The cron is checked when the task is
defined, so a bad one is a one-line error before anything reaches DolphinScheduler.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dolphinscheduler_tasks.script import PARAM_NAME, RunOptions, ScriptWriter
from dolphinscheduler_tasks.tasks import Shell, _OfflineCodes
from shared.errors import SpecError
from shared.params import texts


def schedule_key() -> str:
    """The task definition: the same for every instance and retry of the workflow, and for no other task."""
    return "dolphinscheduler/schedule/${system.task.definition.code}"


class KubeflowRecurringRun(_OfflineCodes, Shell):
    """Keep one KFP recurring run of `spec` on `cron` (or disabled, or deleted) for this task.

    `spec`: a PipelineRun document or compiled pipeline (a file the worker can read). `key`: defaults
    to the task definition code. The cluster options are those of the other task types.
    """

    def __init__(
        self,
        name: str,
        spec: str | os.PathLike[str],
        cron: str | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        max_concurrency: int = 1,
        no_catchup: bool = False,
        disable: bool = False,
        delete: bool = False,
        pipeline_version: str | None = None,
        namespace: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        kfp_host: str | None = None,
        kfp_token_file: str | None = None,
        cli: str = "kubeflow-tasks",
        **kwargs: Any,
    ):
        from shared.backends.kubernetes.recurring import schedule_of
        from shared.specs import load_spec

        schedule_of(cron, max_concurrency, no_catchup, disable, delete)  # the CLI's checks, now, naming our fields
        values = texts(params)  # the one rule of shared.params
        stand_in = {k: ("1" if "${" in v else v) for k, v in values.items()}
        load_spec(spec, kind="pipeline", params=stand_in)
        writer = ScriptWriter()
        command = [f"{writer.value(cli)} schedule pipeline", f"--spec {writer.value(os.path.abspath(os.fspath(spec)))}"]
        if cron:
            command.append(f"--cron {writer.value(cron)}")
        for param, value in values.items():
            if not PARAM_NAME.fullmatch(param):
                raise SpecError("params", f"{param!r} is not a parameter name (letters, digits, _ . -)")
            command.append(f"--param {writer.value(f'{param}={value}')}")
        command.append(f"--key {writer.value(key or schedule_key())}")
        command.append(f"--max-concurrency {max_concurrency}")
        command += [flag for flag, on in (("--no-catchup", no_catchup), ("--disable", disable), ("--delete", delete)) if on]
        if pipeline_version:
            command.append(f"--pipeline-version {writer.value(pipeline_version)}")
        options = RunOptions(backend="kubernetes", namespace=namespace, kubeconfig=kubeconfig, context=context,
                             kfp_host=kfp_host, kfp_token_file=kfp_token_file)
        command += [f"{flag} {writer.value(value)}" for flag, value in options.flags()]
        script = writer.render(f"kubeflow-tasks schedule pipeline: DolphinScheduler task {name}", command)
        super().__init__(name, script, **kwargs)

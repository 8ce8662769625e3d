"""pydolphinscheduler YAML workflows with our task types, with or without a DolphinScheduler.

pydolphinscheduler's own `YamlWorkflow.create_workflow` always submits to the gateway. `load_yaml_workflow`
builds the same Workflow object with the SDK's own parsing (macros such as `$ENV{...}`, `$FILE{...}`,
task lookup by `task_type`) and stops before submitting, so the caller decides: `get_define()` inside
`offline()`, or `submit()` / `run()` against a gateway.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any


def load_yaml_workflow(path: str | os.PathLike[str]) -> Any:
    """The Workflow described by a pydolphinscheduler YAML file (its `run:` key is ignored here)."""
    from pydolphinscheduler.core import yaml_workflow
    from pydolphinscheduler.core.workflow import Workflow

    from dolphinscheduler_tasks.tasks import register

    register()
    parser = yaml_workflow.YamlWorkflow(os.fspath(path))
    params = dict(parser[yaml_workflow.KEY_WORKFLOW])
    params.pop("run", None)
    with Workflow(**parser.parse_params(params)) as workflow, _quiet(yaml_workflow.__file__):
        by_name: dict[str, Any] = {}
        upstreams: dict[str, list[str]] = {}
        for data in parser[yaml_workflow.KEY_TASK]:
            task = parser.parse_task(data, by_name)
            by_name[task.name] = task
            upstreams[task.name] = list(data.get(yaml_workflow.KEY_DEPS, []))
        for name, deps in upstreams.items():
            for dep in deps:
                by_name[dep] >> by_name[name]
    return workflow


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence INFO from pydolphinscheduler's YAML parser while it runs.

    pydolphinscheduler 4.1 calls `logger.info(task_type, task)` in `parse_task`: a message with a
    stray argument, which fails to format (a "Logging error", or an exception under pytest) wherever
    INFO is enabled. Its logger is named after its file path.
    """
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)

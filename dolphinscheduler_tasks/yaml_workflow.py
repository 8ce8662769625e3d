"""pydolphinscheduler YAML workflows with our task types, with or without a DolphinScheduler.

pydolphinscheduler's own `YamlWorkflow.create_workflow` always submits to the gateway. `load_yaml_workflow`
builds the same Workflow object with the SDK's own parsing (macros such as `$ENV{...}`, `$FILE{...}`,
task lookup by `task_type`) and stops before submitting, so the caller decides: `get_define()` inside
`offline()`, or `submit()` / `run()` against a gateway.
"""

from __future__ import annotations

import os
from typing import Any


def load_yaml_workflow(path: str | os.PathLike[str]) -> Any:
    """The Workflow described by a pydolphinscheduler YAML file (its `run:` key is ignored here)."""
    from pydolphinscheduler.core.workflow import Workflow
    from pydolphinscheduler.core.yaml_workflow import KEY_DEPS, KEY_TASK, KEY_WORKFLOW, YamlWorkflow

    from dolphinscheduler_tasks.tasks import register

    register()
    parser = YamlWorkflow(os.fspath(path))
    params = dict(parser[KEY_WORKFLOW])
    params.pop("run", None)
    with Workflow(**parser.parse_params(params)) as workflow:
        by_name: dict[str, Any] = {}
        upstreams: dict[str, list[str]] = {}
        for data in parser[KEY_TASK]:
            task = parser.parse_task(data, by_name)
            by_name[task.name] = task
            upstreams[task.name] = list(data.get(KEY_DEPS, []))
        for name, deps in upstreams.items():
            for dep in deps:
                by_name[dep] >> by_name[name]
    return workflow

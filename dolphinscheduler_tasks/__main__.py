"""`python -m dolphinscheduler_tasks FILE.yaml [--define] [--run]`: a YAML workflow with our task types.

`pydolphinscheduler yaml -f FILE` does not know our task types (it never imports this package); this
does the same after registering them. `--define` prints the definition JSON offline, without a
gateway; otherwise the workflow is submitted (and started with `--run`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from dolphinscheduler_tasks import load_yaml_workflow, offline


def definition(workflow) -> dict:
    """The workflow as DolphinScheduler's JSON: its attributes, task definitions and relations."""
    define = {k: v for k, v in workflow.get_define().items() if k != "tasks"}
    define["schedule"] = workflow.schedule
    define["globalParams"] = workflow.param_json
    return define


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dolphinscheduler_tasks", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="a pydolphinscheduler YAML workflow")
    parser.add_argument("--define", action="store_true", help="print the definition JSON offline, no gateway")
    parser.add_argument("--run", action="store_true", help="start the workflow after submitting it")
    args = parser.parse_args(argv)
    if args.define:
        with offline():
            print(json.dumps(definition(load_yaml_workflow(args.file)), indent=2, sort_keys=True))
        return 0
    workflow = load_yaml_workflow(args.file)
    workflow.run() if args.run else workflow.submit()
    print(f"submitted workflow {workflow.name!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

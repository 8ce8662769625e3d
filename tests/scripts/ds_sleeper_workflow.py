"""Submit a one-task SHELL workflow whose script leaves pid files and sleeps, to watch a real STOP.

Run with the private pydolphinscheduler 3.1 venv (see ds_setvalue_workflow.py). The script writes its own pid,
a child's and a `setsid` child's into --piddir, and prints the `${system.workflow.instance.id}` built-in so the test
can see whether this server substitutes it. Prints {"workflow": CODE} as JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex

from pydolphinscheduler.core.process_definition import ProcessDefinition
from pydolphinscheduler.tasks.shell import Shell


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--piddir", required=True)
    args = parser.parse_args()
    piddir = shlex.quote(args.piddir)
    script = "\n".join(
        [
            "echo 'workflow instance id: ${system.workflow.instance.id}'",
            "setsid sleep 600 &",
            f"echo $! > {piddir}/setsid.pid",
            "sleep 600 &",
            f"echo $! > {piddir}/child.pid",
            f"echo $$ > {piddir}/script.pid",
            f"trap 'echo TERM >> {piddir}/term.log' TERM",
            "wait",
        ]
    )
    with ProcessDefinition(
        name=args.name, project=args.project, tenant=args.tenant, release_state="online"
    ) as workflow:
        Shell(name="sleeper", command=script)
        code = workflow.submit()
    print(json.dumps({"workflow": code}))


if __name__ == "__main__":
    main()

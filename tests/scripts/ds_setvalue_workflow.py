"""Submit a two-task SHELL workflow through pydolphinscheduler 3.1 (the client matching a 3.1 gateway).

Run by the real-stack smoke test with the interpreter of the private client venv that
tests/realstack/dolphinscheduler.py builds (our own venv holds pydolphinscheduler 4.1, which cannot talk to a 3.1
gateway). The gateway address comes from PYDS_JAVA_GATEWAY_ADDRESS/PORT. Prints {"workflow": CODE} as JSON.

`produce` prints `${setValue(x=1)}` at the start of a line (the 3.1 worker only parses it there) and declares x as
an OUT parameter; `consume` runs after it, echoes ${x} (substituted by DolphinScheduler from the upstream varPool)
and re-exports it as its own OUT parameter `seen`, so the test can read both ends from the REST API. It copies ${x}
into a shell variable first: DolphinScheduler leaves a `${...}` nested inside `${setValue(...)}` unsubstituted.
"""

from __future__ import annotations

import argparse
import json

from pydolphinscheduler.core.process_definition import ProcessDefinition
from pydolphinscheduler.tasks.shell import Shell


def out_param(name: str) -> dict:
    return {"prop": name, "direct": "OUT", "type": "VARCHAR", "value": ""}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    with ProcessDefinition(name=args.name, project=args.project, tenant=args.tenant, release_state="online") as wf:
        produce = Shell(name="produce", command="echo '${setValue(x=1)}'", local_params=[out_param("x")])
        consume = Shell(
            name="consume",
            command="X=${x}\necho \"consumed x=$X\"\nprintf '${setValue(seen=%s)}\\n' \"$X\"",
            local_params=[out_param("seen")],
        )
        produce >> consume
        code = wf.submit()
    print(json.dumps({"workflow": code}))


if __name__ == "__main__":
    main()

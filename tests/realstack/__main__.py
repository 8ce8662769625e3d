"""`python -m tests.realstack build|up|down`: build the real test stack, start it, stop it.

    python -m tests.realstack build [--only kubernetes|dolphinscheduler]
    python -m tests.realstack up --state FILE [--only kubernetes|dolphinscheduler]
    python -m tests.realstack down --state FILE

`up` writes FILE (mode 0600) as JSON: kubeconfig, namespace and, when started, the DolphinScheduler
gateway, token, API, user, password and project; plus what it started (pid and start time each), which
is all `down` needs to stop every process, from any shell.
"""

from __future__ import annotations

import argparse
import sys

from . import build as build_module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.realstack")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build what is missing (make testenv)")
    b.add_argument("--only", choices=["kubernetes", "dolphinscheduler"])
    up = sub.add_parser("up", help="start the stack and write its state file")
    up.add_argument("--state", required=True)
    up.add_argument("--only", choices=["kubernetes", "dolphinscheduler"])
    down = sub.add_parser("down", help="stop every process the state file names")
    down.add_argument("--state", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            return build_module.main(["--only", args.only] if args.only else [])
        from . import stack  # the stack's own needs (kubernetes, cryptography, psutil) only from here on

        if args.command == "up":
            state = stack.up(args.state, only=args.only)
            print(f"realstack: up ({', '.join(state['components'])}); state in {args.state}")
            return 0
        stopped = stack.down(args.state)
        print(f"realstack: down ({stopped} processes stopped)")
        return 0
    except (build_module.BuildError, RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"realstack: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

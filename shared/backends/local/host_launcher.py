"""`python -m shared.backends.local.host_launcher [--output PATH]... -- COMMAND...`: a KFP container
component's command, run on this host.

On a cluster KFP's launcher creates the folders of a component's output files before the
container's command runs; this does the same for the paths kfp.local resolved, then becomes the
command (exec), so its exit code and output are the component's own.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    outputs: list[str] = []
    while argv and argv[0] == "--output":
        outputs.append(argv[1])
        argv = argv[2:]
    if not argv or argv[0] != "--" or len(argv) < 2:
        print("usage: host_launcher [--output PATH]... -- COMMAND [ARG]...", file=sys.stderr)
        return 2
    command = argv[1:]
    for path in outputs:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"container command {command[0]!r} cannot run on this host: {exc.strerror or exc}", flush=True)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

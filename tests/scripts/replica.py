"""A replica whose behaviour the test chooses: record itself, wait, fail once, sleep, exit.

Options act in this order:
  --pid-dir DIR     record this process as the file DIR/<pid> (how a test learns what to check)
  --wait-pids N     wait (at most 30 s) until DIR holds N pid files, i.e. N replicas have started
  --fail-once PATH  if PATH does not exist yet: create it and exit with --fail-code (default 1)
  --ignore-term     ignore SIGTERM, so that only SIGKILL ends it
  --sleep S         sleep S seconds
  --exit N          exit with N (default 0)
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--pid-dir")
parser.add_argument("--wait-pids", type=int, default=0)
parser.add_argument("--fail-once")
parser.add_argument("--fail-code", type=int, default=1)
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--exit", type=int, default=0)
args = parser.parse_args()

print(f"start pid={os.getpid()}")
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM")
if args.pid_dir:
    pid_dir = Path(args.pid_dir)
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / f"{os.getpid()}.tmp").write_text(str(os.getpid()))
    (pid_dir / f"{os.getpid()}.tmp").rename(pid_dir / str(os.getpid()))
    deadline = time.monotonic() + 30
    while len([p for p in pid_dir.iterdir() if p.name.isdigit()]) < args.wait_pids:
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for the other replicas")
        time.sleep(0.02)
if args.fail_once and not Path(args.fail_once).exists():
    Path(args.fail_once).touch()
    print(f"failing once with {args.fail_code}")
    sys.exit(args.fail_code)
time.sleep(args.sleep)
print(f"done exit={args.exit}")
sys.exit(args.exit)

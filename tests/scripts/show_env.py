"""Print the operator's variables as one JSON line and write them to a file of its own in --out.

With --wait-count N, wait (at most 30 s) until N files are in --out before exiting, so that a
leader whose success ends the job exits only after every replica has recorded its environment.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

NAMES = (
    "TF_CONFIG",
    "PYTHONUNBUFFERED",
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "FROM_CONTAINER",
    "FROM_CONTEXT",
)

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--wait-count", type=int, default=0)
args = parser.parse_args()

env = {k: v for k, v in os.environ.items() if k in NAMES or k.startswith("PET_")}
print("ENV " + json.dumps(env, sort_keys=True))
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
tmp = out / f"{os.getpid()}.tmp"
tmp.write_text(json.dumps(env))
tmp.rename(out / f"{os.getpid()}.json")
deadline = time.monotonic() + 30
while len(list(out.glob("*.json"))) < args.wait_count:
    if time.monotonic() > deadline:
        sys.exit("timed out waiting for the other replicas")
    time.sleep(0.02)

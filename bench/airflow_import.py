"""What the provider costs the DAG processor: import time of the nightly DAG file vs `airflow.sdk` alone.

Each measurement is a fresh interpreter (`python -c ...`), timed inside it with perf_counter, so
Python's own start-up is excluded and module caches are cold as in a new dag-processor child.
Also reported: which heavy client modules the DAG file imports (should be none), and
`python -X importtime`'s top cumulative entries for the DAG file. Results go to
bench/RESULTS-airflow.md by hand.

Run: `.venv/bin/python bench/airflow_import.py [--repeat N]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("kfp", "kubernetes", "mlflow", "optuna", "torch")
CASES = {
    "import airflow.sdk": "import airflow.sdk",
    "import airflow.sdk + provider operators": "import airflow.sdk; import airflow_provider.operators.kubeflow",
    "DAG file (runpy)": "import runpy; runpy.run_path('dags/commodity_nightly_retraining.py')",
    "reference: import kfp, kubernetes, mlflow": "import kfp, kubernetes, mlflow",
}
TIMED = (
    "import time, sys, json\n"
    "t = time.perf_counter()\n"
    "{code}\n"
    "print(json.dumps({{'seconds': time.perf_counter() - t, 'heavy': [m for m in {heavy!r} if m in sys.modules]}}))\n"
)


def measure(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", TIMED.format(code=code, heavy=HEAVY)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def importtime_rows() -> list[tuple[int, int, int, str]]:
    """(self µs, cumulative µs, nesting depth, module) per module imported while loading the DAG file."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import runpy; runpy.run_path('dags/commodity_nightly_retraining.py')"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, cumulative, raw = line[len("import time:"):].split("|")
        depth = (len(raw) - len(raw.lstrip()) - 1) // 2
        rows.append((int(own), int(cumulative), depth, raw.strip()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {args.repeat} fresh interpreters per case")
    print(f"{'case':45} {'median s':>9} {'min s':>7} {'max s':>7}  heavy modules loaded")
    for label, code in CASES.items():
        runs = [measure(code) for _ in range(args.repeat)]
        seconds = [r["seconds"] for r in runs]
        heavy = sorted({m for r in runs for m in r["heavy"]})
        print(f"{label:45} {statistics.median(seconds):9.3f} {min(seconds):7.3f} {max(seconds):7.3f}  {heavy or 'none'}")
    rows = importtime_rows()
    print("\nlargest top-level imports of the DAG file (python -X importtime, cumulative):")
    for _, cumulative, _, name in sorted((r for r in rows if r[2] == 0), key=lambda r: -r[1])[:6]:
        print(f"  {cumulative / 1e6:7.3f} s  {name}")
    ours = [r for r in rows if r[3].split(".")[0] in ("airflow_provider", "shared")]
    print(f"\nthis project's own modules: {len(ours)}, {sum(r[0] for r in ours) / 1e6:.3f} s of their own (self time)")

if __name__ == "__main__":
    main()

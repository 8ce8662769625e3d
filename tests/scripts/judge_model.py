"""A promotion evaluation for tests: the model's "quality" is a number it carries.

`python judge_model.py MODEL_URI LOG_FILE` downloads the model's artifacts through MLflow (so the
registry really resolves the URI), reads `quality.txt` and prints `rmse=<it>`; `naive` scores
$JUDGE_BASELINE (default 1.0). Every call appends the URI to LOG_FILE. With $JUDGE_HANG set to a
substring of the URI, it writes LOG_FILE.hang and sleeps: the test kills the promotion meanwhile.
"""

import os
import sys
import time
from pathlib import Path

uri, log = sys.argv[1], Path(sys.argv[2])
with log.open("a") as f:
    f.write(uri + "\n")
if os.environ.get("JUDGE_HANG") and os.environ["JUDGE_HANG"] in uri:
    Path(f"{log}.hang").write_text(str(os.getpid()))
    time.sleep(600)
if uri == "naive":
    print(f"rmse={os.environ.get('JUDGE_BASELINE', '1.0')}")
else:
    import mlflow.artifacts

    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    print("some log line", flush=True)
    print(f"rmse={(folder / 'quality.txt').read_text().strip()}")

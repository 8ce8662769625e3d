"""judge_model.py as work: the evaluation of a promotion run as a training job's replica.

`python judge_model_work.py MODEL_URI LOG_FILE HANG` reads the model's quality like judge_model.py
(`naive` scores 1.0) and logs it as `rmse` to the MLflow run handed to the work (MLFLOW_RUN_ID),
printing nothing the promotion reads. Every call appends the URI to LOG_FILE. When HANG is a
substring of the URI it writes LOG_FILE.hang and waits (at most 5 minutes) for LOG_FILE.release.
"""

import os
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

uri, log, hang = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
with log.open("a") as f:
    f.write(uri + "\n")
if hang and hang in uri:
    Path(f"{log}.hang").write_text(str(os.getpid()))
    deadline = time.monotonic() + 300
    while not Path(f"{log}.release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
if uri == "naive":
    value = 1.0
else:
    import mlflow.artifacts

    value = float((Path(mlflow.artifacts.download_artifacts(artifact_uri=uri)) / "quality.txt").read_text())
MlflowClient().log_metric(os.environ["MLFLOW_RUN_ID"], "rmse", value)

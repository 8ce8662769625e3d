"""Judge one commodity model on the holdout: the last 20% of the night's data, the days trial.py and
train_ddp.py validate on. Prints `rmse=<value>` (the promotion's evaluation contract).

    python evaluate.py --data prices.csv --model-uri models:/commodity-forecaster/3
    python evaluate.py --data prices.csv --model-uri naive     # the naive baseline: no change

A model is loaded with MLflow's pytorch flavor (train_ddp.py logs a TorchScript `Forecaster`: rows of
the 7 last prices and the driver in, the next price out); MLFLOW_TRACKING_URI says where from.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys

WINDOW = 7
VALIDATION_FRACTION = 0.2


def holdout(path: str) -> tuple[list[list[float]], list[float]]:
    """(rows, next prices) of the windows in the last 20%: 7 prices and the last day's driver per row."""
    with open(path, newline="") as handle:
        records = list(csv.DictReader(handle))
    prices = [float(r["price"]) for r in records]
    driver = [float(r.get("driver") or 0.0) for r in records]
    rows = [prices[t - WINDOW : t] + [driver[t - 1]] for t in range(WINDOW, len(prices))]
    targets = prices[WINDOW:]
    split = int(len(rows) * (1 - VALIDATION_FRACTION))
    return rows[split:], targets[split:]


def predict(model_uri: str, rows: list[list[float]]) -> list[float]:
    if model_uri == "naive":
        return [row[WINDOW - 1] for row in rows]
    import mlflow.pytorch
    import torch

    model = mlflow.pytorch.load_model(model_uri)
    with torch.no_grad():
        return model(torch.tensor(rows, dtype=torch.float32)).squeeze(1).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CSV with header day,price[,driver]")
    parser.add_argument("--model-uri", required=True, help="an MLflow model URI, or 'naive'")
    args = parser.parse_args(argv)
    rows, targets = holdout(args.data)
    predicted = predict(args.model_uri, rows)
    rmse = math.sqrt(sum((p - t) ** 2 for p, t in zip(predicted, targets, strict=True)) / len(targets))
    print(f"rmse={rmse:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

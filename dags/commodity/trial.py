"""One Katib trial of the commodity demo: a tiny gradient-boosted forecaster of tomorrow's price.

Reads a `day,price,driver` CSV, predicts each price from the 7 before it and the day's driver
(a CSV without the driver column works too), validates on the last 20% of
the days, and prints `rmse=<value>` in Katib's StdOut format every few rounds (so median stop has
steps to judge) and once more at the end. The booster is numpy only: depth-1 stumps on the lag
features, fitted to the residuals with shrinkage `--learning-rate`, `--num-estimators` rounds.

When MLFLOW_RUN_ID is set (the local backend hands each trial its own nested run) and mlflow is
importable, the parameters and the rmse curve are logged to that run with MlflowClient; the run is
left open for whoever created it to end.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

LAGS = 7
REPORT_EVERY = 10


def load_prices(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(prices, driver); the driver is zero when the CSV has no such column."""
    data = np.genfromtxt(path, delimiter=",", names=True)
    if data.dtype.names is None or "price" not in data.dtype.names:
        raise SystemExit(f"{path}: expected a CSV with header day,price[,driver]")
    prices = np.asarray(data["price"], dtype=float)
    driver = np.asarray(data["driver"], dtype=float) if "driver" in data.dtype.names else np.zeros_like(prices)
    return prices, driver


def lag_features(prices: np.ndarray, driver: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features and target of every window of LAGS prices and the price that followed.

    Trees cannot extrapolate a trend, so both sides are relative to the last known price: the
    features are the LAGS previous prices minus it and the driver of the last known day, the
    target is the next price minus it.
    """
    windows = np.lib.stride_tricks.sliding_window_view(prices, LAGS + 1)
    last = windows[:, LAGS - 1]
    driver = np.zeros_like(prices) if driver is None else driver
    known = driver[LAGS - 1 : LAGS - 1 + len(windows)]
    return np.column_stack([windows[:, :LAGS] - last[:, None], known]), windows[:, LAGS] - last


def fit_stump(
    x: np.ndarray, residual: np.ndarray, thresholds: list[np.ndarray]
) -> tuple[int, float, float, float]:
    """The (feature, threshold, left value, right value) stump that most reduces squared error."""
    best = (0, 0.0, 0.0, 0.0)
    best_gain = -1.0
    total, count = residual.sum(), len(residual)
    for feature, cuts in enumerate(thresholds):
        left = x[:, feature][:, None] <= cuts[None, :]
        n_left = left.sum(axis=0)
        valid = (n_left > 0) & (n_left < count)
        if not valid.any():
            continue
        sum_left = residual @ left
        sum_right = total - sum_left
        gain = np.where(
            valid, sum_left**2 / np.maximum(n_left, 1) + sum_right**2 / np.maximum(count - n_left, 1), -1
        )
        k = int(np.argmax(gain))
        if gain[k] > best_gain:
            best_gain = float(gain[k])
            best = (
                feature,
                float(cuts[k]),
                float(sum_left[k] / n_left[k]),
                float(sum_right[k] / (count - n_left[k])),
            )
    return best


def predict_stump(stump: tuple[int, float, float, float], x: np.ndarray) -> np.ndarray:
    feature, threshold, left, right = stump
    return np.where(x[:, feature] <= threshold, left, right)


def rmse(y: np.ndarray, prediction: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - prediction) ** 2)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CSV with header day,price")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--num-estimators", type=int, default=100)
    args = parser.parse_args(argv)

    x, y = lag_features(*load_prices(args.data))
    split = int(len(y) * 0.8)  # the last 20% of the days validate; errors on changes = errors on prices
    x_train, y_train, x_valid, y_valid = x[:split], y[:split], x[split:], y[split:]
    thresholds = [
        np.unique(np.quantile(x_train[:, f], np.linspace(0.05, 0.95, 19))) for f in range(x_train.shape[1])
    ]

    run = mlflow_run()
    if run:
        client, run_id = run
        client.log_param(run_id, "learning_rate", args.learning_rate)
        client.log_param(run_id, "num_estimators", args.num_estimators)

    base = float(y_train.mean())
    fit_train = np.full(len(y_train), base)
    fit_valid = np.full(len(y_valid), base)
    score = rmse(y_valid, fit_valid)
    for step in range(1, args.num_estimators + 1):
        stump = fit_stump(x_train, y_train - fit_train, thresholds)
        fit_train += args.learning_rate * predict_stump(stump, x_train)
        fit_valid += args.learning_rate * predict_stump(stump, x_valid)
        score = rmse(y_valid, fit_valid)
        if step % REPORT_EVERY == 0 and step != args.num_estimators:
            print(f"step={step} rmse={score:.6f}", flush=True)
            if run:
                client.log_metric(run_id, "rmse", score, step=step)
    print(f"rmse={score:.6f}", flush=True)
    if run:
        client.log_metric(run_id, "rmse", score, step=args.num_estimators)
    return 0


def mlflow_run():
    """(MlflowClient, run id) for the run named by MLFLOW_RUN_ID, or None without MLflow."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        print("MLFLOW_RUN_ID is set but mlflow is not installed; not logging", file=sys.stderr)
        return None
    return MlflowClient(), run_id


if __name__ == "__main__":
    sys.exit(main())

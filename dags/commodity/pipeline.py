"""The demo KFP pipeline: a baseline forecast of a synthetic daily commodity price.

prepare_data -> train -> evaluate; the pipeline's output is the test RMSE of a linear
autoregressive model on the last 7 prices. Components are KFP lightweight components: each must be
self-contained (no project imports), so `prepare_data` repeats `dags.commodity.data.synthetic_prices`.
They declare numpy in `packages_to_install` for a cluster image; the local backend runs them with the
packages already installed here. When the run has an MLflow run id and `MLFLOW_TRACKING_URI` is set,
`evaluate` logs `baseline_rmse` to that run.
"""

from kfp import dsl
from kfp.dsl import Input, Model, Output

BASE_IMAGE = "python:3.11"


@dsl.component(base_image=BASE_IMAGE, packages_to_install=["numpy"])
def prepare_data(data_path: str, n_days: int, seed: int) -> int:
    """Write the synthetic series as `day,price,driver` CSV to data_path; the number of rows."""
    import os

    import numpy as np

    # Same generator as dags/commodity/data.py:synthetic_series.
    rng = np.random.default_rng(seed)
    day = np.arange(n_days)
    level = 80.0 + 0.01 * day + 6.0 * np.sin(2 * np.pi * day / 365.25)
    driver = np.zeros(n_days)
    gap = np.zeros(n_days)
    shocks = rng.normal(0.0, 0.6, n_days)
    steps = rng.normal(0.0, 0.3, n_days)
    for t in range(1, n_days):
        driver[t] = 0.8 * driver[t - 1] + shocks[t]
        gap[t] = (1 - 0.15) * gap[t - 1] + 0.8 * driver[t - 1] + steps[t]
    prices = np.round(level + gap + rng.normal(0.0, 0.3, n_days), 4)
    driver = np.round(driver, 4)

    folder = os.path.dirname(os.path.abspath(data_path))
    os.makedirs(folder, exist_ok=True)
    with open(data_path, "w") as f:
        f.write("day,price,driver\n")
        for i, (price, push) in enumerate(zip(prices, driver, strict=True)):
            f.write(f"{i},{price:.4f},{push:.4f}\n")
    print(f"wrote {len(prices)} prices to {data_path}")
    return len(prices)


@dsl.component(base_image=BASE_IMAGE, packages_to_install=["numpy"])
def train(data_path: str, lags: int, model: Output[Model]):
    """Fit price[t] ~ 1 + price[t-lags..t-1] by least squares on the first 80% of the days."""
    import json

    import numpy as np

    prices = np.loadtxt(data_path, delimiter=",", skiprows=1)[:, 1]
    split = int(len(prices) * 0.8)
    if split <= lags + 1:
        raise ValueError(f"need more than {lags + 1} training days, got {split}")
    rows = [np.concatenate(([1.0], prices[t - lags : t])) for t in range(lags, split)]
    coefficients, *_ = np.linalg.lstsq(np.array(rows), prices[lags:split], rcond=None)
    with open(model.path, "w") as f:
        json.dump({"lags": lags, "coefficients": coefficients.tolist()}, f)
    model.metadata["lags"] = lags
    print(f"trained on {split - lags} days: coefficients {np.round(coefficients, 4).tolist()}")


@dsl.component(base_image=BASE_IMAGE, packages_to_install=["numpy"])
def evaluate(data_path: str, model: Input[Model], mlflow_run_id: str) -> float:
    """RMSE of one-step-ahead forecasts on the last 20% of the days (logged to MLflow if handed one)."""
    import json
    import os

    import numpy as np

    with open(model.path) as f:
        fitted = json.load(f)
    lags, coefficients = fitted["lags"], np.array(fitted["coefficients"])
    prices = np.loadtxt(data_path, delimiter=",", skiprows=1)[:, 1]
    split = int(len(prices) * 0.8)
    rows = np.array([np.concatenate(([1.0], prices[t - lags : t])) for t in range(split, len(prices))])
    errors = rows @ coefficients - prices[split:]
    rmse = float(np.sqrt(np.mean(errors**2)))
    print(f"baseline_rmse={rmse:.6f}")

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if mlflow_run_id and tracking_uri:
        try:
            from mlflow import MlflowClient
        except ImportError:
            print("mlflow is not installed: baseline_rmse not logged")
        else:
            # Log to the hand-off run without starting or ending it: its owner ends it.
            MlflowClient(tracking_uri).log_metric(mlflow_run_id, "baseline_rmse", rmse)
    return rmse


@dsl.pipeline(
    name="commodity-baseline", description="Baseline AR(7) forecast of a synthetic commodity price."
)
def commodity_pipeline(data_path: str, n_days: int = 730, seed: int = 7, mlflow_run_id: str = "") -> float:
    prepared = prepare_data(data_path=data_path, n_days=n_days, seed=seed)
    trained = train(data_path=data_path, lags=7).after(prepared)
    return evaluate(data_path=data_path, model=trained.outputs["model"], mlflow_run_id=mlflow_run_id).output

"""The demo's synthetic daily commodity series: structure a model can learn, and noise it cannot.

price[t] = level[t] + gap[t] + noise, where
- level: a slow upward trend and a yearly cycle (seasonality);
- gap: the distance from the level, pulled back by 15% a day (mean reversion) and pushed by
  yesterday's `driver`, an exogenous index published daily (think inventories or weather) that
  follows an AR(1) process of its own;
- noise: day-to-day measurement noise.

Predicting "no change" (the naive baseline) ignores the pull and the push, so a model that sees the
last prices and the driver beats it. The CSV has the columns `day,price,driver`. The pipeline's
`prepare_data` component carries a copy of this code (a KFP lightweight component cannot import the
project); the demo's tests check that both produce the same series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REVERSION = 0.15  # share of the gap to the level closed each day
PUSH = 0.8  # price change per unit of yesterday's driver


def synthetic_series(n_days: int = 730, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(prices, driver), both rounded to 4 decimals."""
    rng = np.random.default_rng(seed)
    day = np.arange(n_days)
    level = 80.0 + 0.01 * day + 6.0 * np.sin(2 * np.pi * day / 365.25)
    driver = np.zeros(n_days)
    gap = np.zeros(n_days)
    shocks = rng.normal(0.0, 0.6, n_days)
    steps = rng.normal(0.0, 0.3, n_days)
    for t in range(1, n_days):
        driver[t] = 0.8 * driver[t - 1] + shocks[t]
        gap[t] = (1 - REVERSION) * gap[t - 1] + PUSH * driver[t - 1] + steps[t]
    prices = level + gap + rng.normal(0.0, 0.3, n_days)
    return np.round(prices, 4), np.round(driver, 4)


def synthetic_prices(n_days: int = 730, seed: int = 7) -> np.ndarray:
    """The prices alone."""
    return synthetic_series(n_days, seed)[0]


def write_prices_csv(path: str | Path, n_days: int = 730, seed: int = 7) -> int:
    """Write `day,price,driver` rows to `path` (creating its folder); the number of rows written."""
    prices, driver = synthetic_series(n_days, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("day,price,driver\n")
        for day, (price, push) in enumerate(zip(prices, driver, strict=True)):
            f.write(f"{day},{price:.4f},{push:.4f}\n")
    return len(prices)

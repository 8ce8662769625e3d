"""The demo's synthetic daily commodity price series: trend + yearly seasonality + noise.

The pipeline's `prepare_data` component carries a copy of this code (a KFP lightweight component
cannot import the project); the demo's tests check that both produce the same series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_prices(n_days: int = 730, seed: int = 7) -> np.ndarray:
    """Daily prices: a slow upward trend, a yearly cycle, a random walk and day-to-day noise."""
    rng = np.random.default_rng(seed)
    day = np.arange(n_days)
    trend = 80.0 + 0.01 * day
    season = 6.0 * np.sin(2 * np.pi * day / 365.25)
    walk = np.cumsum(rng.normal(0.0, 0.3, n_days))
    noise = rng.normal(0.0, 0.8, n_days)
    return np.round(trend + season + walk + noise, 4)


def write_prices_csv(path: str | Path, n_days: int = 730, seed: int = 7) -> int:
    """Write `day,price` rows to `path` (creating its folder); the number of rows written."""
    prices = synthetic_prices(n_days, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("day,price\n")
        for day, price in enumerate(prices):
            f.write(f"{day},{price:.4f}\n")
    return len(prices)

"""Katib's suggestion algorithms, run in-process with the libraries Katib's suggestion services use.

Each suggester keeps state between calls, as Katib's long-lived suggestion services do, and is fed the
whole trial history every time (the experiment runner owns it). Values are Katib-style strings: ints
as integers, doubles as Python's shortest float repr, list parameters as the list element.

| algorithmName        | backed by                                   | settings honoured                         |
|----------------------|---------------------------------------------|-------------------------------------------|
| random, tpe          | hyperopt (a Trials object rebuilt from history, as Katib's hyperopt service) | random_state; gamma, prior_weight, n_EI_candidates |
| grid                 | optuna GridSampler                          | seed (random_state)                       |
| multivariate-tpe     | optuna TPESampler(multivariate=True)        | n_startup_trials, n_ei_candidates, seed   |
| bayesianoptimization | scikit-optimize Optimizer                   | base_estimator, n_initial_points, acq_func, acq_optimizer, random_state |
| cmaes                | optuna CmaEsSampler (Katib: goptuna)        | random_state, sigma, restart_strategy     |
| sobol                | optuna QMCSampler(qmc_type="sobol")         | random_state                              |
| hyperband            | Katib's own bracket schedule                | r_l, eta, resource_name                   |

`suggest` returns [] when nothing can be suggested now: the search space is exhausted (grid, the
last hyperband bracket) or, for hyperband, the current rung is still running. The runner tells the
two apart by whether trials are still active.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.backends.local.suggestions.base import (
    EARLY_STOPPED,
    FAILED,
    KILLED,
    METRICS_UNAVAILABLE,
    OBSERVED_STATES,
    RUNNING,
    SUCCEEDED,
    Suggester,
    TrialRecord,
    format_value,
)
from shared.backends.local.suggestions.hyperband import HyperbandSuggester
from shared.backends.local.suggestions.hyperopt_suggester import HyperoptSuggester
from shared.backends.local.suggestions.optuna_suggester import _cmaes, _grid, _multivariate_tpe, _sobol
from shared.backends.local.suggestions.skopt_suggester import SkoptSuggester
from shared.errors import SpecError
from shared.specs.model import ExperimentSpec

__all__ = [
    "EARLY_STOPPED",
    "FAILED",
    "KILLED",
    "METRICS_UNAVAILABLE",
    "OBSERVED_STATES",
    "RUNNING",
    "SUCCEEDED",
    "Suggester",
    "TrialRecord",
    "format_value",
    "make_suggester",
]


def make_suggester(spec: ExperimentSpec) -> Suggester:
    """The suggester for `spec.algorithm`; raises SpecError for settings or parameters it cannot honour."""
    factory = _FACTORIES.get(spec.algorithm.name)
    if factory is None:
        raise SpecError(
            "spec.algorithm.algorithmName",
            f"'{spec.algorithm.name}' is not available locally; expected one of {', '.join(sorted(_FACTORIES))}",
        )
    return factory(spec)


_FACTORIES: dict[str, Callable[[ExperimentSpec], Suggester]] = {
    "random": HyperoptSuggester,
    "tpe": HyperoptSuggester,
    "grid": _grid,
    "multivariate-tpe": _multivariate_tpe,
    "bayesianoptimization": SkoptSuggester,
    "cmaes": _cmaes,
    "sobol": _sobol,
    "hyperband": HyperbandSuggester,
}

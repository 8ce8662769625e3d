"""grid, multivariate-tpe, cmaes and sobol through one optuna study each, as Katib's optuna service."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from shared.backends.local.suggestions.base import (
    RUNNING,
    Suggester,
    TrialRecord,
    _bounds,
    _distribution,
    _float_in,
    _int_at_least,
    _key,
    _maximize,
    _one_of,
    _require_distributions,
    _settings,
    _tidy,
    format_value,
)
from shared.errors import SpecError
from shared.specs.model import ExperimentSpec, ParameterSpec


class OptunaSuggester:
    """ask/tell on one optuna study, as Katib's optuna suggestion service does.

    A finished trial is told once (its objective when observed, else FAIL). `limit` caps the number
    of asks: the grid size, after which the search space is exhausted. The grid sampler is never told:
    it only needs the asked trials to avoid repeats, and its `after_trial` calls `study.stop()`, which
    optuna refuses outside `optimize()`.
    """

    def __init__(
        self,
        spec: ExperimentSpec,
        sampler: Any,
        distributions: Mapping[str, Any],
        *,
        limit: int | None = None,
        tell: bool = True,
    ):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._spec = spec
        self._study = optuna.create_study(
            sampler=sampler, direction="maximize" if _maximize(spec) else "minimize"
        )
        self._distributions = dict(distributions)
        self._limit = limit
        self._tell_results = tell
        self._asked = 0
        self._numbers: dict[str, list[int]] = {}
        self._told: set[str] = set()

    def suggest(self, history: Sequence[TrialRecord], count: int) -> list[dict[str, str]]:
        if self._tell_results:
            self._tell(history)
        out = []
        for _ in range(count):
            if self._limit is not None and self._asked >= self._limit:
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = self._study.ask(fixed_distributions=self._distributions)
            self._asked += 1
            values = {p.name: self._format(p, trial.params[p.name]) for p in self._spec.parameters}
            self._numbers.setdefault(_key(values), []).append(trial.number)
            out.append(values)
        return out

    def _format(self, param: ParameterSpec, value: Any) -> str:
        if param.parameter_type == "double" and param.step:
            value = _tidy(float(value))
        return format_value(param, value)

    def _tell(self, history: Sequence[TrialRecord]) -> None:
        from optuna.trial import TrialState

        for record in history:
            if record.state == RUNNING or record.name in self._told:
                continue
            numbers = self._numbers.get(_key(record.assignments))
            if not numbers:
                continue  # not suggested by this study (e.g. a resumed experiment): nothing to tell
            self._told.add(record.name)
            number = numbers.pop(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if record.observed:
                    self._study.tell(number, record.objective)
                else:
                    self._study.tell(number, state=TrialState.FAIL)


def _optuna_distributions(spec: ExperimentSpec) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    _require_distributions(spec, ("uniform", "logUniform"), "optuna")
    out: dict[str, Any] = {}
    for i, param in enumerate(spec.parameters):
        if param.parameter_type in ("categorical", "discrete"):
            out[param.name] = CategoricalDistribution(list(param.list))
            continue
        low, high = _bounds(param, i)
        log = _distribution(param) == "logUniform"
        if log and low <= 0:
            raise SpecError(f"spec.parameters[{i}].feasibleSpace.min", "logUniform needs min > 0")
        if log and param.step:
            raise SpecError(
                f"spec.parameters[{i}].feasibleSpace.step", "optuna cannot combine a step with logUniform"
            )
        if param.parameter_type == "int":
            out[param.name] = IntDistribution(int(low), int(high), log=log, step=int(param.step or 1))
        else:
            out[param.name] = FloatDistribution(
                low, high, log=log, step=float(param.step) if param.step else None
            )
    return out


def _grid(spec: ExperimentSpec) -> Suggester:
    """Katib's grid: ints by step (default 1), doubles by their required step, lists as they are."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    conf = _settings(spec, {"seed": _int_at_least(0), "random_state": _int_at_least(0)})
    seed = conf.get("seed", conf.get("random_state"))
    grid: dict[str, list[Any]] = {}
    distributions: dict[str, Any] = {}
    for i, param in enumerate(spec.parameters):
        if param.parameter_type in ("categorical", "discrete"):
            grid[param.name] = list(param.list)
            distributions[param.name] = CategoricalDistribution(list(param.list))
            continue
        low, high = _bounds(param, i)
        if param.parameter_type == "int":
            grid[param.name] = list(range(int(low), int(high) + 1, int(param.step or 1)))
            distributions[param.name] = IntDistribution(int(low), int(high))
            continue
        if not param.step or float(param.step) <= 0:
            raise SpecError(
                f"spec.parameters[{i}].feasibleSpace.step", "grid needs a positive step for double parameters"
            )
        step = float(param.step)
        count = int(math.floor((high - low) / step + 1e-9)) + 1
        grid[param.name] = [_tidy(low + k * step) for k in range(count)]
        distributions[param.name] = FloatDistribution(low, high)
    size = math.prod(len(values) for values in grid.values())
    sampler = optuna.samplers.GridSampler(grid, seed=seed)
    return OptunaSuggester(spec, sampler, distributions, limit=size, tell=False)


def _multivariate_tpe(spec: ExperimentSpec) -> Suggester:
    import optuna

    conf = _settings(
        spec,
        {
            "n_startup_trials": _int_at_least(0),
            "n_ei_candidates": _int_at_least(1),
            "seed": _int_at_least(0),
            "random_state": _int_at_least(0),
        },
    )
    if "random_state" in conf:
        conf["seed"] = conf.pop("random_state")
    distributions = _optuna_distributions(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate is "experimental" in optuna
        sampler = optuna.samplers.TPESampler(multivariate=True, constant_liar=True, **conf)
    return OptunaSuggester(spec, sampler, distributions)


def _cmaes(spec: ExperimentSpec) -> Suggester:
    import optuna

    conf = _settings(
        spec,
        {
            "random_state": _int_at_least(0),
            "sigma": _float_in(0.0, math.inf),
            "restart_strategy": _one_of("none", "None", "ipop", "bipop"),
        },
    )
    strategy = conf.get("restart_strategy", "none")
    if strategy.lower() != "none":
        index = [name for name, _ in spec.algorithm.settings].index("restart_strategy")
        raise SpecError(
            f"spec.algorithm.algorithmSettings[{index}].value",
            f"restart_strategy '{strategy}' is not available locally (optuna's CmaEsSampler dropped restarts "
            "in 4.4); use none",
        )
    continuous = [p for p in spec.parameters if p.parameter_type in ("double", "int")]
    if len(continuous) < 2:
        raise SpecError("spec.parameters", "cmaes needs two or more int/double parameters")
    distributions = _optuna_distributions(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sigma0 is deprecated (still honoured) in optuna 4.9+
        sampler = optuna.samplers.CmaEsSampler(
            seed=conf.get("random_state"), sigma0=conf.get("sigma"), warn_independent_sampling=False
        )
    return OptunaSuggester(spec, sampler, distributions)


def _sobol(spec: ExperimentSpec) -> Suggester:
    import optuna

    conf = _settings(spec, {"random_state": _int_at_least(0)})
    distributions = _optuna_distributions(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QMCSampler is "experimental" in optuna
        sampler = optuna.samplers.QMCSampler(
            qmc_type="sobol", seed=conf.get("random_state"), warn_independent_sampling=False
        )
    return OptunaSuggester(spec, sampler, distributions)

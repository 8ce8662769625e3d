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

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import SpecError
from shared.specs.model import ExperimentSpec, ParameterSpec

# Katib trial conditions.
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
KILLED = "Killed"
EARLY_STOPPED = "EarlyStopped"
METRICS_UNAVAILABLE = "MetricsUnavailable"
OBSERVED_STATES = (SUCCEEDED, EARLY_STOPPED)  # Katib's Trial.convert feeds only these to algorithms


@dataclass(frozen=True)
class TrialRecord:
    """What an algorithm may learn from one trial."""

    name: str
    assignments: Mapping[str, str]
    objective: float | None
    state: (
        str  # a Katib trial condition: Running, Succeeded, Failed, Killed, EarlyStopped, MetricsUnavailable
    )

    @property
    def observed(self) -> bool:
        return self.state in OBSERVED_STATES and self.objective is not None


class Suggester(Protocol):
    def suggest(self, history: Sequence[TrialRecord], count: int) -> list[dict[str, str]]: ...


def make_suggester(spec: ExperimentSpec) -> Suggester:
    """The suggester for `spec.algorithm`; raises SpecError for settings or parameters it cannot honour."""
    factory = _FACTORIES.get(spec.algorithm.name)
    if factory is None:
        raise SpecError(
            "spec.algorithm.algorithmName",
            f"'{spec.algorithm.name}' is not available locally; expected one of {', '.join(sorted(_FACTORIES))}",
        )
    return factory(spec)


# ---------------------------------------------------------------- shared helpers


def _settings(spec: ExperimentSpec, schema: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """Algorithm settings converted by `schema`; unknown names and bad values are SpecErrors."""
    out: dict[str, Any] = {}
    for i, (name, value) in enumerate(spec.algorithm.settings):
        if name not in schema:
            raise SpecError(
                f"spec.algorithm.algorithmSettings[{i}].name",
                f"unknown setting '{name}' for {spec.algorithm.name}; expected one of {', '.join(schema)}",
            )
        try:
            out[name] = schema[name](value)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"spec.algorithm.algorithmSettings[{i}].value", f"{name}: {exc}") from None
    return out


def _int_at_least(low: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        number = int(value)
        if number < low:
            raise ValueError(f"expected an integer >= {low}, got {value!r}")
        return number

    return convert


def _float_in(low: float, high: float, *, closed: bool = False) -> Callable[[str], float]:
    def convert(value: str) -> float:
        number = float(value)
        inside = low <= number <= high if closed else low < number < high
        if not inside:
            raise ValueError(
                f"expected a number in {'[' if closed else '('}{low}, {high}{']' if closed else ')'}"
            )
        return number

    return convert


def _one_of(*choices: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return convert


def _bounds(param: ParameterSpec, index: int) -> tuple[float, float]:
    try:
        low, high = float(param.min), float(param.max)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(f"spec.parameters[{index}].feasibleSpace", "expected numeric min and max") from None
    if low > high:
        raise SpecError(
            f"spec.parameters[{index}].feasibleSpace", f"min {param.min} is greater than max {param.max}"
        )
    return low, high


def _distribution(param: ParameterSpec) -> str:
    return param.distribution or "uniform"


def _require_distributions(spec: ExperimentSpec, supported: Sequence[str], library: str) -> None:
    for i, param in enumerate(spec.parameters):
        if param.parameter_type in ("double", "int") and _distribution(param) not in supported:
            raise SpecError(
                f"spec.parameters[{i}].feasibleSpace.distribution",
                f"'{param.distribution}' is not supported by {spec.algorithm.name} ({library}); "
                f"expected {' or '.join(supported)}",
            )


def _tidy(value: float) -> float:
    """Stepped doubles (min + k*step) without float noise such as 0.30000000000000004."""
    return float(f"{value:.12g}")


def format_value(param: ParameterSpec, value: Any) -> str:
    """A parameter value as Katib writes it into a trial's parameterAssignments."""
    if param.parameter_type == "int":
        return str(int(round(float(value))))
    if param.parameter_type == "double":
        return repr(float(value))
    return str(value)


def _key(assignments: Mapping[str, str]) -> str:
    return ",".join(f"{k}:{assignments[k]}" for k in sorted(assignments))


def _maximize(spec: ExperimentSpec) -> bool:
    return spec.objective.type == "maximize"


# ---------------------------------------------------------------- hyperopt: random, tpe


class HyperoptSuggester:
    """random and tpe through hyperopt, as Katib's hyperopt suggestion service drives it.

    Every call rebuilds a `hyperopt.Trials` from the observed history (Katib inserts one trial doc per
    completed trial, loss negated for maximize) and asks `tpe.suggest`/`rand.suggest` for new ids.
    Like Katib, tpe uses `n_startup_jobs` = the number of trials requested.
    """

    def __init__(self, spec: ExperimentSpec):
        import hyperopt
        import numpy as np

        self._spec = spec
        self._tpe = spec.algorithm.name == "tpe"
        schema: dict[str, Callable[[str], Any]] = {"random_state": _int_at_least(0)}
        if self._tpe:
            schema |= {
                "gamma": _float_in(0.0, 1.0),
                "prior_weight": _float_in(0.0, math.inf),
                "n_EI_candidates": _int_at_least(1),
            }
        self._conf = _settings(spec, schema)
        self._rng = np.random.default_rng(self._conf.pop("random_state", None))
        space = {p.name: self._dimension(p, i) for i, p in enumerate(spec.parameters)}
        self._domain = hyperopt.Domain(None, space, pass_expr_memo_ctrl=None)

    @staticmethod
    def _dimension(param: ParameterSpec, index: int) -> Any:
        from hyperopt import hp

        name = param.name
        if param.parameter_type in ("categorical", "discrete"):
            return hp.choice(name, list(param.list))
        low, high = _bounds(param, index)
        step = float(param.step) if param.step else None
        dist = _distribution(param)
        if dist == "uniform":
            if step:
                return hp.quniform(name, low, high, step)
            return (
                hp.uniformint(name, low, high)
                if param.parameter_type == "int"
                else hp.uniform(name, low, high)
            )
        if dist in ("logUniform", "logNormal") and low <= 0:
            raise SpecError(f"spec.parameters[{index}].feasibleSpace.min", f"{dist} needs min > 0")
        if dist == "logUniform":
            args = (math.log(low), math.log(high))
            return hp.qloguniform(name, *args, step) if step else hp.loguniform(name, *args)
        # Katib reads a normal distribution as min..max = mu ± 3 sigma.
        if dist == "normal":
            mu, sigma = (low + high) / 2, (high - low) / 6
            return hp.qnormal(name, mu, sigma, step) if step else hp.normal(name, mu, sigma)
        if dist == "logNormal":
            mu, sigma = (math.log(low) + math.log(high)) / 2, (math.log(high) - math.log(low)) / 6
            return hp.qlognormal(name, mu, sigma, step) if step else hp.lognormal(name, mu, sigma)
        raise SpecError(
            f"spec.parameters[{index}].feasibleSpace.distribution", f"unknown distribution '{dist}'"
        )

    def suggest(self, history: Sequence[TrialRecord], count: int) -> list[dict[str, str]]:
        import hyperopt

        trials = self._trials(history)
        out = []
        for tid in trials.new_trial_ids(count):
            seed = int(self._rng.integers(2**31 - 1))
            if self._tpe:
                docs = hyperopt.tpe.suggest(
                    [tid], self._domain, trials, seed, n_startup_jobs=count, verbose=False, **self._conf
                )
            else:
                docs = hyperopt.rand.suggest([tid], self._domain, trials, seed)
            out.append(self._convert(docs[0]["misc"]["vals"]))
        return out

    def _trials(self, history: Sequence[TrialRecord]) -> Any:
        import hyperopt

        trials = hyperopt.Trials()
        docs = []
        for record in history:
            vals = self._vals(record) if record.observed else None
            if vals is None:
                continue
            (tid,) = trials.new_trial_ids(1)
            loss = -record.objective if _maximize(self._spec) else record.objective  # type: ignore[operator]
            misc = {
                "tid": tid,
                "cmd": self._domain.cmd,
                "workdir": self._domain.workdir,
                "idxs": {name: [tid] for name in vals},
                "vals": vals,
            }
            docs += trials.new_trial_docs(
                tids=[tid],
                specs=[{"trial-name": record.name}],
                results=[{"loss": loss, "status": "ok"}],
                miscs=[misc],
            )
        for doc in docs:
            doc["state"] = hyperopt.JOB_STATE_DONE
        if docs:
            trials.insert_trial_docs(docs)
            trials.refresh()
        return trials

    def _vals(self, record: TrialRecord) -> dict[str, list[Any]] | None:
        """hyperopt's view of a trial's assignments (list parameters by index), or None if it cannot say."""
        vals: dict[str, list[Any]] = {}
        for param in self._spec.parameters:
            value = record.assignments.get(param.name)
            if value is None:
                return None
            if param.parameter_type in ("categorical", "discrete"):
                if value not in param.list:
                    return None
                vals[param.name] = [param.list.index(value)]
            else:
                vals[param.name] = [int(value) if param.parameter_type == "int" else float(value)]
        return vals

    def _convert(self, vals: Mapping[str, Sequence[Any]]) -> dict[str, str]:
        out = {}
        for param in self._spec.parameters:
            value = vals[param.name][0]
            if param.parameter_type in ("categorical", "discrete"):
                value = param.list[int(value)]
            elif param.step:
                value = _tidy(float(value))
            out[param.name] = format_value(param, value)
        return out


# ---------------------------------------------------------------- optuna: grid, multivariate-tpe, cmaes, sobol


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


# ---------------------------------------------------------------- scikit-optimize: bayesianoptimization


class SkoptSuggester:
    """bayesianoptimization through `skopt.Optimizer`, told each observed trial once (loss negated for maximize)."""

    def __init__(self, spec: ExperimentSpec):
        import skopt

        conf = _settings(
            spec,
            {
                "base_estimator": _one_of("GP", "RF", "ET", "GBRT"),
                "n_initial_points": _int_at_least(1),
                "acq_func": _one_of("gp_hedge", "LCB", "EI", "PI"),
                "acq_optimizer": _one_of("auto", "sampling", "lbfgs"),
                "random_state": _int_at_least(0),
            },
        )
        _require_distributions(spec, ("uniform", "logUniform"), "scikit-optimize")
        dimensions = []
        for i, param in enumerate(spec.parameters):
            if param.parameter_type in ("categorical", "discrete"):
                dimensions.append(skopt.space.Categorical(list(param.list), name=param.name))
                continue
            low, high = _bounds(param, i)
            prior = "log-uniform" if _distribution(param) == "logUniform" else "uniform"
            if param.parameter_type == "int":
                dimensions.append(skopt.space.Integer(int(low), int(high), prior=prior, name=param.name))
            else:
                dimensions.append(skopt.space.Real(low, high, prior=prior, name=param.name))
        self._spec = spec
        self._optimizer = skopt.Optimizer(
            dimensions,
            base_estimator=conf.get("base_estimator", "GP"),
            n_initial_points=conf.get("n_initial_points", 10),
            acq_func=conf.get("acq_func", "gp_hedge"),
            acq_optimizer=conf.get("acq_optimizer", "auto"),
            random_state=conf.get("random_state"),
        )
        self._told: set[str] = set()

    def suggest(self, history: Sequence[TrialRecord], count: int) -> list[dict[str, str]]:
        points, losses = [], []
        for record in history:
            if record.observed and record.name not in self._told:
                self._told.add(record.name)
                points.append([self._value(p, record.assignments[p.name]) for p in self._spec.parameters])
                losses.append(-record.objective if _maximize(self._spec) else record.objective)
        if points:
            self._optimizer.tell(points, losses)
        if count <= 0:
            return []
        asked = self._optimizer.ask(n_points=count)
        return [
            {p.name: format_value(p, v) for p, v in zip(self._spec.parameters, point, strict=True)}
            for point in asked
        ]

    @staticmethod
    def _value(param: ParameterSpec, value: str) -> Any:
        if param.parameter_type == "int":
            return int(value)
        if param.parameter_type == "double":
            return float(value)
        return value


# ---------------------------------------------------------------- hyperband (Katib's own)


def _eta(value: str) -> int:
    """Katib reads eta as int(float(v)) and replaces a value <= 0 by 3; 1 would never halve."""
    eta = int(float(value))
    if eta == 1:
        raise ValueError("expected eta >= 2")
    return eta if eta > 0 else 3


class HyperbandSuggester:
    """Katib's hyperband: brackets s = s_max .. 0 of successive halving on `resource_name`.

    s_max = int(log(r_l) / log(eta)). Bracket s starts n = ceil((s_max+1) * eta^s / (s+1)) random
    configurations with resource int(r), r = r_l * eta^-s; rung i+1 keeps the best ceil(n_i / eta) of
    rung i (n_i = ceil(n * eta^-i)) and runs them with resource int(r * eta^(i+1)), until i = s.
    A rung starts only when every trial of the previous one has finished.
    """

    def __init__(self, spec: ExperimentSpec):
        conf = _settings(spec, {"r_l": _float_in(0.0, math.inf), "eta": _eta, "resource_name": str})
        for required in ("r_l", "resource_name"):
            if required not in conf:
                raise SpecError("spec.algorithm.algorithmSettings", f"hyperband needs the setting {required}")
        if conf["resource_name"] not in {p.name for p in spec.parameters}:
            raise SpecError(
                "spec.algorithm.algorithmSettings",
                f"resource_name '{conf['resource_name']}' is not a parameter",
            )
        _require_distributions(spec, ("uniform", "logUniform"), "hyperband")
        for i, param in enumerate(spec.parameters):
            if param.parameter_type in ("double", "int"):
                _bounds(param, i)
        self._eta = conf.get("eta", 3)
        self._r_l = conf["r_l"]
        self._resource = conf["resource_name"]
        self._s_max = int(math.log(self._r_l) / math.log(self._eta))
        needed = int(math.ceil(self._eta**self._s_max))
        if spec.parallel_trial_count < needed:
            raise SpecError(
                "spec.parallelTrialCount", f"hyperband with these settings needs at least {needed}"
            )
        self._spec = spec
        self._s = self._s_max + 1  # "before the first bracket"
        self._i = self._s
        self._n = 0
        self._r = 0.0
        self._queue: list[dict[str, str]] = []
        self._rung_start = 0
        self._rung_size = 0

    def suggest(self, history: Sequence[TrialRecord], count: int) -> list[dict[str, str]]:
        if not self._queue:
            self._advance(history)
        taken, self._queue = self._queue[:count], self._queue[count:]
        return taken

    def _advance(self, history: Sequence[TrialRecord]) -> None:
        """Fill the queue with the next rung once the current one has finished (or leave it empty)."""
        rung = list(history[self._rung_start : self._rung_start + self._rung_size])
        if len(rung) < self._rung_size or any(r.state == RUNNING for r in rung):
            return
        while not self._queue and self._s >= 0:
            if self._i < self._s and rung:
                n_i = math.ceil(self._n * self._eta ** (-self._i))
                keep = math.ceil(n_i / self._eta)
                observed = sorted(
                    (r for r in rung if r.observed), key=lambda r: r.objective, reverse=_maximize(self._spec)
                )[:keep]
                self._i += 1
                resource = str(int(self._r * self._eta**self._i))
                self._queue = [{**r.assignments, self._resource: resource} for r in observed]
            else:
                self._s -= 1
                if self._s < 0:
                    return
                self._i = 0
                self._n = math.ceil((self._s_max + 1) * self._eta**self._s / (self._s + 1))
                self._r = self._r_l * self._eta ** (-self._s)
                self._queue = [self._sample(str(int(self._r))) for _ in range(self._n)]
            rung = []
        self._rung_start, self._rung_size = len(history), len(self._queue)

    def _sample(self, resource: str) -> dict[str, str]:
        import numpy as np

        rng = np.random.default_rng()
        out = {}
        for i, param in enumerate(self._spec.parameters):
            if param.name == self._resource:
                out[param.name] = resource
            elif param.parameter_type in ("categorical", "discrete"):
                out[param.name] = param.list[int(rng.integers(len(param.list)))]
            else:
                low, high = _bounds(param, i)
                if _distribution(param) == "logUniform":
                    value = math.exp(rng.uniform(math.log(low), math.log(high)))
                elif param.parameter_type == "int":
                    value = int(rng.integers(int(low), int(high) + 1))
                else:
                    value = rng.uniform(low, high)
                out[param.name] = format_value(param, value)
        return out


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

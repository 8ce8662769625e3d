"""bayesianoptimization through scikit-optimize, as Katib's skopt suggestion service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.backends.local.suggestions.base import (
    TrialRecord,
    _bounds,
    _distribution,
    _int_at_least,
    _maximize,
    _one_of,
    _require_distributions,
    _settings,
    format_value,
)
from shared.specs.model import ExperimentSpec, ParameterSpec


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

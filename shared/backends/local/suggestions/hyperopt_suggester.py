"""random and tpe through hyperopt, as Katib's hyperopt suggestion service drives it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shared.backends.local.suggestions.base import (
    TrialRecord,
    _bounds,
    _distribution,
    _float_in,
    _int_at_least,
    _maximize,
    _settings,
    _tidy,
    format_value,
)
from shared.errors import SpecError
from shared.specs.model import ExperimentSpec, ParameterSpec


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

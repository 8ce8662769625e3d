"""hyperband: Katib's own bracket schedule of successive halving."""

from __future__ import annotations

import math
from collections.abc import Sequence

from shared.backends.local.suggestions.base import (
    RUNNING,
    TrialRecord,
    _bounds,
    _distribution,
    _float_in,
    _maximize,
    _require_distributions,
    _settings,
    format_value,
)
from shared.errors import SpecError
from shared.specs.model import ExperimentSpec


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

"""Katib's median-stop rule (the medianstop suggestion service and the metrics collector's check).

When a trial starts and at least `min_trials_required` trials have succeeded, its rule value is the
mean over those trials of the average of their first `start_step` objective reports (Katib calls it
the median). The trial is EarlyStopped once it has reported the objective `start_step` times and
its best value so far is worse than that value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import SpecError
from shared.specs.model import ExperimentSpec


@dataclass(frozen=True)
class MedianStop:
    min_trials_required: int = 3
    start_step: int = 4

    @classmethod
    def from_spec(cls, spec: ExperimentSpec) -> MedianStop | None:
        """The rule of `spec.earlyStopping`, or None without one; Katib's defaults 3 and 4."""
        stopping = spec.early_stopping
        if stopping is None:
            return None
        if stopping.name != "medianstop":
            raise SpecError("spec.earlyStopping.algorithmName", f"expected medianstop, got {stopping.name!r}")
        try:
            return cls(int(stopping.setting("min_trials_required", "3")), int(stopping.setting("start_step", "4")))
        except ValueError:
            raise SpecError("spec.earlyStopping.algorithmSettings", "expected integer settings") from None

    def rule_value(self, succeeded: Sequence[Sequence[float]]) -> float | None:
        """From the objective reports of the succeeded trials: the value a new trial must beat, or None."""
        averages = [sum(v[: self.start_step]) / len(v[: self.start_step]) for v in succeeded if v]
        if len(averages) < self.min_trials_required:
            return None
        return sum(averages) / len(averages)

    def should_stop(self, values: Sequence[float], rule_value: float, maximize: bool) -> bool:
        """Whether a trial with these objective reports is to be EarlyStopped."""
        if len(values) < self.start_step:
            return False
        best = max(values) if maximize else min(values)
        return best < rule_value if maximize else best > rule_value

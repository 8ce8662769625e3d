"""Katib's StdOut metrics collection, fed one output line at a time.

Katib's collector (`file-metricscollector.go`) skips lines that mention no metric name, runs every
filter regex (`metricsFormat`, else the default) over the line, and keeps each match whose first
group is a wanted metric name and whose second group is the value. A value that is not a number is
dropped here (Katib would store it and fail to parse it later).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"


@dataclass
class MetricSummary:
    """Katib's observation of one metric: min, max and latest of every reported value."""

    min: float = math.inf
    max: float = -math.inf
    latest: float = math.nan

    def add(self, value: float) -> None:
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.latest = value

    def value(self, strategy: str) -> float:
        """The value Katib extracts with a metric strategy (min, max or latest)."""
        return {"min": self.min, "max": self.max}.get(strategy, self.latest)

    def to_dict(self) -> dict[str, float]:
        return {"min": self.min, "max": self.max, "latest": self.latest}


@dataclass
class MetricsCollector:
    """Collects `metric_names` (the objective first) from output lines."""

    metric_names: Sequence[str]
    formats: Sequence[str] = ()
    metrics: dict[str, MetricSummary] = field(default_factory=dict)
    objective_values: list[float] = field(default_factory=list)  # every objective report, in order

    def __post_init__(self) -> None:
        self._filters = [re.compile(f) for f in (self.formats or [DEFAULT_FILTER])]

    @property
    def objective_name(self) -> str:
        return self.metric_names[0]

    def feed(self, line: str) -> list[tuple[str, float]]:
        """Record the metrics of one line; returns them (name, value) in the order found."""
        if not any(name in line for name in self.metric_names):
            return []
        found = []
        for regex in self._filters:
            for match in regex.finditer(line):
                if len(match.groups()) < 2:
                    continue
                name, raw = match.group(1).strip(), (match.group(2) or "").strip()
                value = self.record(name, raw)
                if value is not None:
                    found.append((name, value))
        return found

    def record(self, name: str, raw: str) -> float | None:
        """Record one reported value of a wanted metric (any collector); the number, or None."""
        if name not in self.metric_names:
            return None
        try:
            value = float(raw)
        except ValueError:
            return None
        self.metrics.setdefault(name, MetricSummary()).add(value)
        if name == self.objective_name:
            self.objective_values.append(value)
        return value

    def value(self, name: str, strategy: str) -> float | None:
        summary = self.metrics.get(name)
        return None if summary is None else summary.value(strategy)

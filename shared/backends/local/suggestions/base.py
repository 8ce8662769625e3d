"""What every suggester shares: Katib's trial conditions, the trial record, the protocol, and
the helpers that read algorithm settings and feasible spaces the way Katib's services do."""

from __future__ import annotations

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

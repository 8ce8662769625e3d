"""The promotion rule, apart from MLflow: beat the champion by the margin, and beat the baseline."""

from __future__ import annotations

from dataclasses import dataclass

PROMOTED, REJECTED = "promoted", "rejected"


@dataclass(frozen=True)
class Verdict:
    decision: str  # PROMOTED or REJECTED
    reason: str


def _better(a: float, b: float, greater_is_better: bool, margin: float = 0.0) -> bool:
    return a - margin > b if greater_is_better else a + margin < b


def decide(
    metric: str,
    value: float,
    baseline: float,
    champion: float | None,
    *,
    greater_is_better: bool = False,
    margin: float = 0.0,
    champion_version: str | None = None,
) -> Verdict:
    """Promote when the challenger beats the baseline and (if there is one) the champion by more than `margin`."""
    cmp, worse = (">", "<=") if greater_is_better else ("<", ">=")
    if not _better(value, baseline, greater_is_better):
        return Verdict(REJECTED, f"{metric} {value:.6g} {worse} baseline {baseline:.6g}: no better than the baseline")
    if champion is None:
        return Verdict(PROMOTED, f"first champion: {metric} {value:.6g} {cmp} baseline {baseline:.6g}")
    who = f"champion v{champion_version}" if champion_version else "champion"
    if _better(value, champion, greater_is_better, margin):
        return Verdict(
            PROMOTED,
            f"{metric} {value:.6g} beats {who} {champion:.6g} by more than {margin:g} and baseline {baseline:.6g}",
        )
    return Verdict(
        REJECTED, f"{metric} {value:.6g} does not beat {who} {champion:.6g} by more than {margin:g}"
    )

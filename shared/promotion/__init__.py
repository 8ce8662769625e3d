"""Model registry and promotion: the night's model becomes a registered version, and `champion` only if it wins.

    spec = promotion_spec(model_name="commodity-forecaster", source_run_id=run_id,
                          evaluate="python evaluate.py --data prices.csv --model-uri {model_uri}")
    decision = promote(spec, key, tracking_uri)   # -> Decision (decision, versions, values, reason)

See `registry` for the idempotency rules and `decision` for the rule itself. Importing this package
does not import mlflow.
"""

from shared.promotion.decision import PROMOTED, REJECTED, decide
from shared.promotion.registry import Decision, promote
from shared.promotion.spec import PromotionSpec, from_mapping, promotion_spec

OUT_PARAMETERS = (
    "model_name",
    "model_version",
    "decision",
    "champion_version",
    "previous_champion_version",
    "value",
    "champion_value",
    "baseline_value",
    "reason",
)

__all__ = [
    "OUT_PARAMETERS",
    "PROMOTED",
    "REJECTED",
    "Decision",
    "PromotionSpec",
    "decide",
    "from_mapping",
    "promote",
    "promotion_spec",
]

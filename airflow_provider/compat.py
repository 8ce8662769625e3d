"""Airflow 3.0 and newer: where the Task SDK names live, and which newer features this Airflow has.

The names come from the common-compat provider (`airflow.providers.common.compat.sdk`), which looks
in the newest location first (`airflow.sdk`, `airflow.sdk.exceptions`, `airflow.sdk.configuration`)
and falls back to where Airflow 3.0 keeps them. The feature flags say what only newer releases do;
the provider uses a feature when present and logs one line when it is absent.
"""

from __future__ import annotations

from airflow import __version__ as AIRFLOW_VERSION
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowNotFoundException,
    BaseHook,
    BaseOperator,
    BaseOperatorLink,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


AIRFLOW_MINOR = _version(AIRFLOW_VERSION)  # (3, 0) for 3.0.6
# A deferred task's trigger gets `on_kill` when the user marks the task failed or success or clears
# it (apache/airflow#65590); before 3.3 only the deadline cancels deferred work.
TRIGGER_ON_KILL = AIRFLOW_MINOR >= (3, 3)

__all__ = [
    "AIRFLOW_MINOR",
    "AIRFLOW_VERSION",
    "TRIGGER_ON_KILL",
    "AirflowException",
    "AirflowNotFoundException",
    "BaseHook",
    "BaseOperator",
    "BaseOperatorLink",
    "BaseSensorOperator",
    "PokeReturnValue",
    "conf",
]

"""The normalised view of remote work that every backend and adapter shares."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class State(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


class Kind(enum.StrEnum):
    """The three kinds of work; the value is what the CLI calls it."""

    PIPELINE = "pipeline"
    EXPERIMENT = "experiment"
    TRAINING_JOB = "training-job"


@dataclass(frozen=True)
class Handle:
    """Enough to find remote work again from any process: it serialises to plain JSON.

    `id` is the backend's identity of the object (a local run id, a CR name, a KFP run id).
    """

    backend: str
    kind: Kind
    id: str
    key: str
    attempt: int = 1
    name: str = ""
    namespace: str | None = None
    url: str | None = None
    resource: str | None = None  # e.g. "PyTorchJob", "TFJob", "Experiment", "PipelineRun"

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "kind": self.kind.value,
            "id": self.id,
            "key": self.key,
            "attempt": self.attempt,
            "name": self.name,
            "namespace": self.namespace,
            "url": self.url,
            "resource": self.resource,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Handle:
        return cls(
            backend=data["backend"],
            kind=Kind(data["kind"]),
            id=data["id"],
            key=data["key"],
            attempt=int(data.get("attempt", 1)),
            name=data.get("name", ""),
            namespace=data.get("namespace"),
            url=data.get("url"),
            resource=data.get("resource"),
        )


@dataclass(frozen=True)
class Status:
    """Where the work is now.

    `raw_state` is the backend's own word (a KFP RuntimeState, a CR condition type);
    `outputs` holds results such as pipeline outputs, the best trial, a job's replica counts.
    """

    state: State
    raw_state: str = ""
    message: str = ""
    outputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "raw_state": self.raw_state,
            "message": self.message,
            "outputs": dict(self.outputs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Status:
        return cls(
            state=State(data["state"]),
            raw_state=data.get("raw_state", ""),
            message=data.get("message", ""),
            outputs=dict(data.get("outputs") or {}),
        )

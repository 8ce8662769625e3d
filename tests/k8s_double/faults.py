"""Fault injection for the double's HTTP APIs.

Two ways in: a random rate over a mix of kinds (the acceptance test's "20% of requests fail"), and
deterministic one-shot faults for tests that want a specific failure on a specific request. Every
kind is what a client really meets in front of an API server:

- "500", "503": an error response before the request is processed.
- "429": Too Many Requests with `Retry-After: 1` (seconds), before processing.
- "reset": the TCP connection is reset without a response. At random, half the mutating requests
  (POST/PUT/PATCH/DELETE) are processed *before* the reset, so the client cannot know whether its
  create happened: the case idempotent submission exists for. "reset-after" forces that variant.
- "watch-cut": a watch stream is cut mid-stream (no chunked terminator) after a couple of events,
  or a followed pod log after its first piece.
- "410": a watch answers with an ERROR event carrying a 410 Expired Status (watches only: a log
  stream has no resourceVersion to expire).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

ALL_KINDS = ("500", "503", "429", "reset", "watch-cut", "410")
STREAM_ONLY = {"watch-cut": ("watch", "follow"), "410": ("watch",)}  # kind -> the streams it can hit
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class _Injection:
    kind: str
    count: int
    path_contains: str | None


class Faults:
    """Decides, per request, whether and how it fails. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rate = 0.0
        self._kinds: tuple[str, ...] = ALL_KINDS
        self._rng = random.Random(0)
        self._injections: list[_Injection] = []
        self.injected: list[tuple[str, str, str]] = []  # (kind, method, path) of every fault served

    def configure(self, rate: float = 0.0, kinds: tuple[str, ...] | list[str] = ALL_KINDS, seed: int = 0) -> None:
        """Fail `rate` of the requests at random with one of `kinds` (reproducible by `seed`)."""
        unknown = set(kinds) - set(ALL_KINDS) - {"reset-after"}
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        with self._lock:
            self._rate = rate
            self._kinds = tuple(kinds)
            self._rng = random.Random(seed)

    def inject(self, kind: str, count: int = 1, path_contains: str | None = None) -> None:
        """The next `count` requests whose path (with query) contains `path_contains` fail with `kind`."""
        if kind not in ALL_KINDS and kind != "reset-after":
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._injections.append(_Injection(kind, count, path_contains))

    def clear(self) -> None:
        with self._lock:
            self._rate = 0.0
            self._injections.clear()

    def pick(self, method: str, path: str, stream: str | None) -> str | None:
        """The fault for this request (`stream`: "watch", "follow" or None), or None; a random "reset"
        may become "reset-after"."""
        with self._lock:
            kind = self._pick_injected(path, stream)
            if kind is None:
                kind = self._pick_random(stream)
                if kind == "reset" and method in MUTATING and self._rng.random() < 0.5:
                    kind = "reset-after"
            if kind:
                self.injected.append((kind, method, path))
            return kind

    @staticmethod
    def _fits(kind: str, stream: str | None) -> bool:
        return kind not in STREAM_ONLY or stream in STREAM_ONLY[kind]

    def _pick_injected(self, path: str, stream: str | None) -> str | None:
        for inj in self._injections:
            if inj.path_contains is not None and inj.path_contains not in path:
                continue
            if not self._fits(inj.kind, stream):
                continue
            inj.count -= 1
            if inj.count <= 0:
                self._injections.remove(inj)
            return inj.kind
        return None

    def _pick_random(self, stream: str | None) -> str | None:
        if self._rate <= 0 or self._rng.random() >= self._rate:
            return None
        kinds = [k for k in self._kinds if self._fits(k, stream)]
        return self._rng.choice(kinds) if kinds else None

"""Backends run the work somewhere; see `base.Backend` for the protocol every backend implements."""

from __future__ import annotations

from shared.backends.base import Backend, SubmitContext
from shared.errors import SpecError

BACKEND_NAMES = ("local", "kubernetes")


def get_backend(name: str = "local", **options) -> Backend:
    """Build a backend by name; heavy client libraries load only when the backend is used."""
    if name == "local":
        from shared.backends.local import LocalBackend

        return LocalBackend(**options)
    if name == "kubernetes":
        try:
            from shared.backends.kubernetes import KubernetesBackend  # type: ignore[import-not-found]
        except ImportError as exc:  # pragma: no cover - arrives with the Kubernetes backend
            raise SpecError("backend", f"the kubernetes backend is not available here ({exc})") from exc
        return KubernetesBackend(**options)
    raise SpecError("backend", f"expected one of {', '.join(BACKEND_NAMES)}, got {name!r}")


__all__ = ["Backend", "SubmitContext", "get_backend", "BACKEND_NAMES"]

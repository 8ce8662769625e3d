"""Error types shared by specs, backends, operations and adapters.

The split matters to every caller: a `SpecError` is the user's to fix (exit code 2, nothing was
submitted), a `TransientError` may be retried, and a `WorkFailed` means the remote work ran and failed.
"""

from __future__ import annotations


class KubeflowTasksError(Exception):
    """Base class of every error this project raises on purpose."""


class SpecError(KubeflowTasksError, ValueError):
    """Bad input, found before anything was submitted.

    The message is one line: ``<field path>: <what was expected>``.
    """

    def __init__(self, path: str, message: str):
        self.path = path
        self.detail = message
        text = f"{path}: {message}" if path else message
        super().__init__(" ".join(text.split()))


class KeyConflict(SpecError):
    """The key already names other work (another kind, or another spec still running or succeeded)."""


class BackendError(KubeflowTasksError):
    """The backend could not do what was asked (not a transient fault)."""


class ApiError(BackendError):
    """An HTTP API refused a request: one line for people, the status and body for the code.

    Client-library exceptions (kubernetes, kfp_server_api) print their response headers and a
    multi-line body; this carries only the server's own message, so it can reach a user as is.
    """

    def __init__(self, message: str, status: int, body: str = "", headers: dict[str, str] | None = None):
        super().__init__(" ".join(message.split()))
        self.status = status
        self.body = body
        self.headers = headers or {}


class TransientError(BackendError):
    """A fault worth retrying: connection trouble, 429, 5xx."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Unreachable(TransientError):
    """An endpoint still out of reach after the retries: a wrong host or port is the user's to fix."""


class NotFound(BackendError):
    """The run or object asked for does not exist."""


class DeadlineExceeded(KubeflowTasksError):
    """The task's own deadline passed; the remote work has been cancelled (`status` is its end)."""

    def __init__(self, message: str, status: object = None):
        super().__init__(message)
        self.status = status

"""KubeflowRunSensor: waits on a run or job that something else started, by remote id or by key.

It never cancels that work (not on timeout, not on kill): it did not start it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider.compat import BaseSensorOperator, PokeReturnValue, conf
from airflow_provider.connection import DEFAULT_CONN_ID
from airflow_provider.hooks.kubeflow import KubeflowHook
from airflow_provider.operators.base import raise_for_status

if TYPE_CHECKING:
    from airflow.sdk import Context

    from shared.status import Handle, Status


class KubeflowRunSensor(BaseSensorOperator):
    """Succeed when the work succeeded; fail when it failed or was cancelled.

    :param remote_id: the backend id (a KFP run id, a CR name, a local run id). Templated.
    :param key: or the key it was submitted under (its newest attempt). Templated.
    :param kind: pipeline, experiment or training-job (narrows a lookup by key).
    """

    template_fields = ("remote_id", "key")

    def __init__(
        self,
        *,
        remote_id: str | None = None,
        key: str | None = None,
        kind: str | None = None,
        kubeflow_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if bool(remote_id) == bool(key):
            raise ValueError("remote_id: give either remote_id or key")
        self.remote_id = remote_id
        self.key = key
        self.kind = kind
        self.kubeflow_conn_id = kubeflow_conn_id
        self.deferrable = deferrable

    def _find(self) -> tuple[Any, Handle | None]:
        from shared.errors import NotFound
        from shared.status import Kind

        backend = KubeflowHook(self.kubeflow_conn_id).get_conn()
        if self.remote_id:
            try:
                return backend, backend.get(self.remote_id)
            except NotFound:
                return backend, None
        wanted = Kind(self.kind) if self.kind else None
        handle = backend.find(self.key, wanted)  # the key's work, whatever its kind
        return backend, handle if handle is None or wanted in (None, handle.kind) else None

    def _result(self, handle: Handle, status: Status) -> dict[str, Any]:
        raise_for_status(handle, status)
        return {**handle.to_dict(), **status.to_dict()}

    def poke(self, context: Context) -> PokeReturnValue | bool:
        backend, handle = self._find()
        if handle is None:
            self.log.info("nothing found yet for %s", self.remote_id or f"key {self.key!r}")
            return False
        status = backend.status(handle)
        self.log.info("%s %s: %s %s", handle.resource, handle.id, status.state.value, status.raw_state)
        if not status.terminal:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._result(handle, status))

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        backend, handle = self._find()
        if handle is None or backend.status(handle).terminal:
            return super().execute(context)  # not there yet, or already done: poke as usual
        from airflow_provider.triggers.kubeflow import KubeflowRunTrigger

        self.defer(
            trigger=KubeflowRunTrigger(handle=handle.to_dict(), kubeflow_conn_id=self.kubeflow_conn_id, cancel_on_kill=False),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        from airflow_provider.compat import AirflowException
        from shared.status import Handle, Status

        if event["status"] is None:
            raise AirflowException(f"waiting failed: {event['message']}")
        return self._result(Handle.from_dict(event["handle"]), Status.from_dict(event["status"]))

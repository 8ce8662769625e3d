"""KubeflowHook: turns a `kubeflow` connection into a backend of the core.

`kubeflow_default` need not exist: without it the hook means the embedded local backend, so a DAG
runs on a laptop with no set-up and on a cluster by adding the connection. Any other missing
connection id is an error (a typo must not silently run the work on the worker).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider.compat import (
    ASYNC_CONNECTION_LOOKUP,
    AirflowNotFoundException,
    BaseHook,
    amask_secret,
    in_trigger,
)
from airflow_provider.connection import (
    CONN_TYPE,
    DEFAULT_CONN_ID,
    FIELDS,
    ConnectionOptions,
    ui_field_behaviour,
)

if TYPE_CHECKING:
    from shared.backends.base import Backend


class KubeflowHook(BaseHook):
    """Connection options and the backend they describe.

    :param kubeflow_conn_id: the `kubeflow` connection (default `kubeflow_default`, else local).
    """

    conn_name_attr = "kubeflow_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Kubeflow"

    def __init__(self, kubeflow_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kubeflow_conn_id = kubeflow_conn_id

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The form fields for Airflow before 3.2 (3.2+ reads `conn-fields` from the provider info)."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, StringField

        widgets: dict[str, Any] = {}
        for name, (label, _text, schema) in FIELDS.items():
            if "boolean" in schema["type"]:
                widgets[name] = BooleanField(lazy_gettext(label), default=False)
            else:
                widgets[name] = StringField(lazy_gettext(label), widget=BS3TextFieldWidget())
        return widgets

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return ui_field_behaviour()

    @cached_property
    def options(self) -> ConnectionOptions:
        return self._read_options()

    def _read_options(self) -> ConnectionOptions:
        try:
            conn = self.get_connection(self.kubeflow_conn_id)
        except AirflowNotFoundException:
            if self.kubeflow_conn_id != DEFAULT_CONN_ID:
                raise
            return ConnectionOptions()
        return self.options_from(conn)

    async def aoptions(self) -> ConnectionOptions:
        """`options` for triggers, which must neither block the event loop nor call the Task SDK's
        synchronous API from it (see `airflow_provider.compat`)."""
        if not ASYNC_CONNECTION_LOOKUP:  # Airflow before 3.3: the synchronous calls, as 3.0 allows them
            return await in_trigger(self._read_options)
        try:
            conn = await self.aget_connection(self.kubeflow_conn_id)
        except AirflowNotFoundException:
            if self.kubeflow_conn_id != DEFAULT_CONN_ID:
                raise
            return ConnectionOptions()
        options = self.parse(conn)
        for secret in options.secrets():
            await amask_secret(secret)
        return options

    @staticmethod
    def parse(conn: Any) -> ConnectionOptions:
        return ConnectionOptions.parse(host=conn.host, password=conn.password, extra=conn.extra_dejson)

    @classmethod
    def options_from(cls, conn: Any) -> ConnectionOptions:
        """Parse a connection and register its secrets with Airflow's log masker."""
        from airflow.sdk.log import mask_secret

        options = cls.parse(conn)
        for secret in options.secrets():
            mask_secret(secret)
        return options

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test" button and `airflow connections test`: reach the backend (the cluster's
        custom resources and, when configured, the KFP API) with this connection's credentials.

        The answer is one line, and never holds the connection's secrets.
        """
        options = None
        try:
            options = self.options
            backend = self.backend_for(options)
            found = backend.list()
        except Exception as exc:  # the reason, for a person reading the form
            status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
            if isinstance(status, int) and reason:  # a client's ApiException: its first line is "(401)"
                message = f"{type(exc).__name__}: HTTP {status} {reason}"
            else:
                message = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            for secret in options.secrets() if options else ():
                message = message.replace(secret, "***")
            return False, message
        where = f"KFP at {options.kfp_host} and the cluster" if options.kfp_host else f"the {backend.name} backend"
        return True, f"reached {where}: {len(found)} runs and jobs of kubeflow-tasks visible"

    def get_conn(self) -> Backend:
        return self.backend_for(self.options)

    @staticmethod
    def backend_for(options: ConnectionOptions) -> Backend:
        from shared.backends import get_backend

        return get_backend(options.backend, **options.backend_options())

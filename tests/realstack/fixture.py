"""pytest fixtures for the real test stack (marker `real`).

`real_kubernetes` starts the real control plane and training operator once per session (or uses the
stack a state file names: `KUBEFLOW_TASKS_REALSTACK_STATE=FILE` after `python -m tests.realstack up
--state FILE`, for a fast edit-test loop) and stops what it started at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import stack


@dataclass
class RealKubernetes:
    """The running stack as tests use it: kubeconfig, namespace, an API client, etcd's address."""

    state: dict[str, Any]

    @property
    def kubeconfig(self) -> str:
        return self.state["kubeconfig"]

    @property
    def namespace(self) -> str:
        return self.state["namespace"]

    @property
    def server(self) -> str:
        return self.state["kubernetes"]["server"]

    @property
    def etcd(self) -> str:
        return self.state["kubernetes"]["etcd"]

    @property
    def ca(self) -> str:
        return self.state["kubernetes"]["ca"]

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(self.kubeconfig)


@pytest.fixture(scope="session")
def _real_stack_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    given = os.environ.get("KUBEFLOW_TASKS_REALSTACK_STATE")
    if given:
        yield json.loads(Path(given).read_text())
        return
    state_file = tmp_path_factory.mktemp("realstack") / "state.json"
    state = stack.up(state_file, only="kubernetes")
    try:
        yield state
    finally:
        stack.down(state_file)


@pytest.fixture(scope="session")
def real_kubernetes(_real_stack_state: dict[str, Any]) -> RealKubernetes:
    if "kubeconfig" not in _real_stack_state:
        raise RuntimeError("the real stack's state names no Kubernetes side")
    return RealKubernetes(_real_stack_state)

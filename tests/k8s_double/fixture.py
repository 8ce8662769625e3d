"""pytest fixtures: `k8s_double` (fresh per test) and `k8s_double_session` (shared, faults cleared per use);
`double_cli(k8s_double, tmp_path, *command)`: the CLI as a subprocess against the double.

Register with `pytest_plugins = [..., "tests.k8s_double.fixture"]` in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from . import KubeDouble


@pytest.fixture
def k8s_double(reference_specs: Path) -> Iterator[KubeDouble]:
    double = KubeDouble(reference_specs).start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture(scope="session")
def _k8s_double_shared(reference_specs: Path) -> Iterator[KubeDouble]:
    double = KubeDouble(reference_specs).start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def k8s_double_session(_k8s_double_shared: KubeDouble) -> KubeDouble:
    """One double for the whole session (objects accumulate; use unique names); faults reset per test."""
    _k8s_double_shared.faults.clear()
    return _k8s_double_shared


def double_cli(
    double: KubeDouble, tmp_path: Path, *command: str, env: Mapping[str, str] | None = None
) -> Callable[..., tuple[int, dict, str]]:
    """`run(*args, backend="kubernetes")`: `kubeflow-tasks <command> <args> --output json` in a subprocess,
    reaching the double through a kubeconfig and a KFP token file; (exit code, JSON result, stderr)."""
    kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig")
    token = tmp_path / "kfp-token"
    token.write_text(double.kfp_token)
    repo = Path(__file__).resolve().parents[2]

    def run(*args: str, backend: str = "kubernetes") -> tuple[int, dict, str]:
        cluster = ["--kubeconfig", str(kubeconfig), "--kfp-host", double.kfp_url, "--kfp-token-file", str(token)]
        proc = subprocess.run(
            [sys.executable, "-m", "shared.cli", *command, *args, "--backend", backend,
             *(cluster if backend == "kubernetes" else []), "--output", "json"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(repo), **(env or {})},
        )
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr

    return run

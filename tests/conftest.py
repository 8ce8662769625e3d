"""Fixtures every test module may use.

The upstream API schemas live in `../shared/specs` beside the checkout (never copied into the
project). Tests that need them use the `reference_specs` fixture, which says plainly when the
folder is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.mlflow_server", "tests.k8s_double.fixture", "tests.realstack.fixture"]

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("KUBEFLOW_TASKS_REFERENCE_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def reference_specs() -> Path:
    """`../shared/specs`: upstream CRDs and the KFP swagger."""
    specs = REFERENCE_DIR / "specs"
    if not specs.is_dir():
        pytest.skip(
            f"upstream schemas not found at {specs}: these tests validate against ../shared/specs "
            "beside the checkout (or set KUBEFLOW_TASKS_REFERENCE_DIR)"
        )
    return specs


@pytest.fixture(scope="session")
def conformance() -> Path:
    """`../shared/conformance`: real upstream manifests and the verdict upstream gives each."""
    corpus = REFERENCE_DIR / "conformance"
    if not (corpus / "expected.tsv").is_file():
        pytest.skip(
            f"conformance corpus not found at {corpus}: these tests read ../shared/conformance "
            "beside the checkout (or set KUBEFLOW_TASKS_REFERENCE_DIR)"
        )
    return corpus


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state root for local runs, also handed to subprocesses through the environment."""
    root = tmp_path / "state"
    monkeypatch.setenv("KUBEFLOW_TASKS_STATE_DIR", str(root))
    return root

"""pytest fixtures: `k8s_double` (fresh per test) and `k8s_double_session` (shared, faults cleared per use).

Register with `pytest_plugins = [..., "tests.k8s_double.fixture"]` in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
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

"""Test-session settings shared by every test module."""

import pytest

from algorithms.common.networks import set_torch_threads


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> None:
    """One intra-op thread, as in every rltune worker process (faster for small nets on 2 cores)."""
    set_torch_threads(1)

"""Test-session settings shared by every test module."""

import pytest

from algorithms.common.networks import configure_torch_cpu


@pytest.fixture(autouse=True, scope="session")
def torch_as_in_workers() -> None:
    """One intra-op thread and denormals flushed, as in every one-at-a-time rltune worker process."""
    configure_torch_cpu(1)

"""Test-session settings shared by every test module."""

import os

import pytest

from algorithms.common.networks import configure_torch_cpu
from tests.helpers import postgres_unreachable


def pytest_report_header(config: pytest.Config) -> str:
    """Say at the top whether the PostgreSQL tests can run, and what happens to them if not."""
    reason = postgres_unreachable()
    if reason is None:
        return "postgres tests: the server answers"
    if os.environ.get("RLTUNE_REQUIRE_POSTGRES") == "1":
        return f"postgres tests: {reason}; they will FAIL (RLTUNE_REQUIRE_POSTGRES=1)"
    return f"postgres tests: {reason}; they will be SKIPPED (RLTUNE_REQUIRE_POSTGRES=1 makes them fail)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat it at the end when PostgreSQL tests were skipped, so a green run does not hide it."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "postgres" in r.keywords]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} PostgreSQL tests were SKIPPED: the server was unreachable",
            yellow=True,
            bold=True,
        )


@pytest.fixture(autouse=True, scope="session")
def torch_as_in_workers() -> None:
    """One intra-op thread and denormals flushed, as in every one-at-a-time rltune worker process."""
    configure_torch_cpu(1)

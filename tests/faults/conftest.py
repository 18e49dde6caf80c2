"""The fault-injection suite (see ``test_exactly_once.py``): its summaries are repeated at the end of the run."""

from __future__ import annotations

import pytest

from tests.faults.oracle import SUMMARIES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARIES:
        terminalreporter.section("exactly-once: what the consumers saw")
        for line in SUMMARIES:
            terminalreporter.write_line(line)

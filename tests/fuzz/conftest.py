"""The fuzz suite's report: one line per fuzz test at the end of the session, saying how many inputs it tried and
how they ended (``RELAY_FUZZ_EXAMPLES`` sets how many each test tries; ``make fuzz`` runs many)."""

from __future__ import annotations

import pytest

from tests.fuzz.tally import EXAMPLES, TALLIES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    tried = [tally for tally in TALLIES.values() if tally.inputs]
    if not tried:
        return
    terminalreporter.write_sep("-", f"fuzz (RELAY_FUZZ_EXAMPLES={EXAMPLES})")
    terminalreporter.write_line("fuzz: " + "; ".join(tally.line() for tally in tried))

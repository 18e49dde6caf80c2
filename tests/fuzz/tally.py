"""How many inputs each fuzz test tried, and how they ended: counted in the test bodies, printed by conftest.py's
``pytest_terminal_summary`` at the end of the session."""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, Phase, settings

# `make test` runs a bounded number of examples per test; `make fuzz` sets RELAY_FUZZ_EXAMPLES much higher.
EXAMPLES = int(os.environ.get("RELAY_FUZZ_EXAMPLES", "150"))

settings.register_profile(
    "relay-fuzz",
    max_examples=EXAMPLES,
    deadline=None,  # an example is a few HTTP round trips on localhost: its time varies with the machine's load
    # `make test` tries the same inputs every run, so that CI is never red by the luck of a draw; `make fuzz`
    # (RELAY_FUZZ_RANDOM=1) draws new ones each run, and hypothesis prints how to reproduce a failure.
    derandomize=os.environ.get("RELAY_FUZZ_RANDOM") != "1",
    print_blob=True,
    # No `explain` phase: on Python 3.11 it traces every line of the relay, which makes shrinking take minutes.
    # RELAY_FUZZ_SHRINK=0 reports the first failing input as found, unshrunk.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    + ([Phase.shrink] if os.environ.get("RELAY_FUZZ_SHRINK", "1") != "0" else []),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
FUZZ = settings.get_profile("relay-fuzz")


class Tally:
    """The inputs one fuzz test tried: how many, and how many ended each way."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs = 0
        self.ends: Counter[str] = Counter()

    def count(self, end: str) -> None:
        self.inputs += 1
        self.ends[end] += 1

    def line(self) -> str:
        """``source 150 inputs (committed 31, classified 119 by outcome {invalid_page: 40, ...})``."""
        ends = dict(self.ends)
        committed = ends.pop("committed", None)
        by_outcome = ", ".join(f"{end}: {n}" for end, n in sorted(ends.items(), key=lambda item: (-item[1], item[0])))
        if committed is None:
            return f"{self.name} {self.inputs} inputs (by outcome {{{by_outcome}}})"
        classified = self.inputs - committed
        return (
            f"{self.name} {self.inputs} inputs "
            f"(committed {committed}, classified {classified} by outcome {{{by_outcome}}})"
        )


TALLIES: dict[str, Tally] = {}


def tally(name: str) -> Tally:
    return TALLIES.setdefault(name, Tally(name))

"""Where an aiohttp server really listens.

What belongs here: reading the bound address of a running aiohttp server through aiohttp's public API, shared by the
relay's HTTP server and the simulator's (both accept port 0, "any free port", as the tests use).
"""

from __future__ import annotations

from aiohttp import web


def bound_port(runner: web.BaseRunner) -> int | None:
    """The TCP port the first of ``runner``'s started sites listens on; None when none listens on TCP."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None

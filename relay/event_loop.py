"""The event loop ``relay run`` runs on: uvloop's where it is installed, else asyncio's own.

uvloop is a dependency on Linux and macOS (it does not build for Windows). An idle replica spends most of its CPU in
the event loop's own work around each poll's request: waking on timers, selecting, writing and reading sockets.
uvloop does that in C; at 1,000 idle integrations it cut the relay process's CPU by about 5% in every window
measured (``tests/benchmarks/bench_idle_ab.py``). aiohttp and aiokafka run on it unchanged: they use only asyncio's
public loop API, and the end-to-end and fleet tests run ``relay run`` on it.

Only ``relay run`` uses it: the other commands are short-lived, and the tests' in-process loops stay asyncio's.
"""

from __future__ import annotations

import asyncio


def use_uvloop() -> bool:
    """Make the loops ``asyncio.run`` creates from now on uvloop's; False (asyncio's own) when uvloop is missing."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True

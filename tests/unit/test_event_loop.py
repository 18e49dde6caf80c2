"""relay.event_loop: `relay run`'s loops are uvloop's once it is installed as the loop."""

from __future__ import annotations

import asyncio

import uvloop

from relay.event_loop import use_uvloop


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_use_uvloop_makes_asyncio_run_use_uvloop() -> None:
    before = asyncio.get_event_loop_policy()
    try:
        assert use_uvloop()
        assert isinstance(asyncio.run(_running_loop()), uvloop.Loop)
    finally:
        asyncio.set_event_loop_policy(before)  # the other tests' loops stay asyncio's own
    assert not isinstance(asyncio.run(_running_loop()), uvloop.Loop)

"""Helpers shared by the unit tests: a configuration that needs no server, and waiting on the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from relay.config import Config, load_config

# Nothing listens there: a test that reached Kafka by mistake fails at once instead of talking to a real broker.
NO_KAFKA = "127.0.0.1:9"


def config_without_kafka(**environ: str) -> Config:
    """A valid configuration (``RELAY_*`` names and values as given) for one integration, ``acme``, by default."""
    return load_config(
        None,
        {"RELAY_API_KEY": "k", "RELAY_INTEGRATIONS": "acme", "RELAY_KAFKA_BOOTSTRAP_SERVERS": NO_KAFKA, **environ},
    )


async def quiescent() -> None:
    """Let every runnable task run until it blocks (no wall-clock wait)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def wait_until(condition: Callable[[], bool], what: str = "condition", timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds, checking every 5 ms; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class RecordingSleep:
    """Stands in for asyncio.sleep: records the waits asked for and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

"""Helpers shared by the unit tests (and the benchmarks): a configuration that needs no server, waiting on the event
loop, and remembering diff results the way the relay does once Kafka committed them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, MutableMapping

from relay import diff
from relay.config import Config, load_config
from relay.errors import StateError

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


def apply_result(
    state: MutableMapping[str, bytes], shapes: diff.ShapeTable, result: diff.DiffResult | diff.VanishResult
) -> None:
    """Remember a result, once its events are committed: new shapes first, since the fingerprints refer to them."""
    if isinstance(result, diff.DiffResult):
        for new_id, names in result.new_shapes:
            shapes.add_known(new_id, names)
    state.update(result.delta)


def check_fingerprint(fingerprint: bytes, shapes: diff.ShapeTable) -> None:
    """Raise StateError unless ``fingerprint`` is readable with ``shapes`` (the layout of relay.diff's docstring)."""
    header, flags_offset, known_flags = diff._HEADER.size, diff._FLAGS_OFFSET, diff._DELETED | diff._VANISHED
    malformed = len(fingerprint) < header or fingerprint[flags_offset] & ~known_flags
    if not malformed and diff.is_deleted(fingerprint):
        malformed = len(fingerprint) != header or diff.shape_id(fingerprint) != 0
    if malformed:
        raise StateError(f"malformed fingerprint {fingerprint[:40]!r}")
    diff.field_hashes(fingerprint, shapes)


class RecordingSleep:
    """Stands in for asyncio.sleep: records the waits asked for and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

"""How long the state of an integration removed from the registry is kept (``RELAY_REMOVED_STATE_RETENTION``): which
integrations are due for tombstones (:func:`due_for_tombstones`, pure), and the timer that asks again every so often
(:func:`every`).

What belongs here: the decision and its rhythm, nothing that writes. The owner of a state partition acts on the
decision (:meth:`relay.fleet.Ownership.forget_removed`), under its lock of ownership changes, and writes the
tombstones where it writes state, through the partition's fenced producer (:meth:`relay.pipeline.Pipeline.forget`).

**The rule.** An integration is due when the registry holds it as removed (a removal is a record, so its time
survives restarts and handovers: ``updated_at`` of the removed entry, the last edit a removed entry can get), at least
the retention has passed since, and this owner still remembers state of it. Active and paused integrations are
never due, nor one the registry does not hold at all (a registry tombstone written by hand: not a removal). Adding it
again before the retention passed makes it active, which cancels the tombstones; adding it again after them polls a
snapshot, since nothing is remembered of it. Unset, the retention is infinite: nothing is ever due.

**When it is asked.** On each claim of partitions (a removal whose retention passed while no replica ran, or while
another replica owned the partition, is acted on by whichever owner comes next), on each change of the registry, and
every :func:`check_interval` seconds (a retention passes while nothing else happens).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from relay.registry import RegistryEntry
from relay.timestamps import parse_timestamp_ms

log = logging.getLogger(__name__)

# A retention measured in days is checked once a minute: its tombstones come at most a minute late, at the cost of a
# look at the registry entries of what the owner remembers. A short one (tests, a trial) is checked twice per
# retention, but never more than once a second.
MAX_CHECK_SECONDS: Final = 60.0
MIN_CHECK_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class DueState:
    """The remembered state of one removed integration whose retention has passed."""

    integration: str
    resources: tuple[str, ...]  # those of its pairs that hold state, whatever the registry polled it for
    removed_at: str  # as the registry says it (RFC 3339)


def due_for_tombstones(
    registry: Mapping[str, RegistryEntry],
    held: Mapping[str, tuple[str, ...]],
    *,
    now_ms: int,
    retention_seconds: float | None,
) -> tuple[DueState, ...]:
    """The integrations of ``held`` (those this owner remembers state of, with the resources of their pairs that hold
    it) that ``registry`` holds as removed since at least ``retention_seconds`` before ``now_ms``, by id. None for
    ``retention_seconds``: kept for ever, none is due."""
    if retention_seconds is None:
        return ()
    retention_ms = retention_seconds * 1000
    due = []
    for integration, resources in sorted(held.items()):
        entry = registry.get(integration)
        if entry is None or not entry.removed:
            continue
        if now_ms - parse_timestamp_ms(entry.updated_at) >= retention_ms:
            due.append(DueState(integration, tuple(sorted(resources)), entry.updated_at))
    return tuple(due)


def check_interval(retention_seconds: float) -> float:
    """How often an owner looks for removed integrations due, besides claims and registry changes."""
    return min(MAX_CHECK_SECONDS, max(MIN_CHECK_SECONDS, retention_seconds / 2))


async def every(seconds: float, action: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run ``action`` every ``seconds`` until ``stop`` is set (never once it is). An error of one run is logged and
    the next run comes as planned: the timer is what catches a retention that passes while nothing else happens."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            return
        try:
            await action()
        except Exception:  # a bug: said loudly, with its traceback, and the timer goes on
            log.exception("looking for removed integrations' state to tombstone failed")

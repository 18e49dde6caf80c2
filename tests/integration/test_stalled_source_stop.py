"""A stop or a handover does not wait out RELAY_SHUTDOWN_GRACE_SECONDS for a poll stalled on the source.

The grace is for pages being committed; a poll whose request the source never answers has nothing in flight to
Kafka, so it is cancelled at once: nothing of it is published, the checkpoint stays where it was, and the pair's next
poll (by this relay or another) publishes the change exactly once. Real Kafka, the simulator stalling the requests.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from relay.app import Relay
from relay.simulator import FaultKind, Simulator, SimulatorServer
from relay.simulator.faults import Fault
from tests.integration.harness import Collector, World, collect, wait_until

pytestmark = pytest.mark.kafka

ACME = "personio:acme"
USERS = "ats/users"
GRACE_SECONDS = 60  # far longer than the stop may take: the test fails if the stop waits it out
PROMPT_SECONDS = 10  # "at once", with room for a loaded machine


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME], users=5, seed=11)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        world = World(sim, server, bootstrap_servers, topic_prefix, [ACME])
        await Relay(world.config()).sink.ensure_topics()  # for the collector, which outlives the relays
        yield world


def settings() -> dict[str, str]:
    # The source's own timeouts are longer than the grace: only the cancellation can end the stalled request early.
    # No scheduled poll after the snapshot (the test triggers the one that stalls): an idle poll would leave memory's
    # checkpoint ahead of the state topic's (deferred), and the checkpoint is compared with the one read back.
    return {
        "shutdown_grace_seconds": str(GRACE_SECONDS),
        "poll_interval_seconds": "600",
        "poll_jitter_fraction": "0",
        "source_read_timeout_seconds": "120",
        "source_request_timeout_seconds": "120",
    }


@asynccontextmanager
async def polling(relay: Relay) -> AsyncIterator[asyncio.Task[None]]:
    """The relay's scheduler running (as in `relay run`), until the block ends or the test stops it."""
    running = asyncio.create_task(relay.scheduler.run(), name="scheduler")
    try:
        yield running
    finally:
        relay.scheduler.stop()
        await asyncio.wait_for(running, GRACE_SECONDS + 30)


async def stall_a_poll_of_a_change(world: World, relay: Relay, events: Collector) -> tuple[str, Fault]:
    """Once the snapshot is published, change a user and make the source stall every request, until the pair's
    poll hangs in one; return the changed user's key and the fault."""
    await events.wait_for(world.sim.count(ACME, USERS), timeout=60)
    stall = world.sim.faults.inject(FaultKind.STALL, fraction=1.0, integration=ACME)
    record = next(iter(world.sim.records(ACME, USERS, include_deleted=False)))
    world.sim.update(ACME, USERS, record["id"], {"first_name": "Stalled"})
    relay.scheduler.trigger(ACME, USERS)
    await wait_until(lambda: stall.applied >= 1 and relay.scheduler.status[(ACME, USERS)].polling, 30, "a stall")
    return f"{ACME}:{record['id']}", stall


async def publishes_once(world: World, events: Collector, key: str) -> None:
    """The change of ``key`` is published, exactly once, and no event at all is published twice."""
    deadline = time.monotonic() + 60
    while not any(e.key == key and e.data["record"]["first_name"] == "Stalled" for e in events.events):
        assert time.monotonic() < deadline, f"the change of {key} was not published within 60 s"
        await events.drain()
    await events.settle()
    assert [e.data["record"]["first_name"] for e in events.events if e.key == key and e.kind == "updated"] == [
        "Stalled"
    ]
    assert [i for i, n in Counter(str(e.body["id"]) for e in events.events).items() if n > 1] == []


async def test_a_handover_cancels_a_poll_stalled_on_the_source_at_once(world: World) -> None:
    async with (
        collect(world.bootstrap_servers, world.topics()) as events,
        world.relay(**settings()) as relay,
        polling(relay),
    ):
        key, stall = await stall_a_poll_of_a_change(world, relay, events)
        partition = relay.store.partition_of(ACME)
        before = relay.store.pair(ACME, USERS).checkpoint
        started = time.monotonic()
        await relay.ownership.hand_over([partition])
        assert time.monotonic() - started < PROMPT_SECONDS
        await events.settle()
        assert not [e for e in events.events if e.key == key and e.kind == "updated"]
        world.sim.faults.remove(stall.id)
        await relay.ownership.claim([partition])  # reads the partition's state back from Kafka
        assert relay.store.pair(ACME, USERS).checkpoint == before  # the stalled poll committed nothing
        await publishes_once(world, events, key)


async def test_a_stop_cancels_a_poll_stalled_on_the_source_at_once(world: World) -> None:
    async with collect(world.bootstrap_servers, world.topics()) as events:
        async with world.relay(**settings()) as relay, polling(relay) as running:
            key, stall = await stall_a_poll_of_a_change(world, relay, events)
            before = relay.store.pair(ACME, USERS).checkpoint
            started = time.monotonic()
            relay.scheduler.stop()
            await running
            assert time.monotonic() - started < PROMPT_SECONDS
        await events.settle()
        assert not [e for e in events.events if e.key == key and e.kind == "updated"]
        world.sim.faults.remove(stall.id)
        async with world.relay(**settings()) as successor:  # reads the state back from Kafka
            assert successor.store.pair(ACME, USERS).checkpoint == before
            await successor.pipeline.poll_once(ACME, USERS)
            await publishes_once(world, events, key)

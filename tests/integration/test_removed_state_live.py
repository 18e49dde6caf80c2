"""The state of an integration removed from the registry, on the real broker: once RELAY_REMOVED_STATE_RETENTION has
passed, the owner of its state partition writes a tombstone for every key of its pairs (and nothing else), an
integration added again afterwards is snapshotted anew, a removal whose retention passed while no replica ran is
tombstoned by the next owner when it claims the partition, and tombstones whose write failed in a partition holding
only removed integrations are written at the next check, with no claim.

The relays here are in-process replicas (real Relays, real group protocol, real simulator), as in
test_registry_live.py; the state topic is read back as any consumer would read it (``read_committed``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.app import Relay
from relay.config import Config
from relay.errors import KafkaUnavailable
from relay.registry import add as add_entry
from relay.registry import remove
from relay.registry_topic import RegistryTopic
from relay.simulator import Simulator, SimulatorServer
from relay.sink import Committer, OutMessage
from relay.timestamps import format_timestamp_ms
from tests.integration.harness import Collector, World, collect, wait_until

pytestmark = pytest.mark.kafka

USERS = "ats/users"
PARTITIONS = 2
ACME = "personio:acme-retention"
GLOBEX = "greenhouse:globex-retention"
StateKey = tuple[Any, ...]


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME, GLOBEX], users=5, seed=11)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield World(sim, server, bootstrap_servers, topic_prefix, [ACME, GLOBEX])


def replica(world: World, **overrides: Any) -> AbstractAsyncContextManager[Relay]:
    """A relay joined to the fleet's group, as `relay run`, until the block ends (then it leaves cleanly)."""
    return world.fleet_replica(**{"state_topic_partitions": str(PARTITIONS), "poll_interval_seconds": "2", **overrides})


async def state_topic(config: Config) -> dict[StateKey, bytes | None]:
    """The last committed value of every key of the state topic (None: a tombstone), read to its current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka_bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    latest: dict[StateKey, bytes | None] = {}
    try:
        # The relay created it with RELAY_STATE_TOPIC_PARTITIONS partitions.
        partitions = [TopicPartition(config.state_topic, p) for p in range(config.state_topic_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    latest[tuple(orjson.loads(record.key))] = record.value
    finally:
        await consumer.stop()
    return latest


def of(state: dict[StateKey, bytes | None], integration: str) -> dict[StateKey, bytes | None]:
    return {key: value for key, value in state.items() if key[1] == integration}


async def wait_for_tombstones(config: Config, integration: str, timeout: float = 30) -> dict[StateKey, bytes | None]:
    """Wait until every key of ``integration``'s state is a tombstone; return the whole topic then."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await state_topic(config)
        mine = of(state, integration)
        if mine and all(value is None for value in mine.values()):
            return state
        assert asyncio.get_running_loop().time() < deadline, f"{integration}'s state not tombstoned within {timeout} s"
        await asyncio.sleep(0.2)


def snapshot_events(events: Collector, integration: str) -> list[str]:
    return [
        e.entity
        for e in events.events
        if e.data["integration_id"] == integration and e.kind == "created" and e.data["snapshot"]
    ]


async def wait_for_snapshots(
    world: World, events: Collector, integration: str, count: int, timeout: float = 60
) -> None:
    """Wait until ``count`` snapshots of ``integration`` were announced (every live user, ``count`` times)."""
    expected = world.sim.count(integration, USERS) * count
    deadline = asyncio.get_running_loop().time() + timeout
    while len(snapshot_events(events, integration)) < expected:
        assert asyncio.get_running_loop().time() < deadline, f"no snapshot #{count} of {integration} within {timeout} s"
        await events.drain(timeout_ms=100)


async def event_topics(world: World) -> None:
    await Relay(world.config(state_topic_partitions=str(PARTITIONS))).sink.ensure_topics()


@asynccontextmanager
async def both_snapshotted(world: World, **settings: str) -> AsyncIterator[tuple[Collector, RegistryTopic, Relay]]:
    """A replica with ``settings`` whose snapshots of ACME and GLOBEX were announced; the events collected from the
    start, and the registry topic to edit."""
    config = world.config(state_topic_partitions=str(PARTITIONS))
    await event_topics(world)
    async with (
        collect(world.bootstrap_servers, world.topics()) as events,
        RegistryTopic(config) as topic,
        replica(world, **settings) as running,
    ):
        await wait_for_snapshots(world, events, ACME, 1)
        await wait_for_snapshots(world, events, GLOBEX, 1)
        yield events, topic, running


async def test_a_removed_integration_s_state_is_tombstoned_after_the_retention_and_snapshotted_again_when_re_added(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    config = world.config(state_topic_partitions=str(PARTITIONS))
    with caplog.at_level(logging.INFO, logger="relay"):
        async with both_snapshotted(world, removed_state_retention="2s") as (events, topic, running):
            before = await state_topic(config)
            globex_before = of(before, GLOBEX)
            assert of(before, ACME)
            assert globex_before
            assert all(value is not None for value in of(before, ACME).values())

            removal = remove(await topic.read(), ACME, at=now_minus(), by="test")
            assert removal is not None
            await topic.write([removal])
            after = await wait_for_tombstones(config, ACME)

            # Every key ACME had, entities, shapes and checkpoint, is a tombstone now; GLOBEX's state is untouched.
            acme_keys = set(of(before, ACME))
            assert acme_keys <= set(of(after, ACME))
            assert {key[0] for key in acme_keys} == {"e", "s", "c"}
            assert set(of(after, GLOBEX)) >= set(globex_before)
            assert all(value is not None for value in of(after, GLOBEX).values())
            assert ACME not in running.store.held(range(PARTITIONS))  # forgotten in memory too
            assert caplog.messages.count("state of a removed integration tombstoned") == 1
            assert tombstoned_count(running) == 1

            # Added again after the tombstones: its next poll is a snapshot, every live user announced anew.
            again = add_entry(await topic.read(), ACME, at=now_minus(), by="test")
            assert again is not None
            await topic.write([again])
            await wait_for_snapshots(world, events, ACME, 2)
            await events.settle()
    acme = snapshot_events(events, ACME)
    assert sorted(acme) == sorted(2 * [r["id"] for r in world.sim.records(ACME, USERS, include_deleted=False)])


async def test_a_removal_whose_retention_passed_while_no_replica_ran_is_tombstoned_by_the_next_owner(
    world: World,
) -> None:
    config = world.config(state_topic_partitions=str(PARTITIONS))
    await event_topics(world)
    async with collect(world.bootstrap_servers, world.topics()) as events, RegistryTopic(config) as topic:
        async with replica(world) as first:  # keeps removed state for ever (the default)
            await wait_for_snapshots(world, events, ACME, 1)
            await wait_for_snapshots(world, events, GLOBEX, 1)
            # Removed two hours ago, as far as the registry says: a removal's time is its record's, not a clock's.
            removal = remove(await topic.read(), ACME, at=now_minus(2 * 3600 * 1000), by="test")
            assert removal is not None
            await topic.write([removal])
            await wait_until(lambda: ACME not in {i for i, _ in first.scheduler.status}, 30, "ACME to stop")
        kept = await state_topic(config)
        assert of(kept, ACME)
        assert all(value is not None for value in of(kept, ACME).values())

        async with replica(world, removed_state_retention="1h") as second:
            after = await wait_for_tombstones(config, ACME)
            assert set(of(after, ACME)) >= set(of(kept, ACME))
            assert all(value is not None for value in of(after, GLOBEX).values())
            assert tombstoned_count(second) == 1


class TombstonesGivenUpOnce:
    """The relay's committer, except that the first transaction of tombstones alone (a removed integration's state
    forgotten) is given up while in flight, as the relay gives up one Kafka does not commit in time: its producer is
    discarded, and the partition's next producer commits nothing until the state was read again."""

    def __init__(self, committer: Committer) -> None:
        self._committer = committer
        self.given_up = 0

    async def commit(self, messages: Sequence[OutMessage]) -> None:
        if self.given_up or not all(message.value is None for message in messages):
            await self._committer.commit(messages)
            return
        self.given_up += 1
        try:
            async with asyncio.timeout(0):  # cancelled at its first wait for Kafka
                await self._committer.commit(messages)
        except TimeoutError:
            raise KafkaUnavailable("the test gave up this transaction of tombstones") from None
        raise AssertionError("the transaction of tombstones committed without waiting for Kafka")


async def test_tombstones_whose_write_failed_are_written_at_the_next_check_without_a_claim(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    config = world.config(state_topic_partitions=str(PARTITIONS))
    with caplog.at_level(logging.INFO, logger="relay"):
        async with both_snapshotted(world, removed_state_retention="2s") as (_, topic, running):
            assert {running.store.partition_of(ACME), running.store.partition_of(GLOBEX)} == {1}
            failing = TombstonesGivenUpOnce(running.pipeline.sink)
            running.pipeline.sink = failing
            claims = caplog.messages.count("state partitions claimed")
            # Both removed a minute ago: due at once, and their partition then holds only removed integrations.
            registry = await topic.read()
            removals = [remove(registry, name, at=now_minus(60_000), by="test") for name in (ACME, GLOBEX)]
            await topic.write([removal for removal in removals if removal is not None])
            await wait_for_tombstones(config, ACME, timeout=20)
            await wait_for_tombstones(config, GLOBEX, timeout=20)
            assert failing.given_up == 1
            assert "cannot tombstone the state of a removed integration yet; trying again later" in caplog.messages
            assert caplog.messages.count("state partitions claimed") == claims  # recovered without a claim
            assert running.ownership.owned == {0, 1}
            assert tombstoned_count(running) == 2


def now_minus(ms: float = 0) -> str:
    return format_timestamp_ms(round(time.time() * 1000 - ms))


def tombstoned_count(relay: Relay) -> float | None:
    return relay.metrics.registry.get_sample_value("relay_removed_state_tombstoned_total")

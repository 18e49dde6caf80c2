"""Replicas of one relay on the real broker: the consumer group splits the state partitions between them, each polls
only its partitions' integrations, a partition moves when a replica joins or leaves, and nothing is lost or doubled.

The replicas here are in-process (real Relays, real group protocol); the fault suite runs them as processes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from relay.app import Relay
from relay.fleet import ReadState, StateReading
from relay.partitioning import partition_for_key
from relay.simulator import Simulator, SimulatorServer, WebhookSender
from tests.integration.harness import Collector, World, change_everyone, collect, wait_until

pytestmark = pytest.mark.kafka

USERS = "ats/users"
PARTITIONS = 2


def integrations_over_both_partitions(count: int) -> list[str]:
    """Integration ids, half of them placed in each state partition."""
    found: dict[int, list[str]] = {0: [], 1: []}
    n = 0
    while min(len(v) for v in found.values()) < count // 2:
        candidate = f"personio:fleet{n}"
        found[partition_for_key(candidate.encode(), PARTITIONS)].append(candidate)
        n += 1
    return found[0][: count // 2] + found[1][: count // 2]


INTEGRATIONS = integrations_over_both_partitions(4)


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=INTEGRATIONS, users=5, seed=3)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield World(sim, server, bootstrap_servers, topic_prefix, INTEGRATIONS)


def replica(
    world: World, state_reading: StateReading | None = None, **overrides: str
) -> AbstractAsyncContextManager[Relay]:
    """A relay joined to the fleet's group, polling what it owns, until the block ends (then it leaves cleanly)."""
    settings = {"state_topic_partitions": str(PARTITIONS), "poll_interval_seconds": "1", **overrides}
    return world.fleet_replica(state_reading=state_reading, **settings)


def owned(*relays: Relay) -> list[frozenset[int]]:
    return [relay.ownership.owned for relay in relays]


def doubled(collector: Collector) -> dict[str, int]:
    """Event ids seen more than once: an event id is the same for the same change, whoever publishes it."""
    counts = Counter(str(event.body["id"]) for event in collector.events)
    return {event_id: count for event_id, count in counts.items() if count > 1}


async def test_two_replicas_split_the_partitions_and_hand_them_over_without_loss_or_duplicates(world: World) -> None:
    await Relay(world.config(state_topic_partitions=str(PARTITIONS))).sink.ensure_topics()
    async with collect(world.bootstrap_servers, world.topics()) as events, replica(world) as first:
        await wait_until(lambda: first.ownership.owned == {0, 1}, 60, "the first replica to own everything")
        snapshot = sum(world.sim.count(i, USERS) for i in INTEGRATIONS)
        await events.wait_for(snapshot, timeout=60)
        await change_everyone(world, events, INTEGRATIONS, "Before")
        async with replica(world) as second:
            await wait_until(
                lambda: sorted(map(sorted, owned(first, second))) == [[0], [1]],
                60,
                "the group to give each replica one partition",
            )
            status = second.status()["fleet"]
            assert status["owned_partitions"] == sorted(second.ownership.owned)
            assert status["member_id"]
            # Each polls exactly its partitions' integrations.
            for relay in (first, second):
                polled = {integration for integration, _ in relay.scheduler.status}
                assert polled == {i for i in INTEGRATIONS if relay.store.partition_of(i) in relay.ownership.owned}
            await change_everyone(world, events, INTEGRATIONS, "Split")
        # The second left cleanly: the first owns everything again, and goes on.
        await wait_until(lambda: first.ownership.owned == {0, 1}, 60, "the first to take both partitions back")
        await change_everyone(world, events, INTEGRATIONS, "After")
        await events.settle()
    assert doubled(events) == {}
    assert first.metrics.registry.get_sample_value("relay_rebalances_total") >= 2


async def test_a_replica_whose_partition_was_taken_commits_nothing_and_lets_it_go(world: World) -> None:
    # A zombie: a replica that stayed away past its session timeout while another took its partition over. Here
    # the other replica claims the partition directly (what the group's next assignment makes it do); the zombie's
    # next commit to it is fenced: nothing of that page is written, and it stops polling the partition's pairs.
    await Relay(world.config(state_topic_partitions=str(PARTITIONS))).sink.ensure_topics()
    async with collect(world.bootstrap_servers, world.topics()) as events, replica(world) as zombie:
        await wait_until(lambda: zombie.ownership.owned == {0, 1}, 60, "the replica to own everything")
        await events.wait_for(sum(world.sim.count(i, USERS) for i in INTEGRATIONS), timeout=60)
        events.events.clear()  # the snapshots
        taken = 0
        taken_over = [i for i in INTEGRATIONS if zombie.store.partition_of(i) == taken]
        successor = Relay(world.config(state_topic_partitions=str(PARTITIONS)))
        try:
            await successor.sink.ensure_topics()
            await successor.ownership.claim([taken])  # fences the zombie's producer of that partition
            changed = await change_everyone_once(world, taken_over[0], "Zombie")
            await wait_until(lambda: taken not in zombie.ownership.owned, 60, "the zombie to let the partition go")
            assert zombie.ownership.owned == {1 - taken}
            assert zombie.metrics.registry.get_sample_value("relay_fenced") == 0  # a lost partition is no fault
            await events.settle()
            assert not [e for e in events.events if e.key == changed]  # the zombie committed nothing of it
            await successor.pipeline.poll_once(taken_over[0], USERS)  # the new owner publishes the change, once
            await wait_for_key(events, changed)
        finally:
            await successor.close()
    assert doubled(events) == {}


async def change_everyone_once(world: World, integration: str, name: str) -> str:
    record = next(iter(world.sim.records(integration, USERS, include_deleted=False)))
    world.sim.update(integration, USERS, record["id"], {"first_name": name})
    return f"{integration}:{record['id']}"


async def wait_for_key(collector: Collector, key: str) -> None:
    deadline = time.monotonic() + 30
    while not any(e.key == key for e in collector.events):
        assert time.monotonic() < deadline, f"no event for {key} within 30 s"
        await collector.drain()


async def test_a_webhook_received_by_another_replica_reaches_the_owner_through_the_control_topic(
    world: World,
) -> None:
    secret = "fleet-webhook-secret-never-print"
    slow = {"poll_interval_seconds": "600", "kombo_webhook_secret": secret}  # an event within seconds: the webhook
    await Relay(world.config(state_topic_partitions=str(PARTITIONS))).sink.ensure_topics()
    async with collect(world.bootstrap_servers, world.topics()) as events, replica(world, **slow) as first:
        await wait_until(lambda: first.ownership.owned == {0, 1}, 60, "the first replica to own everything")
        await events.wait_for(sum(world.sim.count(i, USERS) for i in INTEGRATIONS), timeout=60)
        async with replica(world, **slow) as second:
            await wait_until(
                lambda: sorted(map(sorted, owned(first, second))) == [[0], [1]], 60, "each to own one partition"
            )
            await wait_until(lambda: first.ownership.settled and second.ownership.settled, 30, "the claims")
            events.events.clear()
            integration = next(i for i in INTEGRATIONS if first.store.partition_of(i) in first.ownership.owned)
            url = f"http://127.0.0.1:{second.http_port}/webhooks/kombo"  # the replica that does not own it
            async with WebhookSender(world.sim, url, secret) as sender:
                changed = await change_everyone_once(world, integration, "Forwarded")
                await wait_for_key(events, changed)
                await wait_until(lambda: sender.sent >= 1, 30, "the delivery")

            def count(relay: Relay, outcome: str) -> float:
                labels = {"kind": "trigger", "outcome": outcome}
                return relay.metrics.registry.get_sample_value("relay_control_actions_total", labels) or 0.0

            assert count(second, "sent") >= 1
            assert count(first, "delivered") >= 1
            triggered = first.metrics.registry.get_sample_value(
                "relay_polls_triggered_total", {"resource": USERS, "trigger": "webhook"}
            )
            assert (triggered or 0.0) >= 1  # the owner polled because of it
    assert doubled(events) == {}


class SlowReading:
    """A claim's reading of its partitions' state that takes ``seconds`` more than the relay's own: the restore of a
    large state (a million entities took 7 to 11 s)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.claims: list[set[int]] = []
        self.started = asyncio.Event()

    async def __call__(self, partitions: set[int], read: ReadState) -> None:
        self.claims.append(set(partitions))
        self.started.set()
        await read(partitions)
        await asyncio.sleep(self.seconds)  # the time a large restore takes, not a wait for something to happen


async def holds_for(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether ``condition`` stays true for ``seconds`` (the window a failure would show within)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        await asyncio.sleep(0.05)
    return condition()


async def test_a_claim_whose_restore_outlasts_the_session_timeout_keeps_its_partitions(world: World) -> None:
    # The member must go on heartbeating while its claim reads the state: a restore longer than the session timeout
    # got it evicted, and the partitions it had just claimed were lost and claimed again, for ever.
    session = 6.0
    await Relay(world.config(state_topic_partitions=str(PARTITIONS))).sink.ensure_topics()
    reading = SlowReading(seconds=session + 3)
    async with (
        collect(world.bootstrap_servers, world.topics()) as events,
        replica(world, reading, group_session_timeout_seconds=str(session)) as relay,
    ):
        await asyncio.wait_for(reading.started.wait(), 60)
        ready, checks = relay.readiness()
        assert not checks["state_restored"]  # not ready until the partitions are restored
        assert not ready
        await wait_until(lambda: relay.ownership.owned == {0, 1}, 60, "the replica to claim both partitions")
        assert relay.membership is not None
        generation = relay.membership.generation
        await events.wait_for(sum(world.sim.count(i, USERS) for i in INTEGRATIONS), timeout=60)  # it polls them
        # An evicted member learns it at its first heartbeat after the claim (one heartbeat interval, 2 s here):
        # watch for a whole session timeout.
        kept = await holds_for(lambda: relay.ownership.owned == {0, 1} and len(reading.claims) == 1, session)
        assert kept, f"the partitions were lost and claimed again: claims {reading.claims}"
        assert relay.membership.generation == generation
        assert relay.readiness()[0]
    assert relay.metrics.registry.get_sample_value("relay_rebalances_total") == 1  # the join, nothing since

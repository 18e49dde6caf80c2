"""`relay state repartition` on the real broker: a fleet of 2 state partitions stopped, its state copied to a new topic
of 4, and a fleet started on that topic resumes every pair where it was (no snapshot announced again, changes go on
as updates); the old topic untouched; the refusals: a live member of the group, a target that holds records or has
another partition count, the state topic itself as the target, no state topic.

Replicas are in-process Relays that join the group (as `relay run` does); the CLI runs in-process through its entry
point, in a thread (it runs its own event loop)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import relay.cli
from relay.app import Relay
from relay.partitioning import partition_for_key
from relay.simulator import Simulator, SimulatorServer
from relay.state_cli import (
    EXIT_FLEET_RUNNING,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_STATE,
    EXIT_TARGET_NOT_USABLE,
)
from tests.integration.harness import World, change_everyone, collect, wait_until

pytestmark = pytest.mark.kafka

USERS = "ats/users"
OLD_PARTITIONS = 2
NEW_PARTITIONS = 4


def integrations_over_every_partition(per_partition: int) -> list[str]:
    """Integration ids placed in every one of NEW_PARTITIONS partitions (so in both of OLD_PARTITIONS, too)."""
    found: dict[int, list[str]] = {p: [] for p in range(NEW_PARTITIONS)}
    n = 0
    while min(len(ids) for ids in found.values()) < per_partition:
        candidate = f"personio:move{n}"
        found[partition_for_key(candidate.encode(), NEW_PARTITIONS)].append(candidate)
        n += 1
    return [i for ids in found.values() for i in ids[:per_partition]]


INTEGRATIONS = integrations_over_every_partition(2)


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=INTEGRATIONS, users=4, seed=5)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        world = World(sim, server, bootstrap_servers, topic_prefix, INTEGRATIONS)
        # The CLI's configuration: the fleet's Kafka, topics and group as they were before the move, no API key.
        for name in [name for name in os.environ if name.startswith("RELAY_")]:
            monkeypatch.delenv(name)
        for name, value in {
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
            "RELAY_TOPIC_PREFIX": topic_prefix,
            "RELAY_STATE_TOPIC_PARTITIONS": str(OLD_PARTITIONS),
            "RELAY_GROUP_ID": world.config().group_id,
        }.items():
            monkeypatch.setenv(name, value)
        yield world


async def create_topics(world: World) -> None:
    """Create the topics (the registry seeded) as a first start does, retrying until Kafka's metadata has them, so
    that a collector can follow them and a replica joining finds them (join_fleet does not retry as relay run does)."""
    async with world.relay(state_topic_partitions=str(OLD_PARTITIONS)):
        pass


def replica(world: World, **overrides: str) -> AbstractAsyncContextManager[Relay]:
    """A relay joined to its fleet's group, polling what it owns, as `relay run` does, until the block ends."""
    return world.fleet_replica(
        **{"state_topic_partitions": str(OLD_PARTITIONS), "poll_interval_seconds": "1", **overrides}
    )


async def repartition(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(relay.cli.main, ["state", "repartition", *argv, "--timeout", "60"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def end_offsets(world: World, topic: str) -> dict[TopicPartition, int]:
    partitions = (await topic_partitions(world))[topic]
    consumer = AIOKafkaConsumer(bootstrap_servers=world.bootstrap_servers)
    await consumer.start()
    try:
        return await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()


async def topic_partitions(world: World) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=world.bootstrap_servers)
    await admin.start()
    try:
        names = await admin.list_topics()
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def test_a_fleet_restarted_on_the_new_topic_resumes_every_pair_without_a_snapshot(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    config = world.config()
    new_topic = f"{world.topic_prefix}.relay-state-{NEW_PARTITIONS}"
    await create_topics(world)
    async with collect(world.bootstrap_servers, world.topics()) as events:
        async with replica(world) as old:
            await wait_until(lambda: old.ownership.owned == {0, 1}, 60, "the replica to own both partitions")
            await events.wait_for(sum(world.sim.count(i, USERS) for i in INTEGRATIONS), timeout=60)
            await change_everyone(world, events, INTEGRATIONS, "Before")
        assert {event.kind for event in events.events} == {"created", "updated"}
        old_ends = await end_offsets(world, config.state_topic)

        code, out, err = await repartition(
            capsys, "--partitions", str(NEW_PARTITIONS), "--state-topic", new_topic, "--json"
        )
        assert code == EXIT_OK, err
        assert err == ""
        report = orjson.loads(out)
        assert report["source"] == {"topic": config.state_topic, "partitions": OLD_PARTITIONS}
        assert report["target"] == {"topic": new_topic, "partitions": NEW_PARTITIONS, "created": True}
        assert (report["pairs"], report["integrations"], report["verified"]) == (8, 8, True)
        assert [(p["partition"], p["integrations"]) for p in report["partitions"]] == [(p, 2) for p in range(4)]
        assert report["records_written"] == sum(p["records"] for p in report["partitions"])
        assert report["control_topic"] == {"topic": config.control_topic, "partitions_before": 2, "grown_to": 4}
        assert report["settings"] == {"RELAY_STATE_TOPIC": new_topic, "RELAY_STATE_TOPIC_PARTITIONS": "4"}
        assert await end_offsets(world, config.state_topic) == old_ends  # the old topic is only read
        partitions = await topic_partitions(world)
        assert (partitions[new_topic], partitions[config.control_topic]) == (4, 4)

        before = len(events.events)
        async with replica(world, state_topic=new_topic, state_topic_partitions=str(NEW_PARTITIONS)) as new:
            await wait_until(lambda: new.ownership.owned == {0, 1, 2, 3}, 60, "the new replica to own 4 partitions")
            await wait_until(lambda: new.readiness()[0], 60, "the new replica to be ready (its state restored)")
            assert {i for (i, _), _ in new.store.pairs()} == set(INTEGRATIONS)
            assert all(state.checkpoint.snapshot_done for _, state in new.store.pairs())
            changed = await change_everyone(world, events, INTEGRATIONS, "After")
            await events.settle()
        after = events.events[before:]
        assert Counter(event.kind for event in after) == Counter({"updated": len(INTEGRATIONS)}), after
        assert sorted(event.key for event in after) == sorted(changed)

    code, out, _ = await repartition(capsys, "--partitions", str(NEW_PARTITIONS), "--state-topic", new_topic)
    assert code == EXIT_TARGET_NOT_USABLE  # run again: the target holds the copy


async def test_it_refuses_while_a_member_of_the_group_is_alive(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    new_topic = f"{world.topic_prefix}.relay-state-new"
    await create_topics(world)
    async with replica(world) as running:
        await wait_until(lambda: running.ownership.owned == {0, 1}, 60, "the replica to own both partitions")
        code, out, err = await repartition(capsys, "--partitions", "4", "--state-topic", new_topic)
    assert code == EXIT_FLEET_RUNNING
    assert out == ""
    assert err.startswith(
        f"relay state repartition: the consumer group {world.config().group_id!r} (RELAY_GROUP_ID) has 1 live member(s)"
    )
    assert "Stop every replica of the fleet first" in err
    assert new_topic not in await topic_partitions(world)


async def test_it_refuses_a_target_that_holds_records_or_has_another_count(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    config = world.config()
    code, _, err = await repartition(capsys, "--partitions", "4", "--state-topic", f"{world.topic_prefix}.new")
    assert code == EXIT_STATE
    assert f"the state topic {config.state_topic!r} (RELAY_STATE_TOPIC) does not exist" in err

    async with world.relay() as polled:  # state of one pair; this relay joins no group
        await polled.pipeline.poll_once(INTEGRATIONS[0], USERS)

    code, _, err = await repartition(capsys, "--partitions", "4", "--state-topic", config.state_topic)
    assert code == EXIT_INVALID
    assert "is the state topic (RELAY_STATE_TOPIC) itself" in err
    code, _, err = await repartition(capsys, "--partitions", "4", "--state-topic", config.control_topic)
    assert code == EXIT_INVALID
    assert f"--state-topic {config.control_topic!r} is the control topic (RELAY_CONTROL_TOPIC)" in err
    event_topic = world.topics(USERS)[0]
    code, _, err = await repartition(capsys, "--partitions", "4", "--state-topic", event_topic)
    assert code == EXIT_INVALID
    assert err == (
        f"relay state repartition: --state-topic {event_topic!r} --partitions 4: RELAY_STATE_TOPIC: {event_topic} "
        "is also an event topic; the state needs a topic of its own\n"
    )

    full, three, deleting, empty = (f"{world.topic_prefix}.{name}" for name in ("full", "three", "deleting", "empty"))
    admin = AIOKafkaAdminClient(bootstrap_servers=world.bootstrap_servers)
    await admin.start()
    try:
        topics = ((full, 4, "compact"), (three, 3, "compact"), (deleting, 4, "delete"), (empty, 4, "compact"))
        await admin.create_topics(
            [NewTopic(name, count, 1, topic_configs={"cleanup.policy": policy}) for name, count, policy in topics]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=world.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(full, b"{}", key=b"someone else's")
    finally:
        await producer.stop()

    code, _, err = await repartition(capsys, "--partitions", "4", "--state-topic", full)
    assert code == EXIT_TARGET_NOT_USABLE
    assert f"--state-topic {full!r} exists and holds 1 record(s)" in err
    code, _, err = await repartition(capsys, "--partitions", "4", "--state-topic", three)
    assert code == EXIT_TARGET_NOT_USABLE
    assert f"--state-topic {three!r} exists with 3 partition(s), not --partitions 4" in err
    code, _, err = await repartition(capsys, "--partitions", "4", "--state-topic", deleting)
    assert code == EXIT_TARGET_NOT_USABLE
    assert f"--state-topic {deleting!r} exists with cleanup.policy=delete: a state topic must be compacted" in err

    # An empty, compacted topic of the right count is used as it is.
    code, out, err = await repartition(capsys, "--partitions", "4", "--state-topic", empty)
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert lines[1].startswith("copied 1 pair(s) of 1 integration(s) as ")
    assert lines[1].endswith(f"record(s) to existing, empty, {empty} (4 partition(s)), and verified the copy")
    assert lines[-3:] == [
        "next: set on every replica, then start the fleet:",
        f"  RELAY_STATE_TOPIC={empty}",
        "  RELAY_STATE_TOPIC_PARTITIONS=4",
    ]
    assert "test-key" not in out

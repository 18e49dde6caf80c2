"""Operators' commands on the real broker, end to end: `relay resnapshot`, `relay reconcile` and `relay state reset`
sent by the CLI through the control topic to a running replica (a real Relay joined to its group, a real simulator),
which runs each as the pair's next poll and acknowledges it on the control topic.

A resnapshot re-announces exactly the live records once (a command delivered twice acts once); a reconcile finds a
hard delete now; a reset makes the next poll a snapshot; a command for an integration the registry does not hold
exits 9; a command nobody acknowledges exits 10 after --timeout, and the next owner runs it, once: the owner after
that one does not run it again."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import relay.cli
from relay.app import Relay
from relay.commands_cli import EXIT_NO_ACK, EXIT_UNKNOWN_INTEGRATION
from relay.config import Config
from relay.control import ControlAction
from relay.partitioning import partition_for_key
from relay.registry import add as add_entry
from relay.registry import now_text
from relay.registry_topic import RegistryTopic
from relay.simulator import Simulator, SimulatorServer
from tests.integration.harness import Collector, World, collect, wait_until

pytestmark = pytest.mark.kafka

USERS = "ats/users"
PARTITIONS = 2
ACME = "personio:acme-commands"


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME], users=6, seed=7)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield World(sim, server, bootstrap_servers, topic_prefix, [ACME])


@pytest.fixture
def cli_environ(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands configured like the relays: Kafka, the topic prefix, the partitions, the resources."""
    for name in [name for name in os.environ if name.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP_SERVERS", world.bootstrap_servers)
    monkeypatch.setenv("RELAY_TOPIC_PREFIX", world.topic_prefix)
    monkeypatch.setenv("RELAY_STATE_TOPIC_PARTITIONS", str(PARTITIONS))
    monkeypatch.setenv("RELAY_RESOURCES", USERS)


def replica(world: World) -> AbstractAsyncContextManager[Relay]:
    """A relay joined to the fleet's group, as `relay run`, polling rarely: what polls comes from the commands."""
    return world.fleet_replica(state_topic_partitions=str(PARTITIONS), poll_interval_seconds="600")


async def command(*argv: str) -> tuple[int, dict[str, Any] | None]:
    """Run `relay ARGV --json`; its exit code and its JSON output (None when it printed none)."""
    args = relay.cli.build_parser().parse_args([*argv, "--json"])
    out = io.StringIO()
    code = await asyncio.to_thread(args.handler, args, out)
    text = out.getvalue()
    return code, (orjson.loads(text) if text.strip() else None)


def live_ids(world: World) -> set[str]:
    return {record["id"] for record in world.sim.records(ACME, USERS, include_deleted=False)}


def of_reason(events: Collector, reason: str | None, kind: str = "created") -> list[str]:
    return [e.entity for e in events.events if e.kind == kind and e.data["reason"] == reason]


async def wait_for_events(events: Collector, condition: Any, what: str, timeout: float = 30) -> None:
    async def drained() -> None:
        while not condition():
            await events.drain(timeout_ms=100)

    try:
        await asyncio.wait_for(drained(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def started(world: World, events: Collector, running: Relay) -> None:
    await wait_until(lambda: running.readiness()[0] and running.ownership.owned == {0, 1}, 60, "the relay")
    live = live_ids(world)
    await wait_for_events(events, lambda: set(of_reason(events, None)) >= live, "the initial snapshot", 60)
    await wait_until(lambda: not running.scheduler.status[(ACME, USERS)].polling, 30, "the snapshot to end")


async def event_topics(world: World) -> None:
    await Relay(world.config(state_topic_partitions=str(PARTITIONS))).sink.ensure_topics()


async def test_a_resnapshot_re_announces_every_live_record_once_even_when_the_command_is_delivered_twice(
    world: World, cli_environ: None
) -> None:
    deleted = sorted(live_ids(world))[0]
    world.sim.delete(ACME, USERS, deleted)
    await event_topics(world)
    async with collect(world.bootstrap_servers, world.topics()) as events, replica(world) as running:
        await started(world, events, running)
        changed = sorted(live_ids(world))[0]
        world.sim.update(ACME, USERS, changed)

        code, printed = await command("resnapshot", ACME)
        assert code == 0, printed
        assert printed is not None
        assert printed["ack"]["outcome"] == "ok", printed
        assert "resnapshot done" in printed["ack"]["message"]
        live = live_ids(world)
        await wait_for_events(events, lambda: len(of_reason(events, "resnapshot")) >= len(live), "the resnapshot")
        resnapshot = [e for e in events.events if e.data["reason"] == "resnapshot"]
        assert sorted(e.entity for e in resnapshot) == sorted(live)  # each live record once, the deleted one not
        assert all(e.data["snapshot"] and e.data["record"] is not None for e in resnapshot)
        # The real change is announced as usual, before its re-announcement.
        assert events.kinds(changed)[-2:] == ["updated", "created"]

        # The same command delivered again (a retried send): the owner counts it a duplicate and does nothing.
        again = ControlAction("resnapshot", ACME, (), None, 0, printed["command_id"])
        producer = AIOKafkaProducer(bootstrap_servers=world.bootstrap_servers)
        await producer.start()
        try:
            partition = partition_for_key(ACME.encode(), PARTITIONS)
            await producer.send_and_wait(
                running.config.control_topic, again.encode(), key=ACME.encode(), partition=partition
            )
        finally:
            await producer.stop()
        labels = {"kind": "resnapshot", "outcome": "duplicate"}
        metrics = running.metrics.registry
        await wait_until(lambda: (metrics.get_sample_value("relay_control_actions_total", labels) or 0) >= 1, 30)
        await events.settle()
        assert len(of_reason(events, "resnapshot")) == len(live)


async def test_a_reconcile_finds_a_hard_delete_now(world: World, cli_environ: None) -> None:
    await event_topics(world)
    async with collect(world.bootstrap_servers, world.topics()) as events, replica(world) as running:
        await started(world, events, running)
        gone = sorted(live_ids(world))[0]
        world.sim.hard_delete(ACME, USERS, gone)

        code, printed = await command("reconcile", ACME, "--resource", USERS)
        assert code == 0, printed
        assert printed is not None
        assert "reconciled" in printed["ack"]["message"]
        await wait_for_events(events, lambda: gone in of_reason(events, "vanished", "deleted"), "the vanish-delete")
        assert of_reason(events, "vanished", "deleted") == [gone]


async def test_a_reset_forgets_the_pair_and_its_next_poll_is_a_snapshot(world: World, cli_environ: None) -> None:
    await event_topics(world)
    async with collect(world.bootstrap_servers, world.topics()) as events, replica(world) as running:
        await started(world, events, running)
        live = live_ids(world)
        assert await command("state", "reset", ACME) == (2, None)  # no --yes: refused

        code, printed = await command("state", "reset", ACME, "--yes")
        assert code == 0, printed
        assert printed is not None
        assert "its next poll is a snapshot" in printed["ack"]["message"]
        # The snapshot follows at once (the poll interval is 10 minutes): every live record announced again.
        await wait_for_events(
            events,
            lambda: all(of_reason(events, None).count(entity) == 2 for entity in live),
            "the snapshot after the reset",
        )
        assert all(e.data["snapshot"] for e in events.events)
        await wait_until(lambda: running.store.pair(ACME, USERS).checkpoint.snapshot_done, 30, "the snapshot")

    # A replica started afterwards reads the tombstones: it remembers only what the snapshot after the reset wrote.
    async with replica(world) as second:
        await wait_until(lambda: second.ownership.owned == {0, 1} and second.ownership.settled, 60, "the claim")
        pair = second.store.pair(ACME, USERS)
        assert pair.checkpoint.snapshot_done
        assert pair.live_entities == len(live)


async def test_a_command_for_an_unknown_integration_exits_9_and_one_nobody_acknowledges_exits_10(
    world: World, cli_environ: None, capfd: pytest.CaptureFixture[str]
) -> None:
    await event_topics(world)
    code, _ = await command("resnapshot", "personio:nobody", "--timeout", "20")
    assert code == EXIT_UNKNOWN_INTEGRATION
    assert "personio:nobody is not in the registry of integrations" in capfd.readouterr().err

    config = world.config(state_topic_partitions=str(PARTITIONS))
    async with RegistryTopic(config) as topic:
        await topic.ensure_topic()
        entry = add_entry(await topic.read(), ACME, category=None, resources=None, at=now_text(), by="test")
        assert entry is not None
        await topic.write([entry])
    code, _ = await command("reconcile", ACME, "--resource", "ats/jobs", "--timeout", "20")
    assert code == EXIT_UNKNOWN_INTEGRATION
    assert "is not polled for 'ats/jobs'" in capfd.readouterr().err

    # No relay runs: the command is sent, and nobody answers.
    code, printed = await command("resnapshot", ACME, "--timeout", "3")
    assert code == EXIT_NO_ACK
    assert printed is not None
    assert printed["sent"]
    assert printed["ack"] is None
    assert "no owner acknowledged it within 3 s" in capfd.readouterr().err


async def control_acks(world: World, config: Config, command_id: str) -> list[ControlAction]:
    """The acks of ``command_id`` in its integration's partition of the control topic, from its beginning to its end."""
    tp = TopicPartition(config.control_topic, partition_for_key(ACME.encode(), PARTITIONS))
    consumer = AIOKafkaConsumer(bootstrap_servers=world.bootstrap_servers, isolation_level="read_committed")
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, (await consumer.beginning_offsets([tp]))[tp])
        acks: list[ControlAction] = []
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                action = ControlAction.decode(record.value)
                if action.kind == "ack" and action.command_id == command_id:
                    acks.append(action)
        return acks
    finally:
        await consumer.stop()


async def test_a_command_no_owner_acknowledged_is_run_once_by_the_next_owner_and_never_again(
    world: World, cli_environ: None
) -> None:
    await event_topics(world)
    config = world.config(state_topic_partitions=str(PARTITIONS))
    async with collect(world.bootstrap_servers, world.topics()) as events:
        async with replica(world) as first:
            await started(world, events, first)
        # The owner is gone: the command is sent, nobody runs or acknowledges it.
        code, printed = await command("resnapshot", ACME, "--timeout", "2")
        assert code == EXIT_NO_ACK
        assert printed is not None
        command_id = printed["command_id"]
        assert await control_acks(world, config, command_id) == []

        live = live_ids(world)
        async with replica(world) as second:  # the next owner finds it unacknowledged, and runs it
            await wait_for_events(events, lambda: len(of_reason(events, "resnapshot")) >= len(live), "the resnapshot")
            replayed = {"kind": "resnapshot", "outcome": "replayed"}
            assert second.metrics.registry.get_sample_value("relay_control_actions_total", replayed) == 1
            await wait_until(lambda: not second.scheduler.status[(ACME, USERS)].polling, 30, "the resnapshot to end")
        [ack] = await control_acks(world, config, command_id)  # its ack was written before the handover ended
        assert ack.outcome == "ok"
        assert f"{USERS}: resnapshot done" in (ack.message or "")
        assert sorted(of_reason(events, "resnapshot")) == sorted(live)

        # Acknowledged: the owner after that one does not run it again.
        async with replica(world) as third:
            await wait_until(lambda: third.ownership.owned == {0, 1} and third.ownership.settled, 60, "the claim")
            # The claim read the control partition's window and queued what it found before it settled: nothing.
            assert third.metrics.registry.get_sample_value("relay_control_actions_total", replayed) == 0
            await events.settle()
        assert len(of_reason(events, "resnapshot")) == len(live)
        assert len(await control_acks(world, config, command_id)) == 1


async def test_a_command_its_owner_stopped_while_it_ran_is_finished_by_the_next_owner_each_record_once(
    world: World, cli_environ: None
) -> None:
    await event_topics(world)
    config = world.config(state_topic_partitions=str(PARTITIONS))
    async with collect(world.bootstrap_servers, world.topics()) as events:
        async with replica(world) as first:
            await started(world, events, first)
            world.sim.faults.inject("stall", count=1, integration=ACME)  # the resnapshot's first page never comes
            code, printed = await command("resnapshot", ACME, "--no-wait")
            assert code == 0
            assert printed is not None
            command_id = printed["command_id"]
            await wait_until(lambda: not world.sim.faults.active, 30, "the resnapshot's first request")
            assert first.scheduler.status[(ACME, USERS)].polling
        # The owner stopped in the middle: the command was interrupted, not acknowledged.
        assert await control_acks(world, config, command_id) == []
        assert of_reason(events, "resnapshot") == []

        live = live_ids(world)
        async with replica(world) as second:  # the next owner runs it, to the end
            await wait_for_events(events, lambda: len(of_reason(events, "resnapshot")) >= len(live), "the resnapshot")
            await wait_until(lambda: not second.scheduler.status[(ACME, USERS)].polling, 30, "the resnapshot to end")
        [ack] = await control_acks(world, config, command_id)
        assert ack.outcome == "ok"
        await events.settle()
        assert sorted(of_reason(events, "resnapshot")) == sorted(live)  # each live record once, over both owners

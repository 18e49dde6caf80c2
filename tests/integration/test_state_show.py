"""`relay state show` on the real broker: the state a relay's polls left (checkpoint, watermark, entity counts, last
reconcile), the entities with their fingerprint summaries (bounded by --limit), the owner of the integration's
partition as the consumer group describes it, and an integration the registry no longer holds (exit 9, state shown).

State is made by real polls (``world.relay()``, the simulator); the CLI runs in-process through its entry point, in a
thread (it runs its own event loop)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import relay.cli
from relay.partitioning import partition_for_key
from relay.simulator import Simulator, SimulatorServer
from relay.state_cli import EXIT_UNKNOWN_INTEGRATION
from tests.integration.harness import World, wait_until

pytestmark = pytest.mark.kafka

ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
USERS = "ats/users"
PARTITIONS = 2  # the harness's RELAY_STATE_TOPIC_PARTITIONS


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME, GLOBEX], users=12, seed=3)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        world = World(sim, server, bootstrap_servers, topic_prefix, [ACME, GLOBEX])
        # The CLI's configuration: the relay's Kafka, topics and group (derived from the source URL), no API key.
        for name in [name for name in os.environ if name.startswith("RELAY_")]:
            monkeypatch.delenv(name)
        config = world.config()
        for name, value in {
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
            "RELAY_TOPIC_PREFIX": topic_prefix,
            "RELAY_STATE_TOPIC_PARTITIONS": str(PARTITIONS),
            "RELAY_GROUP_ID": config.group_id,
        }.items():
            monkeypatch.setenv(name, value)
        yield world


async def show(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(relay.cli.main, ["state", "show", *argv, "--timeout", "20"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_show_reports_what_the_polls_left(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    live = sum(1 for _ in world.sim.records(ACME, USERS, include_deleted=False))
    total = sum(1 for _ in world.sim.records(ACME, USERS))
    async with world.relay() as relay:
        await relay.pipeline.poll_once(ACME, USERS)  # a snapshot: watermark, last reconcile
        await relay.pipeline.poll_once(ACME, USERS)  # an incremental poll
        checkpoint = relay.store.pair(ACME, USERS).checkpoint

    code, out, err = await show(capsys, ACME, "--json")
    assert code == 0, err
    assert err == ""
    report = orjson.loads(out)
    assert report["in_registry"] is True
    assert report["registry"]["integration"] == ACME
    assert report["partition"] == partition_for_key(ACME.encode(), PARTITIONS)
    assert report["owner"] is None  # the relay of the test owned without joining the group, and is gone
    assert report["group"]["members"] == 0
    (users,) = report["resources"]
    assert users["resource"] == USERS
    assert users["snapshot_done"] is True
    assert users["in_progress"] is None
    assert (users["live"], users["live"] + users["deleted"]) == (live, total)
    assert users["watermark"] is not None
    assert users["lag_seconds"] >= 0
    assert users["last_reconcile"] is not None
    assert checkpoint.watermark_ms is not None
    assert "entities" not in users

    code, out, _ = await show(capsys, ACME)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"integration {ACME}: active in {world.topic_prefix}.relay-integrations")
    assert f"owner: none (group '{world.config().group_id}' has no member)" in lines
    assert USERS in lines
    assert "  checkpoint      snapshot done; no poll in progress" in lines
    assert f"  entities        {live} live, {total - live} deleted" in lines
    assert any(line.startswith("  watermark       ") and "(lag " in line for line in lines)
    assert "test-key" not in out  # the API key is in no output

    # A pair never polled: no state yet; the other integration's records are not counted.
    code, out, _ = await show(capsys, GLOBEX, "--json")
    assert code == 0
    report = orjson.loads(out)
    assert report["records"] == 0
    assert [(r["resource"], r["has_state"]) for r in report["resources"]] == [(USERS, False)]


async def test_entities_are_listed_with_fingerprint_summaries_up_to_the_limit(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = sorted(record["id"] for record in world.sim.records(ACME, USERS))
    world.sim.delete(ACME, USERS, ids[0])
    async with world.relay() as relay:
        await relay.pipeline.poll_once(ACME, USERS)

    code, out, _ = await show(capsys, ACME, "--entities", "--limit", "3", "--json", "--resource", USERS)
    assert code == 0
    (users,) = orjson.loads(out)["resources"]
    assert [entity["id"] for entity in users["entities"]] == ids[:3]
    assert users["entities_left_out"] == len(ids) - 3
    first = users["entities"][0]
    assert first["state"] == "deleted"
    assert first["fields"] == 0
    assert all(len(entity["hash"]) == 8 for entity in users["entities"])
    assert users["entities"][1]["state"] == "live"
    assert users["entities"][1]["fields"] > 0

    code, out, _ = await show(capsys, ACME, "--entities", "--limit", "2")
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["ID", "STATE"])
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ids[:2]
    assert lines[header + 3] == f"  ... and {len(ids) - 2} more (--limit)"


async def test_the_owner_is_the_group_member_assigned_the_partition(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    async with world.relay() as relay:
        await relay.pipeline.poll_once(ACME, USERS)
    config = world.config()
    member = AIOKafkaConsumer(
        bootstrap_servers=world.bootstrap_servers, group_id=config.group_id, client_id="replica-under-test"
    )
    member.subscribe([config.state_topic])
    await member.start()
    try:
        await wait_until(lambda: len(member.assignment()) == PARTITIONS, what="the member's assignment")
        member_id = member._coordinator.member_id
        code, out, _ = await show(capsys, ACME, "--json")
        assert code == 0
        assert orjson.loads(out)["owner"]["member_id"] == member_id
        assert orjson.loads(out)["owner"]["client_id"] == "replica-under-test"
        code, out, _ = await show(capsys, ACME)
        assert f"owner: {member_id} (client replica-under-test, host " in out
    finally:
        await member.stop()


async def test_an_integration_the_registry_does_not_hold_is_exit_9_with_its_state_shown(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    async with world.relay() as relay:
        await relay.pipeline.poll_once(GLOBEX, USERS)
    producer = AIOKafkaProducer(bootstrap_servers=world.bootstrap_servers)
    await producer.start()
    try:  # a tombstone written by hand forgets the integration (relay.registry)
        await producer.send_and_wait(world.config().integrations_topic, None, key=GLOBEX.encode())
    finally:
        await producer.stop()

    code, out, err = await show(capsys, GLOBEX)
    assert code == EXIT_UNKNOWN_INTEGRATION
    assert out.startswith(f"integration {GLOBEX}: not in the registry")
    assert "note: the registry does not hold this integration: this state is left from before" in out
    assert "(not polled: not in its resources)" in out
    assert err == f"relay state show: integration {GLOBEX!r} is not in the registry: its state is shown above\n"

    code, _, err = await show(capsys, "personio:nobody")
    assert code == EXIT_UNKNOWN_INTEGRATION
    assert "and no state is in the state topic" in err

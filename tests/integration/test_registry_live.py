"""A running relay follows the registry of integrations on the real broker: an integration added (by `relay
integrations add` or the registry's API) is snapshotted within one poll interval, one removed is no longer polled (the
simulator sees no more requests for it), a pause survives a restart of the relay, in a fleet of two an integration
added is polled by exactly one replica: the owner of its partition, and `relay integrations` returns once that owner
acknowledged it applied the change (exit 10 when none does within --timeout), also when the change was written while
the owning replica was being replaced (the new owner acknowledges it at its claim).

The relays here are in-process replicas (real Relays, real group protocol, real simulator), as in test_fleet.py."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import orjson
import pytest

import relay.cli
from relay.app import Relay
from relay.partitioning import partition_for_key
from relay.registry import add as add_entry
from relay.registry import now_text, pause, remove, resume
from relay.registry_cli import EXIT_NO_ACK, EditDone, edit_registry, make_edit
from relay.registry_topic import RegistryTopic
from relay.simulator import Simulator, SimulatorServer
from tests.integration.harness import Collector, World, collect, wait_until

pytestmark = pytest.mark.kafka

USERS = "ats/users"
PARTITIONS = 2


def one_per_partition(prefix: str) -> list[str]:
    """Integration ids: the first placed in state partition 0, the second in partition 1."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < PARTITIONS:
        candidate = f"personio:{prefix}{n}"
        found.setdefault(partition_for_key(candidate.encode(), PARTITIONS), candidate)
        n += 1
    return [found[p] for p in range(PARTITIONS)]


ACME, GLOBEX = one_per_partition("live")
INITECH = "bamboohr:initech"


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME, GLOBEX, INITECH], users=5, seed=5)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield World(sim, server, bootstrap_servers, topic_prefix, [])  # RELAY_INTEGRATIONS unset unless given


def replica(world: World, **overrides: Any) -> AbstractAsyncContextManager[Relay]:
    """A relay joined to the fleet's group, as `relay run` (its registry read, its follower running), until the
    block ends (then it leaves cleanly)."""
    return world.fleet_replica(**{"state_topic_partitions": str(PARTITIONS), "poll_interval_seconds": "3", **overrides})


async def requests_for(world: World) -> Counter[str]:
    """The requests the simulator answered, by integration (its last 1000)."""
    url = f"{world.server.control_url}/interactions"
    async with aiohttp.ClientSession() as http, http.get(url, params={"limit": "1000"}) as response:
        response.raise_for_status()
        interactions = (await response.json())["interactions"]
    return Counter(str(interaction["integration"]) for interaction in interactions)


async def wait_for_requests(world: World, integration: str, more_than: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (count := (await requests_for(world))[integration]) <= more_than:
        assert time.monotonic() < deadline, f"{integration} was not polled again within {timeout} s"
        await asyncio.sleep(0.2)
    return count


async def wait_for_snapshot(world: World, events: Collector, integration: str, timeout: float) -> float:
    """Wait until every live user of ``integration`` was announced; return how long that took."""
    started = time.monotonic()
    expected = world.sim.count(integration, USERS)
    while sum(1 for e in events.events if e.data["integration_id"] == integration and e.kind == "created") < expected:
        assert time.monotonic() - started < timeout, f"no snapshot of {integration} within {timeout} s"
        await events.drain(timeout_ms=100)
    return time.monotonic() - started


async def event_topics(world: World) -> None:
    """The event topics exist (the collector subscribes to them before any relay created them)."""
    await Relay(world.config(state_topic_partitions=str(PARTITIONS))).sink.ensure_topics()


def polled(relay: Relay) -> set[str]:
    return {integration for integration, _ in relay.scheduler.status}


@pytest.fixture
def cli_environ(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """`relay integrations` configured like the relays: Kafka, the topic prefix, the partitions."""
    for name in [name for name in os.environ if name.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP_SERVERS", world.bootstrap_servers)
    monkeypatch.setenv("RELAY_TOPIC_PREFIX", world.topic_prefix)
    monkeypatch.setenv("RELAY_STATE_TOPIC_PARTITIONS", str(PARTITIONS))


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(relay.cli.main, ["integrations", *argv])


async def test_an_empty_registry_runs_then_an_integration_added_is_snapshotted_and_one_removed_no_longer_polled(
    world: World, cli_environ: None, caplog: pytest.LogCaptureFixture
) -> None:
    interval = 3.0
    await event_topics(world)
    with caplog.at_level(logging.INFO, logger="relay"):
        async with (
            collect(world.bootstrap_servers, world.topics()) as events,
            replica(world, poll_interval_seconds=str(interval)) as running,
        ):
            await wait_until(lambda: running.readiness()[0], 60, "the relay to be ready with an empty registry")
            assert running.ownership.owned == {0, 1}
            assert running.scheduler.status == {}
            assert any("the registry of integrations is empty" in message for message in caplog.messages)
            assert running.status()["registry"]["integrations"] == {"active": 0, "paused": 0, "removed": 0}

            assert await cli("add", INITECH, "--by", "test") == 0
            took = await wait_for_snapshot(world, events, INITECH, timeout=interval)  # within one interval
            assert took < interval
            assert polled(running) == {INITECH}
            assert running.status()["registry"]["owned"] == {INITECH: "active"}

            assert await cli("remove", INITECH) == 0
            await wait_until(lambda: INITECH not in polled(running), 30, "the removed integration to stop")
            before = (await requests_for(world))[INITECH]
            # Meanwhile another integration is polled on schedule, twice: the removed one would have been too.
            assert await cli("add", ACME) == 0
            acme = await wait_for_requests(world, ACME, more_than=0)
            await wait_for_requests(world, ACME, more_than=acme)
            assert (await requests_for(world))[INITECH] == before
            assert running.status()["registry"]["integrations"] == {"active": 1, "paused": 0, "removed": 1}
            await events.settle()
    assert not [e for e in events.events if e.data["integration_id"] == INITECH and e.kind != "created"]


async def test_a_pause_in_the_registry_survives_a_restart_of_the_relay(world: World) -> None:
    config = world.config(integrations=[ACME, GLOBEX], state_topic_partitions=str(PARTITIONS))
    await event_topics(world)
    async with (
        collect(world.bootstrap_servers, world.topics()) as events,
        RegistryTopic(config) as topic,
    ):
        async with replica(world, integrations=[ACME, GLOBEX]) as first:  # seeds the registry with both
            await wait_for_snapshot(world, events, ACME, timeout=60)
            await wait_for_snapshot(world, events, GLOBEX, timeout=60)
            entry = pause(await topic.read(), GLOBEX, at=now_text(), by="test")
            assert entry is not None
            await topic.write([entry])
            await wait_until(lambda: first.scheduler.is_paused(GLOBEX), 30, "the pause to reach the relay")
            assert not first.scheduler.is_paused(ACME)
        # A new relay, seeded with the same list: the registry, not RELAY_INTEGRATIONS, says GLOBEX is paused.
        async with replica(world, integrations=[ACME, GLOBEX]) as second:
            await wait_until(lambda: second.ownership.owned == {0, 1} and second.ownership.settled, 60, "the claim")
            assert second.scheduler.is_paused(GLOBEX)
            assert second.status()["registry"]["owned"] == {ACME: "active", GLOBEX: "paused"}
            globex = (await requests_for(world))[GLOBEX]
            acme = await wait_for_requests(world, ACME, more_than=(await requests_for(world))[ACME])
            await wait_for_requests(world, ACME, more_than=acme)
            assert (await requests_for(world))[GLOBEX] == globex  # never polled while paused
            entry = resume(await topic.read(), GLOBEX, at=now_text(), by="test")
            assert entry is not None
            await topic.write([entry])
            await wait_for_requests(world, GLOBEX, more_than=globex)
            assert not second.scheduler.is_paused(GLOBEX)


async def test_in_a_fleet_of_two_an_integration_added_is_polled_by_the_owner_of_its_partition_only(
    world: World,
) -> None:
    config = world.config(state_topic_partitions=str(PARTITIONS))
    await event_topics(world)
    async with (
        collect(world.bootstrap_servers, world.topics()) as events,
        RegistryTopic(config) as topic,
        replica(world) as first,
        replica(world) as second,
    ):
        await wait_until(
            lambda: (
                sorted(map(sorted, (first.ownership.owned, second.ownership.owned))) == [[0], [1]]
                and first.ownership.settled
                and second.ownership.settled
            ),
            60,
            "each replica to own one partition",
        )
        added = add_entry(await topic.read(), GLOBEX, at=now_text(), by="test")
        assert added is not None
        await topic.write([added])
        await wait_for_snapshot(world, events, GLOBEX, timeout=3)  # one interval
        owner, other = (first, second) if GLOBEX in polled(first) else (second, first)
        assert owner.store.partition_of(GLOBEX) in owner.ownership.owned
        assert polled(owner) == {GLOBEX}
        assert polled(other) == set()
        # The other replica knows of it (its view of the registry), without polling it: a later claim would.
        await wait_until(lambda: GLOBEX in other.registry, 30, "the other replica's view")
        assert other.status()["registry"]["integrations"]["active"] == 1
        assert other.status()["registry"]["owned"] == {}
        await events.settle()
        snapshot = [e for e in events.events if e.data["integration_id"] == GLOBEX]
        assert len(snapshot) == len({e.entity for e in snapshot}) == world.sim.count(GLOBEX, USERS)
        removal = remove(await topic.read(), GLOBEX, at=now_text(), by="test")
        assert removal is not None
        await topic.write([removal])
        await wait_until(lambda: GLOBEX not in polled(owner), 30, "the owner to stop polling it")


async def test_relay_integrations_waits_for_the_owner_to_acknowledge_the_change_or_exits_10(
    world: World, cli_environ: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # No relay ever ran (no control topic): the change is written, and nobody can acknowledge it: exit 10 at once.
    started = time.monotonic()
    assert await cli("add", INITECH, "--timeout", "30") == EXIT_NO_ACK
    assert time.monotonic() - started < 20
    assert "no relay of this configuration has run yet" in capsys.readouterr().err

    await event_topics(world)  # the control topic too, as a relay's start creates it; still none runs
    started = time.monotonic()
    assert await cli("add", ACME, "--timeout", "2", "--json") == EXIT_NO_ACK
    assert time.monotonic() - started >= 2
    printed = capsys.readouterr()
    assert orjson.loads(printed.out)["ack"] is None
    assert "no relay acknowledged it within 2 s" in printed.err
    started = time.monotonic()
    assert await cli("pause", ACME, "--no-wait", "--timeout", "20") == 0  # returns once Kafka has it
    assert await cli("resume", ACME, "--no-wait", "--timeout", "20") == 0
    assert time.monotonic() - started < 15

    async with (
        collect(world.bootstrap_servers, world.topics()) as events,
        replica(world, poll_interval_seconds="600") as running,
    ):
        await wait_until(lambda: running.ownership.owned == {0, 1} and running.ownership.settled, 60, "the claim")
        await wait_for_snapshot(world, events, ACME, timeout=30)  # added while no relay ran: polled at the claim
        capsys.readouterr()

        assert await cli("add", GLOBEX, "--json") == 0
        done = orjson.loads(capsys.readouterr().out)
        assert (done["action"], done["ack"]) == ("added", {"outcome": "ok", "message": "polling started"})
        assert GLOBEX in polled(running)  # acknowledged once applied, not merely written
        await wait_for_snapshot(world, events, GLOBEX, timeout=30)

        assert await cli("pause", GLOBEX) == 0
        out = capsys.readouterr().out
        assert "waiting up to 30 s for the owner's acknowledgement" in out
        assert out.endswith("the owner acknowledged it: polling paused\n")
        assert running.scheduler.is_paused(GLOBEX)
        started = time.monotonic()
        assert await cli("pause", GLOBEX) == 0  # nothing to do: nothing written, nothing waited for
        assert capsys.readouterr().out == f"{GLOBEX} is paused already: nothing written\n"
        assert time.monotonic() - started < 15
        assert await cli("resume", GLOBEX) == 0
        assert not running.scheduler.is_paused(GLOBEX)
        assert await cli("remove", GLOBEX) == 0
        assert GLOBEX not in polled(running)
        assert capsys.readouterr().out.endswith("the owner acknowledged it: polling stopped\n")


async def test_a_change_written_while_the_owner_is_replaced_is_acknowledged_by_the_new_owner_at_its_claim(
    world: World,
) -> None:
    config = world.config(state_topic_partitions=str(PARTITIONS))
    await event_topics(world)
    async with replica(world) as old:  # the owner of both partitions, replaced below
        await wait_until(lambda: old.ownership.owned == {0, 1} and old.ownership.settled, 60, "the claim")
    # No replica runs now: only the next owner can acknowledge what is written meanwhile.
    written: list[EditDone] = []
    editing = asyncio.create_task(
        edit_registry(
            config, "add", GLOBEX, make_edit("add", GLOBEX, by="test"), timeout=45, wait=True, on_written=written.append
        )
    )
    await wait_until(lambda: bool(written) or editing.done(), 30, "the change to be written")
    assert not editing.done(), editing  # written, waiting for an ack
    async with replica(world) as new:  # reads the registry with the change in it, then claims both partitions
        done = await asyncio.wait_for(editing, 60)
        assert GLOBEX in polled(new)
    assert done.written is not None
    assert done.ack is not None, "the new owner did not acknowledge the change it applied at its claim"
    assert (done.ack.outcome, done.ack.message) == (
        "ok",
        "polling started (applied by the partition's new owner as it claimed it)",
    )


async def test_upgrading_from_a_fixed_list_announces_nothing_again_and_loses_nothing(world: World) -> None:
    """The upgrade path: state written while RELAY_INTEGRATIONS was the only source of integrations, then a first
    start with a registry topic that does not exist yet (here: a new name, as for a release before the registry)."""
    await event_topics(world)
    listed = [ACME, GLOBEX]
    async with collect(world.bootstrap_servers, world.topics()) as events:
        async with replica(world, integrations=listed) as before:
            for integration in listed:
                await wait_for_snapshot(world, events, integration, timeout=60)
            await wait_until(lambda: not any(s.polling for s in before.scheduler.status.values()), 30, "polls to end")
        snapshot = Counter(e.entity for e in events.events if e.kind == "created")
        record = next(iter(world.sim.records(ACME, USERS, include_deleted=False)))
        world.sim.update(ACME, USERS, record["id"], {"first_name": "Upgraded"})  # while no relay runs

        fresh_registry = f"{world.topic_prefix}.relay-integrations-upgrade"
        async with replica(world, integrations=listed, integrations_topic=fresh_registry) as after:
            seeded = lambda: sorted(entry.integration for entry in after.registry.active()) == sorted(listed)  # noqa: E731
            await wait_until(seeded, 60, "the registry seeded from the list")
            async with asyncio.timeout(60):  # nothing lost: the change made meanwhile is published
                while not any(
                    e.kind == "updated" and e.data["record"]["first_name"] == "Upgraded" for e in events.events
                ):
                    await events.drain(timeout_ms=200)
            await wait_until(lambda: not any(s.polling for s in after.scheduler.status.values()), 30, "polls to end")
            await events.drain(timeout_ms=500)
    # Nothing announced again: every pair resumed at its checkpoint, no second snapshot.
    assert Counter(e.entity for e in events.events if e.kind == "created") == snapshot
    async with RegistryTopic(world.config(integrations_topic=fresh_registry)) as topic:
        entries = await topic.read()
    assert {entry.integration: entry.state for entry in entries.values()} == {ACME: "active", GLOBEX: "active"}

"""The reference consumer, ``relay materialize``, as a real process SIGKILLed at random points (a fixed seed) while
the relay publishes: it ends with the source's live records, each event applied exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.simulator import Simulator, SimulatorServer
from tests.integration.harness import Collector, World, collect, wait_until

pytestmark = pytest.mark.kafka

ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
RESOURCES = ("ats/users", "hris/employees")
KILLS = 4


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME, GLOBEX], users=60, seed=18, sizes={"hris/employees": 40})
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield World(sim, server, bootstrap_servers, topic_prefix, [ACME, GLOBEX])


class Materializer:
    """``relay materialize`` as a subprocess, and what its database holds."""

    def __init__(self, world: World, db: Path) -> None:
        self.db = db
        self.env = {
            **os.environ,
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": world.bootstrap_servers,
            "RELAY_TOPIC_PREFIX": world.topic_prefix,
            "RELAY_RESOURCES": ",".join(RESOURCES),
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "relay", "materialize", "--db", str(self.db), "--group-id", "view", "--batch-size", "15"),
            *("--group-instance-id", "view-1"),  # a restart takes its predecessor's place without a rebalance
            env=self.env,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert await self.process.wait() == -signal.SIGKILL

    async def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)

    def _query(self, sql: str) -> list[Any]:
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as db:
            try:
                return db.execute(sql).fetchall()
            except sqlite3.OperationalError:  # tables not created yet
                return []

    def applied(self) -> int:
        """Events applied so far, over all rows (each row counts the events applied to it)."""
        rows = [self._query(f"SELECT coalesce(sum(events), 0) FROM {table}") for table in _tables()]  # noqa: S608
        return sum(row[0][0] for row in rows if row)

    def live(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {
            (integration, resource, ident): json.loads(record)
            for resource in RESOURCES
            for integration, ident, record in self._query(
                f"SELECT integration_id, id, record FROM {resource.replace('/', '_')} WHERE deleted_at IS NULL"  # noqa: S608
            )
        }


def _tables() -> list[str]:
    return [resource.replace("/", "_") for resource in RESOURCES]


def source_live(sim: Simulator) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {
        (integration, resource, record["id"]): record
        for integration in (ACME, GLOBEX)
        for resource in RESOURCES
        for record in sim.records(integration, resource, include_deleted=False)
    }


def churn(sim: Simulator, rng: random.Random) -> None:
    """Creates, updates, soft deletes and restores, in both integrations and resources."""
    for integration in (ACME, GLOBEX):
        for resource in RESOURCES:
            live = [r["id"] for r in sim.records(integration, resource, include_deleted=False)]
            deleted = [r["id"] for r in sim.records(integration, resource) if r["remote_deleted_at"] is not None]
            for ident in rng.sample(live, 8):
                sim.update(integration, resource, ident)
            for ident in rng.sample(live, 3):
                sim.delete(integration, resource, ident)
            for ident in rng.sample(deleted, min(2, len(deleted))):
                sim.restore(integration, resource, ident)
            for _ in range(3):
                sim.create(integration, resource)


async def test_materialize_survives_sigkills_and_ends_with_the_source_state(world: World, tmp_path: Path) -> None:
    rng = random.Random(18)
    view = Materializer(world, tmp_path / "view.db")

    async def poll_all(relay: Any, events: Collector, expected_more: bool = True) -> None:
        before = len(events.events)
        for integration in (ACME, GLOBEX):
            for resource in RESOURCES:
                await relay.pipeline.poll_once(integration, resource)
        if expected_more:
            await events.wait_for(before + 1)
        await events.settle(0.5)

    async with (
        world.relay(resources=",".join(RESOURCES)) as relay,
        collect(world.bootstrap_servers, world.topics(*RESOURCES)) as events,
    ):
        await poll_all(relay, events)  # the snapshot
        await view.start()
        for _ in range(KILLS):
            # Kill it somewhere between what it has applied and what is published, then let the source change.
            target = rng.randint(view.applied() + 1, len(events.events))

            def reached(target: int = target) -> bool:
                return view.applied() >= target

            await wait_until(reached, 60, f"{target} events applied")
            await view.kill()
            churn(world.sim, rng)
            await poll_all(relay, events)
            await view.start()
        published = len(events.events)
        await wait_until(lambda: view.applied() >= published, 60, "every event applied")
        assert await view.stop() == 0

    assert view.applied() == published  # none applied twice, though replays happened
    assert view.live() == source_live(world.sim)

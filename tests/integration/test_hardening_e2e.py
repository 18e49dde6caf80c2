"""A record Kafka will not take, against the real broker: it fails its own pair's poll, names the record, leaves the
checkpoint where it was, and neither marks Kafka as down nor touches another pair."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from relay.errors import RecordTooLarge
from relay.simulator import Simulator, SimulatorServer
from tests.integration.harness import World, collect

pytestmark = pytest.mark.kafka

ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
USERS = "ats/users"


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME, GLOBEX], users=10, seed=11)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield World(sim, server, bootstrap_servers, topic_prefix, [ACME, GLOBEX])


def incompressible(size: int) -> str:
    """Text that zstd cannot shrink much, so that the broker sees about ``size`` bytes."""
    return base64.b64encode(os.urandom(size))[:size].decode()


async def create_topic(bootstrap_servers: str, name: str, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 1, topic_configs=configs)])
    finally:
        await admin.close()


@pytest.mark.parametrize("where", ["relay", "broker"])
async def test_a_record_too_large_fails_only_its_own_pair(world: World, where: str) -> None:
    topic = world.topics(USERS)[0]
    if where == "broker":  # the topic's own limit is lower than the relay's: the broker refuses the batch
        await create_topic(world.bootstrap_servers, topic, **{"max.message.bytes": "8192"})
        limit = "1000000"
    else:
        limit = "8192"
    async with world.relay(kafka_max_record_bytes=limit) as relay, collect(world.bootstrap_servers, [topic]) as events:
        await relay.pipeline.poll_once(ACME, USERS)  # the snapshots
        await relay.pipeline.poll_once(GLOBEX, USERS)
        await events.wait_for(world.sim.count(ACME, USERS) + world.sim.count(GLOBEX, USERS))
        events.events.clear()
        acme_ids = [r["id"] for r in world.sim.records(ACME, USERS, include_deleted=False)]
        globex_ids = [r["id"] for r in world.sim.records(GLOBEX, USERS, include_deleted=False)]
        before = relay.store.pair(ACME, USERS).checkpoint
        world.sim.update(ACME, USERS, acme_ids[0], {"first_name": incompressible(20_000)})
        world.sim.update(ACME, USERS, acme_ids[1], {"first_name": "Small"})
        world.sim.update(GLOBEX, USERS, globex_ids[0], {"first_name": "Renamed"})

        with pytest.raises(RecordTooLarge) as raised:
            await relay.pipeline.poll_once(ACME, USERS)
        if where == "relay":
            assert f"{ACME}:{acme_ids[0]}".encode() in str(raised.value).encode()
            assert "RELAY_KAFKA_MAX_RECORD_BYTES=8192" in str(raised.value)
        assert relay.store.pair(ACME, USERS).checkpoint == before  # nothing of that page advanced
        assert relay.sink.reachable  # Kafka answered: it is not down
        if where == "broker":
            # The refused batch broke the idempotent producer's sequence, so a new producer commits next, and state is
            # read back before it may (what the reload gate does before the next poll of any pair).
            await relay.reload_state()

        outcome = await relay.pipeline.poll_once(GLOBEX, USERS)  # another pair commits as usual
        assert outcome.events == 1
        published = await events.wait_for(1)
        await events.settle()
        assert [e.key for e in published] == [f"{GLOBEX}:{globex_ids[0]}"]  # nothing of ACME's failed page
        polls = relay.metrics.registry.get_sample_value(
            "relay_polls_total", {"resource": USERS, "kind": "incremental", "outcome": "record_too_large"}
        )
        assert polls == 1

"""The control channel on a real broker: two ControlChannels as two replicas, each owning some partitions of the
control topic. Actions reach exactly the owner, in order; a webhook id is delivered once across replicas and owner
restarts; disown stops delivery; a new owner is handed the operators' commands no owner acknowledged, and told which
recent changes of the registry no owner acknowledged; an unreadable
record is skipped and counted; a webhook through the real aiohttp handler is answered only once its action was
acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from relay.config import Config, load_config
from relay.control import ControlAction, ControlChannel, ForwardingTarget, registry_ack_id
from relay.metrics import Metrics
from relay.partitioning import partition_for_key
from relay.registry import RegistryEntry
from relay.simulator import webhooks as sim_webhooks
from relay.sink import KafkaSink
from relay.timestamps import format_timestamp_ms
from relay.web import Heartbeat, build_app
from relay.webhooks import SIGNATURE_HEADER, WebhookReceiver, WebhookSettings, make_handler, sign
from tests.integration.harness import wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = 4
USERS = "ats/users"
SECRET = "whsec_control-e2e-never-print"


def integrations_by_partition(per_partition: int = 2) -> dict[int, list[str]]:
    """A few integration ids for each partition of the control topic."""
    found: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    n = 0
    while any(len(names) < per_partition for names in found.values()):
        name = f"personio:c{n}"
        names = found[partition_for_key(name.encode(), PARTITIONS)]
        if len(names) < per_partition:
            names.append(name)
        n += 1
    return found


BY_PARTITION = integrations_by_partition()
ALL = [name for names in BY_PARTITION.values() for name in names]


def make_config(bootstrap_servers: str, topic_prefix: str, **environ: str) -> Config:
    return load_config(
        None,
        {
            "RELAY_API_KEY": "k",
            "RELAY_INTEGRATIONS": ",".join(ALL),
            "RELAY_RESOURCES": USERS,
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
            "RELAY_TOPIC_PREFIX": topic_prefix,
            "RELAY_STATE_TOPIC_PARTITIONS": str(PARTITIONS),
            "RELAY_KOMBO_WEBHOOK_SECRET": SECRET,
            **environ,
        },
    )


@dataclass
class Replica:
    channel: ControlChannel
    metrics: Metrics
    received: list[ControlAction] = field(default_factory=list)

    def count(self, kind: str, outcome: str) -> float:
        labels = {"kind": kind, "outcome": outcome}
        return self.metrics.registry.get_sample_value("relay_control_actions_total", labels) or 0.0

    def ids(self) -> list[str | None]:
        return [a.webhook_id for a in self.received]


@pytest.fixture
async def config(bootstrap_servers: str, topic_prefix: str) -> Config:
    built = make_config(bootstrap_servers, topic_prefix)
    sink = KafkaSink(built, Metrics())
    await sink.ensure_topics()  # creates the control topic, partitioned like the state topic
    return built


@asynccontextmanager
async def replica_context(config: Config, owned: Iterable[int]) -> AsyncIterator[Replica]:
    """A replica's channel, owning ``owned`` and following them, until the context ends (its stop)."""
    metrics = Metrics()
    channel = ControlChannel(
        config, metrics, partition_of=lambda i: partition_for_key(i.encode(), config.state_topic_partitions)
    )
    await channel.start()
    replica = Replica(channel, metrics)
    following: asyncio.Task[None] | None = None
    try:
        await channel.own(owned)
        following = asyncio.create_task(channel.follow(replica.received.append))
        yield replica
    finally:
        await channel.stop()
        if following is not None:
            await asyncio.wait_for(following, 10)  # follow() returns at stop()


Replicas = Callable[[Iterable[int]], Awaitable[Replica]]


@pytest.fixture
async def replicas(config: Config) -> AsyncIterator[Replicas]:
    """Starts replicas that end with the test."""
    async with AsyncExitStack() as stack:

        async def start(owned: Iterable[int]) -> Replica:
            return await stack.enter_async_context(replica_context(config, owned))

        yield start


def trigger(integration: str, webhook_id: str | None) -> ControlAction:
    return ControlAction("trigger", integration, (USERS,), webhook_id, 1_700_000_000_000)


async def test_actions_sent_by_either_replica_reach_exactly_the_owner_in_order(replicas: Replicas) -> None:
    a = await replicas([0, 1])
    b = await replicas([2, 3])
    sent: dict[str, list[str]] = {name: [] for name in ALL}
    for round_ in range(3):
        for n, name in enumerate(ALL):
            sender = a if (n + round_) % 2 else b
            ident = f"wh-{name}-{round_}"
            await sender.channel.send(trigger(name, ident))
            sent[name].append(ident)
    mine_a = {name for p in (0, 1) for name in BY_PARTITION[p]}
    await wait_until(lambda: len(a.received) + len(b.received) == 3 * len(ALL), what="every action delivered")
    assert {x.integration for x in a.received} == mine_a
    assert {x.integration for x in b.received} == set(ALL) - mine_a
    for name in ALL:
        owner = a if name in mine_a else b
        assert [x.webhook_id for x in owner.received if x.integration == name] == sent[name]
    assert a.count("trigger", "sent") + b.count("trigger", "sent") == 3 * len(ALL)
    assert a.count("trigger", "delivered") == len(a.received)


async def test_a_webhook_id_is_delivered_once_across_replicas_and_an_owner_restart(
    replicas: Replicas, config: Config
) -> None:
    name = BY_PARTITION[0][0]
    async with AsyncExitStack() as owner_life:
        owner = await owner_life.enter_async_context(replica_context(config, [0, 1, 2, 3]))
        other = await replicas([])
        await owner.channel.send(trigger(name, "wh-retried"))
        await other.channel.send(trigger(name, "wh-retried"))  # Kombo retried it to the other replica
        await other.channel.send(trigger(name, "wh-after"))
        await wait_until(lambda: "wh-after" in owner.ids(), what="the later webhook")
        assert owner.ids() == ["wh-retried", "wh-after"]
        assert owner.count("trigger", "duplicate") == 1
    # The owner restarts: a new channel owns the partition, and rebuilds the window from the topic.
    restarted = await replicas([0, 1, 2, 3])
    await other.channel.send(trigger(name, "wh-retried"))  # redelivered within the window: still a duplicate
    await other.channel.send(trigger(name, None))  # no id: never a duplicate
    await other.channel.send(trigger(name, "wh-new"))
    await wait_until(lambda: "wh-new" in restarted.ids(), what="the webhook after the restart")
    assert restarted.ids() == [None, "wh-new"]  # and nothing from before the restart was replayed
    assert restarted.count("trigger", "duplicate") == 1


async def test_disown_stops_delivery_and_the_next_owner_takes_over(replicas: Replicas) -> None:
    first = await replicas([0, 1, 2, 3])
    second = await replicas([])
    name, witness = BY_PARTITION[1][0], BY_PARTITION[2][0]
    await second.channel.send(trigger(name, "wh-1"))
    await wait_until(lambda: first.ids() == ["wh-1"], what="delivery to the first owner")
    await first.channel.disown([1])
    await second.channel.own([1])
    await second.channel.send(trigger(name, "wh-1"))  # redelivered: the next owner knows it from the topic
    await second.channel.send(trigger(name, "wh-2"))
    await second.channel.send(trigger(witness, "wh-3"))
    await wait_until(lambda: second.ids() == ["wh-2"], what="delivery to the next owner")
    await wait_until(lambda: "wh-3" in first.ids(), what="the first owner still delivering its other partitions")
    assert first.ids() == ["wh-1", "wh-3"]
    assert first.channel.owned == frozenset({0, 2, 3})


def command(integration: str, command_id: str) -> ControlAction:
    return ControlAction("resnapshot", integration, (), None, 1_700_000_000_000, command_id)


def ack(integration: str, command_id: str) -> ControlAction:
    return ControlAction("ack", integration, (), None, 1_700_000_000_000, command_id, "ok", "done")


async def test_a_new_owner_is_handed_the_commands_no_owner_acknowledged_in_the_order_sent(
    replicas: Replicas, config: Config
) -> None:
    name, neighbour = BY_PARTITION[2]
    sender = await replicas([])  # nobody owns partition 2 meanwhile
    for action in (
        command(name, "c-acked"),
        command(neighbour, "c-left"),
        ack(name, "c-acked"),  # its owner acknowledged it: never run again
        command(neighbour, "c-left"),  # sent twice: handed over once
        trigger(name, "wh-old"),  # a trigger is not replayed (the new owner polls at once anyway)
        command(name, "c-late"),
        ack(BY_PARTITION[3][0], "c-late"),  # an ack in another partition answers nothing here
    ):
        await sender.channel.send(action)
    metrics = Metrics()
    channel = ControlChannel(
        config, metrics, partition_of=lambda i: partition_for_key(i.encode(), config.state_topic_partitions)
    )
    await channel.start()
    following: asyncio.Task[None] | None = None
    try:
        unanswered = await channel.own([1, 2])
        assert [(a.integration, a.command_id) for a in unanswered] == [(neighbour, "c-left"), (name, "c-late")]
        replayed = {"kind": "resnapshot", "outcome": "replayed"}
        assert metrics.registry.get_sample_value("relay_control_actions_total", replayed) == 2
        received: list[ControlAction] = []
        following = asyncio.create_task(channel.follow(received.append))
        await sender.channel.send(command(name, "c-left"))  # within the window: a duplicate, not delivered
        await sender.channel.send(command(name, "c-new"))
        await wait_until(lambda: [a.command_id for a in received] == ["c-new"], what="the command sent afterwards")
        assert await channel.own([2]) == []  # owned already: nothing read again
    finally:
        await channel.stop()
        if following is not None:
            await asyncio.wait_for(following, 10)


def registry_entry(integration: str, revision: int, *, age_ms: int = 0) -> RegistryEntry:
    updated_at = format_timestamp_ms(round(time.time() * 1000) - age_ms)
    return RegistryEntry(integration, None, None, False, False, updated_at, "test", updated_at, "test", revision)


async def test_a_new_owner_is_told_which_recent_registry_changes_no_owner_acknowledged(
    replicas: Replicas, config: Config
) -> None:
    acked, later, old = integrations_by_partition(3)[1]
    elsewhere = BY_PARTITION[0][0]
    sender = await replicas([])  # nobody owns partition 1 meanwhile
    for action in (
        ack(acked, registry_ack_id(5)),
        ack(later, registry_ack_id(3)),
        ack(later, "c-1"),  # an operator's command's ack: no registry revision
        ack(old, registry_ack_id(1)),
    ):
        await sender.channel.send(action)
    channel = ControlChannel(
        config, Metrics(), partition_of=lambda i: partition_for_key(i.encode(), config.state_topic_partitions)
    )
    await channel.start()
    following: asyncio.Task[None] | None = None
    try:
        await channel.own([1])
        entries = [
            registry_entry(acked, 5),  # acknowledged
            registry_entry(later, 4),  # changed again after its last ack
            registry_entry(old, 2, age_ms=2 * 3600 * 1000),  # before the window (an hour): its ack is not read
            registry_entry(elsewhere, 1),  # not owned here
        ]
        assert channel.registry_unacknowledged(entries) == [entries[1]]
        following = asyncio.create_task(channel.follow(lambda action: None))
        await sender.channel.send(ack(later, registry_ack_id(4)))  # acks read as they come count too
        await wait_until(lambda: channel.registry_unacknowledged(entries) == [], what="the ack read live")
    finally:
        await channel.stop()
        if following is not None:
            await asyncio.wait_for(following, 10)


async def test_an_unreadable_record_is_skipped_and_counted(replicas: Replicas, config: Config) -> None:
    owner = await replicas([0, 1, 2, 3])
    name = BY_PARTITION[3][0]
    producer = AIOKafkaProducer(**config.kafka_client_kwargs())
    await producer.start()
    try:
        for value in (b"{not json", orjson.dumps({"v": 99}), trigger(BY_PARTITION[0][0], "misplaced").encode()):
            await producer.send_and_wait(config.control_topic, value, key=name.encode(), partition=3)
    finally:
        await producer.stop()
    await owner.channel.send(trigger(name, "wh-ok"))
    await wait_until(lambda: owner.ids() == ["wh-ok"], what="the readable record after the unreadable ones")
    assert owner.count("unknown", "unreadable") == 3


async def test_a_forwarded_webhook_is_answered_after_the_ack_and_reaches_the_owner(
    replicas: Replicas, config: Config
) -> None:
    owner = await replicas([0, 1, 2, 3])
    receiving = await replicas([])
    settings = WebhookSettings.from_config(config)
    assert settings is not None
    known = frozenset(config.integrations)  # what the relay's view of the registry would say
    target = ForwardingTarget(
        receiving.channel, resources_of=lambda integration: config.resources if integration in known else ()
    )
    receiver = WebhookReceiver(settings, target)
    app = build_app(
        receiving.metrics,
        lambda: (True, {}),
        lambda: {},
        Heartbeat(),
        webhook=(settings.path, make_handler(receiver, receiving.metrics)),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{settings.path}"
        name = BY_PARTITION[2][1]
        body = orjson.dumps(sim_webhooks.data_changed(name, ["ats_users"], ident="wh-http"))
        headers = {SIGNATURE_HEADER: sign(body, SECRET)}
        async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
            assert (response.status, orjson.loads(await response.read())) == (200, {"outcome": "accepted"})
            assert receiving.count("trigger", "sent") == 1  # acknowledged before the answer
        await wait_until(lambda: owner.ids() == ["wh-http"], what="the owner's delivery")
        [delivered] = owner.received
        assert (delivered.kind, delivered.integration, delivered.resources) == ("trigger", name, (USERS,))
    finally:
        await runner.cleanup()

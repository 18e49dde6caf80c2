"""Helpers for end-to-end tests: a relay in the test's event loop, the simulator serving it, and a
``read_committed`` consumer collecting what the relay published. Real Kafka, real HTTP, no mocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from jsonschema import Draft202012Validator

from relay.app import Relay
from relay.config import Config, load_config
from relay.contract import EVENT_SCHEMA_FILE, schema_file
from relay.fleet import StateReading
from relay.simulator import Simulator, SimulatorServer

SCHEMAS = Path(__file__).resolve().parents[2] / "deploy" / "schemas"
_validators: dict[str, Draft202012Validator | None] = {}


def _validator(name: str) -> Draft202012Validator | None:
    if name not in _validators:
        path = SCHEMAS / name
        _validators[name] = Draft202012Validator(orjson.loads(path.read_bytes())) if path.is_file() else None
    return _validators[name]


def check_contract(body: dict[str, Any], *, by_resource: bool = True) -> None:
    """``body`` is valid for the committed ``event.schema.json`` and, if there is one (and ``by_resource``), its
    resource's schema, whose ``data.record`` is Kombo's schema of the resource's records."""
    names = [EVENT_SCHEMA_FILE]
    resource = body.get("data", {}).get("resource") if isinstance(body.get("data"), dict) else None
    if by_resource and isinstance(resource, str):
        names.append(schema_file(resource))
    for name in names:
        validator = _validator(name)
        if validator is not None:
            errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(body)]
            assert not errors, f"event {body.get('id')} does not validate against {name}: {errors[:3]}"


@dataclass
class Event:
    topic: str
    key: str
    headers: dict[str, bytes]
    body: dict[str, Any]
    # The Kafka record's timestamp (ms since the epoch): when the relay's producer appended it, by the host's clock.
    timestamp_ms: int | None = None

    @property
    def type(self) -> str:
        return str(self.body["type"])

    @property
    def kind(self) -> str:
        return self.type.rsplit(".", 1)[1]

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.body["data"]
        return data

    @property
    def entity(self) -> str:
        return str(self.body["subject"])


@dataclass
class Collector:
    """Everything committed to the event topics since the collector started, in arrival order."""

    consumer: AIOKafkaConsumer
    events: list[Event] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)

    async def drain(self, timeout_ms: int = 200) -> None:
        batches = await self.consumer.getmany(timeout_ms=timeout_ms)
        for records in batches.values():
            for record in records:
                key = record.key.decode()
                if record.value is None:
                    self.tombstones.append(key)
                    continue
                headers = {name: value for name, value in record.headers}
                body = orjson.loads(record.value)
                check_contract(body)  # every event an end-to-end test sees keeps the published contract
                self.events.append(Event(record.topic, key, headers, body, record.timestamp))

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Event]:
        """Wait until at least ``count`` events arrived; fail with what did arrive otherwise."""
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} events within {timeout}s, got {len(self.events)}")
            await self.drain()
        return self.events

    async def settle(self, quiet_seconds: float = 1.0) -> list[Event]:
        """Read until nothing new arrived for ``quiet_seconds`` (to prove that no further event comes)."""
        while True:
            before = len(self.events) + len(self.tombstones)
            await self.drain(timeout_ms=int(quiet_seconds * 1000))
            if len(self.events) + len(self.tombstones) == before:
                return self.events

    def of(self, entity_id: str) -> list[Event]:
        return [event for event in self.events if event.entity == entity_id]

    def kinds(self, entity_id: str) -> list[str]:
        return [event.kind for event in self.of(entity_id)]


@asynccontextmanager
async def collect(bootstrap_servers: str, topics: list[str], **security: Any) -> AsyncIterator[Collector]:
    """``security``: aiokafka's keyword arguments for a secured listener (``KafkaSecurity.aiokafka_kwargs()``)."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        **security,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    try:
        yield Collector(consumer)
    finally:
        await consumer.stop()


def relay_config(
    *,
    source_url: str,
    api_key: str,
    integrations: list[str],
    bootstrap_servers: str,
    topic_prefix: str,
    **overrides: Any,
) -> Config:
    environ: dict[str, str] = {
        "RELAY_SOURCE_URL": source_url,
        "RELAY_API_KEY": api_key,
        "RELAY_INTEGRATIONS": ",".join(integrations),
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "RELAY_TOPIC_PREFIX": topic_prefix,
        "RELAY_TOPIC_PARTITIONS": "2",
        "RELAY_STATE_TOPIC_PARTITIONS": "2",
        "RELAY_HTTP_HOST": "127.0.0.1",
        "RELAY_HTTP_PORT": "0",
        "RELAY_OVERLAP_SECONDS": "2",
        "RELAY_SOURCE_BACKOFF_INITIAL_SECONDS": "0.01",
        "RELAY_SOURCE_BACKOFF_MAX_SECONDS": "0.05",
        "RELAY_LOG_FORMAT": "console",
    }
    environ.update({f"RELAY_{name.upper()}": str(value) for name, value in overrides.items()})
    return load_config(None, environ)


@dataclass
class World:
    """A simulator and the configuration of a relay pointed at it."""

    sim: Simulator
    server: SimulatorServer
    bootstrap_servers: str
    topic_prefix: str
    integrations: list[str]
    kafka_settings: dict[str, str] = field(default_factory=dict)  # RELAY_KAFKA_* of a secured listener

    def config(self, **overrides: Any) -> Config:
        overrides = {
            **{name.removeprefix("RELAY_").lower(): value for name, value in self.kafka_settings.items()},
            **overrides,
        }
        settings: dict[str, Any] = {
            "source_url": self.server.url,
            "api_key": self.sim.api_key,
            "integrations": self.integrations,
            "bootstrap_servers": self.bootstrap_servers,
            "topic_prefix": self.topic_prefix,
        }
        settings.update({k: overrides.pop(k) for k in list(overrides) if k in settings})
        return relay_config(**settings, **overrides)

    @asynccontextmanager
    async def fleet_replica(
        self, *, state_reading: StateReading | None = None, **overrides: Any
    ) -> AsyncIterator[Relay]:
        """A relay joined to the fleet's group and polling what it owns, as `relay run`, until the block ends (then
        it leaves cleanly). No jitter, a 6 s group session and a 5 s shutdown grace unless ``overrides`` say."""
        settings: dict[str, Any] = {
            "poll_jitter_fraction": "0",
            "group_session_timeout_seconds": "6",
            "shutdown_grace_seconds": "5",
            **overrides,
        }
        relay = Relay(self.config(**settings), state_reading=state_reading)
        await relay.start_http()
        joined = asyncio.create_task(relay.join_fleet(), name="fleet seat")
        polling = asyncio.create_task(relay.scheduler.run(), name="scheduler")
        try:
            yield relay
        finally:
            relay.request_stop()
            await asyncio.wait_for(asyncio.gather(joined, polling), 60)
            await relay.close()

    @asynccontextmanager
    async def relay(self, **overrides: Any) -> AsyncIterator[Relay]:
        """A relay connected to Kafka with its state restored, not yet polling: tests drive polls themselves."""
        relay = Relay(self.config(**overrides))
        await relay.start_http()
        try:
            assert await asyncio.wait_for(relay.connect_kafka(), 60)
            yield relay
        finally:
            await relay.close()

    def topics(self, *resources: str) -> list[str]:
        return [f"{self.topic_prefix}.{resource.replace('/', '.')}" for resource in resources or ("ats/users",)]


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def change_everyone(world: World, collector: Collector, integrations: list[str], name: str) -> list[str]:
    """Update one user of each of ``integrations``; wait until each change is published; return the changed keys."""
    changed = []
    for integration in integrations:
        record = next(iter(world.sim.records(integration, "ats/users", include_deleted=False)))
        world.sim.update(integration, "ats/users", record["id"], {"first_name": name})
        changed.append(f"{integration}:{record['id']}")

    def published() -> bool:
        return all(
            any(e.key == key and e.body["data"]["record"]["first_name"] == name for e in collector.events)
            for key in changed
        )

    deadline = time.monotonic() + 60
    while not published():
        assert time.monotonic() < deadline, f"the changes named {name} were not all published within 60 s"
        await collector.drain()
    return changed

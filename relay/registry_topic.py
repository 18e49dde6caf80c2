"""The registry of integrations in Kafka: its compacted topic created, read to its end, followed live, and written.
The record, the fold and the edits are :mod:`relay.registry`'s (pure); this module only moves records.

How the running relay uses it (one :class:`RegistryTopic`, closed at shutdown)::

    await topic.ensure_topic()                               # RELAY_INTEGRATIONS_TOPIC, compacted, if missing
    await topic.seed(config.integrations, by="relay run")    # RELAY_INTEGRATIONS never heard of, once
    registry = await topic.read()                            # the registry now: poll DefaultResources.pairs(registry)
    async with contextlib.aclosing(topic.follow(registry)) as updates:
        async for update in updates:                         # the registry after each batch of records, and what
            ...                                              # changed (RegistryChange: before, after, kind)

Writes use an idempotent producer with ``acks=all``, keyed by integration id, so Kafka's partitioner keeps every record
of an integration in one partition, in order (the registry's order: :mod:`relay.registry`). Reads are bounded by
``timeout_seconds`` and raise :class:`~relay.errors.KafkaUnavailable` when Kafka does not answer in time;
:meth:`RegistryTopic.follow` waits for ever, retrying, until :meth:`RegistryTopic.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from typing import Any, Final, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from relay import registry as pure
from relay.config import Config
from relay.errors import KafkaAuthorizationFailed, KafkaUnavailable
from relay.registry import Registry, RegistryChange, RegistryEntry
from relay.sink import TOPIC_ALREADY_EXISTS, TOPIC_AUTHORIZATION_FAILED, authorization_failed, principal_of

log = logging.getLogger(__name__)

# Far above what a healthy broker needs to hand over a registry of thousands of integrations, short enough that an
# operator whose Kafka is unreachable hears so before giving up on the command.
DEFAULT_TIMEOUT_SECONDS: Final = 30.0
# Asking the metadata again for a topic just created: at once, then after 0.1 s, doubling (about 3 s in all).
METADATA_ATTEMPTS: Final = 6
METADATA_RETRY_FIRST_SECONDS: Final = 0.1
# One getmany of read() waits at most this long for the records it knows are there.
POLL_TIMEOUT_MS: Final = 200
# While following, one getmany waits at most this long while nothing comes (a record ends it at once, close() too),
# and one fetch waits this long at the broker: the registry changes seldom, and an idle replica should not wake for
# it several times a second (aiokafka's defaults: a fetch every 500 ms, its fetcher waking every 200 ms).
FOLLOW_WAIT_MS: Final = 30_000
FOLLOW_FETCH_MAX_WAIT_MS: Final = 5_000
FOLLOW_FETCHER_WAKE_MS: Final = 5_000  # what its fetcher waits for (an answer, a reset) wakes it at once anyway
# After a Kafka error while following, the next try waits this long (the client retries connections itself).
FOLLOW_RETRY_SECONDS: Final = 1.0


class RegistryUpdate(NamedTuple):
    """The registry after a batch of records, and what they changed (never empty)."""

    registry: Registry
    changes: tuple[RegistryChange, ...]


class RegistryTopic:
    """The registry topic (``RELAY_INTEGRATIONS_TOPIC``) of a configuration. The producer is started by the first
    :meth:`write` and kept until :meth:`close`; each read has a consumer of its own."""

    def __init__(self, config: Config, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._config = config
        self.topic = config.integrations_topic
        self._timeout = timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._closing = asyncio.Event()

    async def __aenter__(self) -> RegistryTopic:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- The topic --------------------------------------------------------------------------------------------------

    async def ensure_topic(self) -> None:
        """Create the registry topic when it is missing: compacted, with the partitions of the state topic."""
        admin = AIOKafkaAdminClient(**self._config.kafka_client_kwargs(), request_timeout_ms=self._timeout_ms)
        try:
            async with self._bounded("create the registry topic"):
                await admin.start()
                if self.topic in await admin.list_topics():
                    return
                response = await admin.create_topics([self._new_topic()])
                for topic, code, *message in response.topic_errors:
                    self._check_created(topic, code, message)
                log.info("registry topic created", extra={"topic": self.topic})
        finally:
            await _quietly(admin.close())

    def _new_topic(self) -> NewTopic:
        replication = self._config.topic_replication_factor
        topic = NewTopic(
            self.topic,
            self._config.state_topic_partitions,
            max(replication, 1),
            topic_configs={"cleanup.policy": "compact"},
        )
        # As relay.sink does: CreateTopics takes -1 as the broker's default, which NewTopic's constructor refuses.
        topic.replication_factor = replication
        return topic

    def _check_created(self, topic: str, code: int, message: list[Any]) -> None:
        if code == TOPIC_AUTHORIZATION_FAILED:
            raise KafkaAuthorizationFailed(
                f"Kafka refused {principal_of(self._config)} Create on the topic {topic!r} "
                f"(TOPIC_AUTHORIZATION_FAILED): grant it Create on the topics prefixed "
                f"{self._config.topic_prefix!r}, or create the topic beforehand (compacted)"
            )
        if code not in (0, TOPIC_ALREADY_EXISTS):
            raise KafkaUnavailable(f"cannot create the registry topic {topic!r}: error {code} {message}")

    # --- Reading ----------------------------------------------------------------------------------------------------

    async def read(self) -> Registry:
        """The registry as of now: every partition read from its beginning to the end it had when the read began."""
        async with self._bounded("read the registry"), self._consumer() as consumer:
            assigned = await self._assign(consumer)
            await consumer.seek_to_beginning(*assigned)
            ends: dict[TopicPartition, int] = await consumer.end_offsets(assigned)
            registry = pure.EMPTY
            remaining = {tp for tp in assigned if ends[tp] > 0}
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=POLL_TIMEOUT_MS)
                registry, _ = registry.fold(_in_order(batches), topic=self.topic)
                remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return registry.moved_to({tp.partition: end for tp, end in ends.items()})

    async def follow(self, registry: Registry) -> AsyncGenerator[RegistryUpdate, None]:
        """Yield an update each time records change the registry after ``registry`` (which :meth:`read` returned,
        or an update before), from the positions it was read to, until :meth:`close` or the iterator is closed.
        Kafka errors while following are logged and retried: the registry a relay polls by does not vanish when
        Kafka does. Raises KafkaUnavailable (or KafkaAuthorizationFailed) when it cannot start reading."""
        async with self._consumer(following=True) as consumer:
            for tp in await self._assign(consumer):
                if tp.partition in registry.positions:
                    consumer.seek(tp, registry.positions[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                while not self._closing.is_set():
                    batches = await self._next_batches(consumer, closing)
                    if batches is None:
                        continue
                    registry, changes = registry.fold(_in_order(batches), topic=self.topic)
                    if changes:
                        yield RegistryUpdate(registry, changes)
            finally:
                closing.cancel()

    @staticmethod
    async def _next_batches(
        consumer: AIOKafkaConsumer, closing: asyncio.Future[Any]
    ) -> dict[TopicPartition, list[Any]] | None:
        """The records that came, waiting up to FOLLOW_WAIT_MS for some; None once closing, or after a Kafka error
        (logged, and the next try FOLLOW_RETRY_SECONDS later)."""
        getting = asyncio.ensure_future(consumer.getmany(timeout_ms=FOLLOW_WAIT_MS))
        try:
            await asyncio.wait((getting, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getting.done():  # closing, or cancelled: a waiting getmany loses no record
                getting.cancel()
        if not getting.done() or getting.cancelled():  # a cancel takes effect later: no result to read yet
            return None
        try:
            batches: dict[TopicPartition, list[Any]] = getting.result()
        except KafkaError as exc:
            log.warning("reading the registry failed; retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
            await asyncio.wait((closing,), timeout=FOLLOW_RETRY_SECONDS)
            return None
        return batches

    @contextlib.asynccontextmanager
    async def _consumer(self, *, following: bool = False) -> AsyncIterator[AIOKafkaConsumer]:
        waits: dict[str, int] = {}
        if following:
            waits = {
                "fetch_max_wait_ms": FOLLOW_FETCH_MAX_WAIT_MS,
                "consumer_timeout_ms": FOLLOW_FETCHER_WAKE_MS,
                "request_timeout_ms": max(self._timeout_ms, 2 * FOLLOW_FETCH_MAX_WAIT_MS),
            }
        consumer = AIOKafkaConsumer(
            **self._config.kafka_client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",  # a position before the log's start: its first record
            **{"request_timeout_ms": self._timeout_ms, **waits},
        )
        try:
            await consumer.start()
            yield consumer
        except KafkaError as exc:
            raise self._refused(exc, doing="read") or KafkaUnavailable(
                f"cannot read the registry topic {self.topic!r}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            await _quietly(consumer.stop())

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        partitions = consumer.partitions_for_topic(self.topic)
        # A topic ensure_topic has just created reaches the metadata the brokers serve a moment later: ask again, a
        # few times (about 3 s in all), before saying it is not there.
        delay = METADATA_RETRY_FIRST_SECONDS
        for attempt in range(METADATA_ATTEMPTS):
            if partitions:
                break
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise KafkaUnavailable(
                f"the registry topic {self.topic!r} is not in Kafka's metadata (RegistryTopic.ensure_topic creates it)"
            )
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        return assigned

    # --- Writing ----------------------------------------------------------------------------------------------------

    async def write(self, entries: Sequence[RegistryEntry]) -> tuple[RegistryEntry, ...]:
        """Write ``entries``, in order, and return them as the registry holds them now (with their revision, the
        offset Kafka gave each) once Kafka acknowledged every one (``acks=all``)."""
        if not entries:
            return ()
        try:
            async with self._bounded("write to the registry", written=True):
                producer = await self._producer_or_start()
                sent = [await producer.send(self.topic, entry.encode(), key=entry.key()) for entry in entries]
                offsets = [(await each).offset for each in sent]
        except BaseException:
            # A producer whose batch failed may hold a broken sequence: the next write starts a fresh one.
            await self._discard_producer()
            raise
        return tuple(
            dataclasses.replace(entry, revision=offset) for entry, offset in zip(entries, offsets, strict=True)
        )

    async def _producer_or_start(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                **self._config.kafka_client_kwargs(),
                acks="all",
                enable_idempotence=True,
                linger_ms=0,
                request_timeout_ms=self._timeout_ms,
            )
            try:
                await producer.start()
            except BaseException:
                await _quietly(producer.stop())
                raise
            self._producer = producer
        return self._producer

    async def _discard_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quietly(producer.stop())

    async def seed(self, integrations: Iterable[str], *, by: str) -> tuple[RegistryEntry, ...]:
        """Add each of ``integrations`` (``RELAY_INTEGRATIONS``) that the registry has never heard of; return the
        entries written. A removed integration is not added back."""
        entries = pure.seed(await self.read(), integrations, at=pure.now_text(), by=by)
        if entries:
            entries = await self.write(entries)
            log.info("registry seeded", extra={"integrations": [entry.integration for entry in entries]})
        return entries

    # --- The rest ---------------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """End :meth:`follow` and stop the producer."""
        self._closing.set()
        await self._discard_producer()

    @property
    def _timeout_ms(self) -> int:
        return max(1000, round(self._timeout * 1000))

    @contextlib.asynccontextmanager
    async def _bounded(self, doing: str, *, written: bool = False) -> AsyncIterator[None]:
        """Within the timeout, with Kafka's errors said as the relay's: KafkaAuthorizationFailed for an ACL that
        refuses, KafkaUnavailable for the rest."""
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except TimeoutError as exc:
            maybe = " (it may still have been written: list the registry to see)" if written else ""
            raise KafkaUnavailable(
                f"could not {doing} ({self.topic!r}) within {self._timeout:g} s: is Kafka at "
                f"{self._config.kafka_bootstrap_servers} reachable?{maybe}"
            ) from exc
        except KafkaError as exc:
            raise self._refused(exc, doing="write" if written else "read") or KafkaUnavailable(
                f"could not {doing} ({self.topic!r}): {type(exc).__name__}: {exc}"
            ) from exc

    def _refused(self, exc: BaseException, *, doing: str) -> KafkaAuthorizationFailed | None:
        return authorization_failed(exc, self._config, doing=doing)


def _in_order(batches: dict[TopicPartition, list[Any]]) -> list[Any]:
    return [record for tp in sorted(batches, key=lambda tp: tp.partition) for record in batches[tp]]


async def _quietly(stopping: Any, timeout: float = 5.0) -> None:
    try:
        await asyncio.wait_for(stopping, timeout)
    except Exception:
        log.debug("stopping a Kafka client failed", exc_info=True)

"""The Kafka side: topics, and transactions that each commit one or more units of work, whole.

The unit of work is one page: its events, the state records it changes and the pair's checkpoint are committed
together, so ``read_committed`` consumers see all of them or none. Nothing in memory changes until
:meth:`KafkaSink.commit` has returned.

Group commit: a transaction costs several round trips to Kafka (adding partitions, producing, ending it), whatever
its size, and one transactional producer runs one transaction at a time. So units that arrive while a transaction is
in flight wait, and the next transaction takes them all, in arrival order, up to :data:`MAX_TRANSACTION_MESSAGES`.
Each unit stays atomic (it is inside one transaction), units keep their order, and every unit of a transaction gets
its outcome: all committed, or all failed with the same error. A lone unit is committed at once, as before.

The producer is transactional (``RELAY_TRANSACTIONAL_ID``), which also makes it idempotent with ``acks=all``.
A second instance with the same transactional id fences this one: :class:`~relay.errors.Fenced` is raised and the
sink refuses to write again. Any other failure aborts the transaction and raises
:class:`~relay.errors.KafkaUnavailable`; the next commit starts from a fresh producer, so a broken connection or a
producer left in an error state never sticks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, ProducerFenced, RecordListTooLargeError

from relay.config import EVENT_TYPES, Config
from relay.errors import Fenced, KafkaAuthorizationFailed, KafkaUnavailable, RecordTooLarge
from relay.metrics import Metrics
from relay.partitioning import partitions_for_keys
from relay.tasks import retrieve

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36
# The control topic's retention: a day, or RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS when that is longer (control_retention_ms).
CONTROL_TOPIC_RETENTION_MS = 24 * 3600 * 1000
# A transaction takes waiting units until it holds this many messages (one unit always goes, however large). A few
# snapshot pages (events and state records) amortize a transaction's round trips; more bought no throughput in the
# snapshot benchmark, only a higher peak of memory (README, Performance).
MAX_TRANSACTION_MESSAGES = 2_500
# Fencing shows up under several names depending on where in the protocol the newer epoch is noticed.
FENCING_ERRORS: tuple[str, ...] = ("ProducerFenced", "InvalidProducerEpoch")
# An ACL refusing what the relay needs: not fencing (no other instance is involved), and not transient either.
AUTHORIZATION_ERRORS: tuple[str, ...] = (
    "TransactionalIdAuthorizationFailed",
    "TopicAuthorizationFailedError",
    "ClusterAuthorizationFailedError",
    "GroupAuthorizationFailedError",
)
TOPIC_AUTHORIZATION_FAILED = 29


def principal_of(config: Config) -> str:
    """The principal Kafka most likely knows this relay as, for messages that ask an operator to grant it an ACL."""
    security = config.kafka_security
    if security.uses_sasl:
        return f"User:{security.sasl_username}"
    if security.ssl_certfile is not None:
        return f"the principal of the certificate RELAY_KAFKA_SSL_CERTFILE ({security.ssl_certfile})"
    return "this relay's principal"


def authorization_failed(
    exc: BaseException, config: Config, *, doing: str, transactional_id: str | None = None
) -> KafkaAuthorizationFailed | None:
    """Kafka's refusal ``exc`` as an error naming the principal, the resource and the operation to grant (``doing``:
    ``write`` while committing, ``read`` while reading the state topic; ``transactional_id``: the producer's, by
    default the configured one); None if ``exc`` is not an ACL refusal."""
    name = type(exc).__name__
    if name not in AUTHORIZATION_ERRORS:
        return None
    who = principal_of(config)
    refused = exc.args[0] if exc.args else None
    if name == "TransactionalIdAuthorizationFailed":
        what = f"Write on the transactional id {transactional_id or config.transactional_id!r}"
        grant = "Write and Describe on that transactional id (or a prefix of it)"
    elif name == "TopicAuthorizationFailedError":
        topics = sorted(refused) if isinstance(refused, set | frozenset | list | tuple) else [str(refused)]
        operation = "Read" if doing == "read" else "Write"
        what = f"{operation} on the topic(s) {', '.join(map(repr, topics))}"
        grant = f"{operation} and Describe on those topics (or on the prefix {config.topic_prefix!r})"
    elif name == "GroupAuthorizationFailedError":
        what = f"Read on the consumer group {refused!r}"
        grant = "Read on that group"
    else:
        what = "a cluster operation"
        grant = "the cluster ACL its Kafka version needs (IdempotentWrite on older brokers)"
    return KafkaAuthorizationFailed(f"Kafka refused {who} {what} ({name}): grant it {grant}")


class OutMessage(NamedTuple):  # immutable, and several times faster to build than a frozen dataclass
    topic: str
    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None


def check_record_sizes(messages: Sequence[OutMessage], limit: int) -> None:
    """Raise RecordTooLarge for a unit holding a record over ``limit`` (RELAY_KAFKA_MAX_RECORD_BYTES) bytes.

    Called where a unit is made, before it is handed to a sink: Kafka would refuse the whole transaction, other
    pairs' pages with it, on every retry; and a unit refused by the sink itself, while earlier pages of its poll are
    still committing, would let the later ones commit past it."""
    for message in messages:
        size = len(message.key) + (0 if message.value is None else len(message.value))
        if size > limit:
            raise RecordTooLarge(
                f"the record with key {message.key[:200]!r} for topic {message.topic!r} is {size} bytes, over "
                f"RELAY_KAFKA_MAX_RECORD_BYTES={limit}: its page is not written and its pair backs off"
            )


class Committer(Protocol):
    """What commits a unit of work: one :class:`KafkaSink`, or the producers of a fleet's partitions."""

    async def commit(self, messages: Sequence[OutMessage]) -> None: ...


class _Unit(NamedTuple):
    """Messages that must commit together, and the future that tells their caller how it went."""

    messages: Sequence[OutMessage]
    outcome: asyncio.Future[None]


class KafkaSink:
    """A transactional producer plus the admin work of creating topics."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        commit_timeout_seconds: float | None = None,
        transactional_id: str | None = None,
        fencing_is_fatal: bool = True,
    ) -> None:
        self._config = config
        self.transactional_id = config.transactional_id if transactional_id is None else transactional_id
        # Alone, being fenced means a twin with our transactional id: the relay stops (exit 4). In a fleet, it means
        # that another replica owns our partition now, which is no fault: relay_fenced stays 0.
        self._fencing_is_fatal = fencing_is_fatal
        self._metrics = metrics
        self._commit_timeout = (
            config.kafka_commit_timeout_seconds if commit_timeout_seconds is None else commit_timeout_seconds
        )
        self._producer: AIOKafkaProducer | None = None
        self._stopped = False
        self._starting = asyncio.Lock()
        # Units waiting for a transaction, oldest first, and the future of the transaction in flight (None when idle).
        self._waiting: deque[_Unit] = deque()
        self._in_flight: asyncio.Future[None] | None = None
        self.fenced = False
        self.reachable = False
        # Producers started so far, and the one under which the state was last read from the state topic. A new
        # producer (after a failed commit) may have fenced another instance whose commits memory has not seen, so
        # nothing is committed under it until the state was read again (see :meth:`state_read`).
        self._generation = 0
        self._state_generation: int | None = None

    async def ensure_topics(self) -> None:
        """Create the event topics, the compacted state topic and the control topic when they are missing."""
        config = self._config
        await create_missing_topics(
            config,
            [
                *(new_topic(config, topic, config.topic_partitions) for topic in config.event_topics()),
                new_topic(config, config.state_topic, config.state_topic_partitions, {"cleanup.policy": "compact"}),
                # Short-lived triggers for the owner of an integration (relay.control), partitioned like the state
                # topic, kept for as long as a new owner reads them back.
                new_topic(
                    config,
                    config.control_topic,
                    config.state_topic_partitions,
                    {"cleanup.policy": "delete", "retention.ms": str(control_retention_ms(config))},
                ),
            ],
        )

    async def start(self) -> None:
        await self._producer_or_start()

    async def _producer_or_start(self) -> AIOKafkaProducer:
        if self.fenced:
            raise Fenced("this relay was fenced by another instance with the same transactional id")
        async with self._starting:  # the health probe and a commit may both want a producer at once
            if self._stopped:  # its partition was handed over: a probe or commit still running must not reopen it
                raise KafkaUnavailable(f"the producer {self.transactional_id!r} was stopped")
            if self._producer is None:
                self._producer = await self._new_producer()
            return self._producer

    async def _new_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            **self._config.kafka_client_kwargs(),
            transactional_id=self.transactional_id,
            acks="all",
            enable_idempotence=True,
            compression_type="zstd",
            linger_ms=5,
            max_batch_size=512 * 1024,
            max_request_size=8 * 1024 * 1024,
            request_timeout_ms=30_000,
            # Longer than a commit may take: the relay gives up on a transaction (and aborts it) before the broker
            # would, since a broker-side timeout shows up as ProducerFenced, which would be mistaken for a zombie.
            transaction_timeout_ms=int((self._commit_timeout + 30) * 1000),
        )
        try:
            await producer.start()  # also InitProducerId: aborts what an earlier run of this id left open
        except asyncio.CancelledError:  # a claim or probe given up: never leave a client open behind
            await _quietly_stop(producer, 1.0)
            raise
        except Exception as exc:
            await _quietly_stop(producer)
            self.reachable = False
            raise self._classify(exc) from exc
        self.reachable = True
        self._generation += 1
        return producer

    def state_read(self) -> None:
        """Say that the state was just read from the state topic, after :meth:`start`: commits may go ahead."""
        self._state_generation = self._generation

    async def probe(self, timeout: float = 5.0) -> bool:
        """Check that Kafka answers (for readiness while no page is being committed); start a producer if needed."""
        if self.fenced:
            return False
        try:
            producer = await asyncio.wait_for(self._producer_or_start(), timeout)
            self.reachable = bool(await asyncio.wait_for(producer.client.force_metadata_update(), timeout))
        except (TimeoutError, Exception):
            self.reachable = False
        return self.reachable

    async def commit(self, messages: Sequence[OutMessage]) -> None:
        """Commit ``messages`` atomically; raise :class:`SinkError` if they did not commit.

        One transaction runs at a time (the producer is shared by every pair); units that arrive meanwhile are
        committed together by the next one (see the module docstring). The caller that finds no transaction in flight
        runs the next one itself, so cancelling it (shutdown after the grace period) aborts that transaction.
        """
        unit = _Unit(messages, asyncio.get_running_loop().create_future())
        self._waiting.append(unit)
        try:
            while not unit.outcome.done():
                if self._in_flight is None:
                    await self._commit_waiting()
                else:
                    await asyncio.wait((unit.outcome, self._in_flight), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if unit in self._waiting:  # not taken by a transaction yet: it never will be
                self._waiting.remove(unit)
            unit.outcome.add_done_callback(retrieve)
            raise
        unit.outcome.result()  # raises the transaction's error

    async def _commit_waiting(self) -> None:
        """Run one transaction with the oldest waiting units, and give each of them the outcome."""
        in_flight = self._in_flight = asyncio.get_running_loop().create_future()
        units = self._take_units()
        try:
            await self._commit_units(units)
        except BaseException as exc:
            error = (
                KafkaUnavailable("the transaction was abandoned: the relay is shutting down")
                if isinstance(exc, asyncio.CancelledError)
                else exc
            )
            # The units still waiting fail too: a pair's later page must never commit after its earlier one failed
            # (it would move the checkpoint past events that are not in Kafka), and the sink does not know pairs.
            units.extend(self._waiting)
            self._waiting.clear()
            for unit in units:
                if not unit.outcome.done():
                    unit.outcome.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            for unit in units:
                if not unit.outcome.done():
                    unit.outcome.set_result(None)
        finally:
            self._in_flight = None
            in_flight.set_result(None)

    def _take_units(self) -> list[_Unit]:
        units = [self._waiting.popleft()]
        count = len(units[0].messages)
        while self._waiting and count + len(self._waiting[0].messages) <= MAX_TRANSACTION_MESSAGES:
            unit = self._waiting.popleft()
            units.append(unit)
            count += len(unit.messages)
        return units

    async def _commit_units(self, units: list[_Unit]) -> None:
        producer = await self._producer_or_start()
        if self._state_generation not in (None, self._generation):
            raise KafkaUnavailable("the Kafka producer was restarted since the state was read; reading it again")
        messages = units[0].messages if len(units) == 1 else [m for unit in units for m in unit.messages]
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._transaction(producer, messages), self._commit_timeout)
        except (Exception, asyncio.CancelledError) as exc:
            error = self._classify(exc)
            self._metrics.transaction_errors.labels(type(error).__name__).inc()
            if isinstance(exc, asyncio.CancelledError):
                # Shutting down after the grace period: do not wait long for an abort Kafka may not answer. A
                # transaction left open is aborted by the next start with this transactional id.
                await self._discard_producer(abort=True, timeout=1.0)
                raise
            await self._discard_producer(abort=not self.fenced)
            raise error from exc
        self.reachable = True
        self._metrics.transaction_duration.observe(time.monotonic() - started)
        self._metrics.transaction_units.observe(len(units))

    async def _transaction(self, producer: AIOKafkaProducer, messages: Sequence[OutMessage]) -> None:
        await producer.begin_transaction()
        # One batch per partition (aiokafka's create_batch / send_batch), not one send() per message: a send() costs a
        # coroutine, a future, a metadata lookup and aiokafka's pure-Python murmur2, which made producing the largest
        # part of the per-record cost. Keyed messages get the partition aiokafka's default partitioner would give them.
        batches: dict[tuple[str, int], Any] = {}
        deliveries = []
        for message, partition in zip(messages, await _partitions(producer, messages), strict=True):
            topic = message.topic
            batch = batches.get((topic, partition))
            if batch is None:
                batch = batches[topic, partition] = producer.create_batch()
            headers = message.headers or []
            if batch.append(timestamp=None, key=message.key, value=message.value, headers=headers) is None:
                # Full: send it, and start the partition's next batch (the first record of a batch always fits).
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[topic, partition] = producer.create_batch()
                batch.append(timestamp=None, key=message.key, value=message.value, headers=headers)
        for (topic, partition), batch in batches.items():
            batch.close()
            deliveries.append(await producer.send_batch(batch, topic, partition=partition))
        # A batch the broker refused (a record over the topic's size limit, a batch expired while a partition had no
        # leader) fails only its own future: aiokafka would still commit the rest of the transaction, events missing
        # and checkpoint advanced. So every delivery must have succeeded before the commit; otherwise it aborts.
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        if failed := next((result for result in results if isinstance(result, BaseException)), None):
            raise failed
        await producer.commit_transaction()

    def _classify(self, exc: BaseException) -> Fenced | KafkaAuthorizationFailed | KafkaUnavailable | RecordTooLarge:
        if isinstance(exc, ProducerFenced) or type(exc).__name__ in FENCING_ERRORS:
            self.fenced = True
            if self._fencing_is_fatal:
                self._metrics.fenced.set(1)
            return Fenced(f"fenced by another instance with transactional id {self.transactional_id!r}")
        if refused := authorization_failed(exc, self._config, doing="write", transactional_id=self.transactional_id):
            return refused
        if isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError):
            # Kafka answered: it is not down. Its topic limit is below RELAY_KAFKA_MAX_RECORD_BYTES. The producer is
            # replaced all the same (an idempotent producer's sequence is broken by the refused batch), so the next
            # commit of any pair reads the state back first, once.
            return RecordTooLarge(
                f"Kafka refused a record of this transaction as too large ({type(exc).__name__}): a topic's "
                "max.message.bytes is below RELAY_KAFKA_MAX_RECORD_BYTES; lower the setting to match it"
            )
        self.reachable = False
        if isinstance(exc, asyncio.TimeoutError | TimeoutError):
            return KafkaUnavailable("Kafka did not commit the transaction in time")
        return KafkaUnavailable(f"Kafka transaction failed: {type(exc).__name__}: {exc}")

    async def _discard_producer(self, *, abort: bool, timeout: float = 10.0) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if abort:
            try:
                await asyncio.wait_for(producer.abort_transaction(), timeout)
            except Exception:
                log.debug("abort after a failed transaction did not succeed", exc_info=True)
        await _quietly_stop(producer, timeout)

    async def stop(self) -> None:
        """Close the producer for good (after a start in progress ends: it would leave a client open)."""
        async with self._starting:
            self._stopped = True
        await self._discard_producer(abort=False, timeout=5.0)


async def _partitions(producer: AIOKafkaProducer, messages: Sequence[OutMessage]) -> list[int]:
    """The partition of each message: its own, or the default partitioner's for its key (hashed per topic at once)."""
    partitions = [-1 if message.partition is None else message.partition for message in messages]
    keyed: dict[str, list[int]] = {}
    for index, message in enumerate(messages):
        if message.partition is None:
            keyed.setdefault(message.topic, []).append(index)
    for topic, indexes in keyed.items():
        count = len(await producer.partitions_for(topic))
        chosen = partitions_for_keys([messages[i].key for i in indexes], count)
        for index, partition in zip(indexes, chosen, strict=True):
            partitions[index] = partition
    return partitions


async def _quietly_stop(producer: Any, timeout: float = 10.0) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except Exception:
        log.debug("producer stop failed", exc_info=True)


async def ensure_event_topics(config: Config, resources: Iterable[str]) -> None:
    """Create the event topics of ``resources`` when they are missing: for the resources an integration of the
    registry names itself (``relay integrations add --resources``), which RELAY_RESOURCES* do not list, so that its
    owner's first transaction does not depend on the brokers creating topics on their own."""
    topics = dict.fromkeys(config.topic_for(resource, event) for resource in resources for event in EVENT_TYPES)
    await create_missing_topics(config, [new_topic(config, topic, config.topic_partitions) for topic in topics])


async def create_missing_topics(config: Config, topics: Sequence[NewTopic]) -> None:
    """Create those of ``topics`` that do not exist; raises KafkaAuthorizationFailed
    when Kafka refuses Create, KafkaUnavailable otherwise."""
    admin = AIOKafkaAdminClient(**config.kafka_client_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [topic for topic in topics if topic.name not in existing]
        if wanted:
            response = await admin.create_topics(wanted)
            for topic, code, *message in response.topic_errors:
                if code == TOPIC_AUTHORIZATION_FAILED:
                    raise KafkaAuthorizationFailed(
                        f"Kafka refused {principal_of(config)} Create on the topic {topic!r} "
                        f"(TOPIC_AUTHORIZATION_FAILED): grant it Create on the topics prefixed "
                        f"{config.topic_prefix!r}, or create the topics beforehand"
                    )
                if code not in (0, TOPIC_ALREADY_EXISTS):
                    raise KafkaUnavailable(f"cannot create topic {topic!r}: error {code} {message}")
            log.info("topics created", extra={"topics": [t.name for t in wanted]})
    except KafkaError as exc:
        raise KafkaUnavailable(f"cannot create topics: {exc}") from exc
    finally:
        await admin.close()


def control_retention_ms(config: Config) -> int:
    """How long the control topic keeps its records: a day, longer than any owner handover, or the de-duplication
    window (RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS) when that is longer. A new owner reads the window back from the topic
    (the webhooks already acted on, the commands and registry changes nobody acknowledged): records deleted before
    the window ends would be acted on twice, or not acknowledged."""
    return max(CONTROL_TOPIC_RETENTION_MS, math.ceil(config.kombo_webhook_dedup_seconds * 1000))


def new_topic(config: Config, name: str, partitions: int, configs: dict[str, str] | None = None) -> NewTopic:
    replication = config.topic_replication_factor
    topic = NewTopic(name, partitions, max(replication, 1), topic_configs=configs or {})
    # CreateTopics (v4+) takes -1 as "the broker's default.replication.factor", but aiokafka's NewTopic
    # refuses -1 in its constructor, so it is set after construction; the request carries it unchanged.
    topic.replication_factor = replication
    return topic

"""Moving the relay's state to a new state topic placed for another partition count (``relay state repartition``).

What belongs here: the copy itself, in two layers. Pure (no I/O): which records a copy writes and where
(:func:`placed_records`: every pair's latest state, encoded as ``relay run`` writes it, each integration's records on
the partition ``RELAY_STATE_TOPIC_PARTITIONS=N`` places it in), how a copy is checked against its source
(:func:`first_difference`) and the report of what was done. Then the Kafka steps (:class:`Repartition`): read the
source to its end, create the target, write, read the target back as ``relay run`` would, grow the control topic.
The command's arguments, exit codes and printing are :mod:`relay.state_cli`'s.

Why the copy re-encodes rather than copying records byte for byte: only the latest state of each pair is wanted (the
compacted view: tombstoned entities and superseded values left behind), and the state store the relay restores is
that view already. Re-encoding it with the relay's own encoder (:meth:`relay.state.StateStore.records_for`) places
each record exactly where a relay with N partitions looks for it, and writes old-format fingerprints in the current
one (the relay reads both alike).

Why the fleet must be stopped: a replica writing the source while it is copied would leave the copy behind it. The
command refuses while the group has a member, and, after the copy, fails when the group gained one or the source's end
offsets moved meanwhile. The source topic is only read, never changed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from relay.config import Config
from relay.errors import KafkaAuthorizationFailed, KafkaUnavailable, StateError
from relay.sink import TOPIC_ALREADY_EXISTS, TOPIC_AUTHORIZATION_FAILED, authorization_failed, principal_of
from relay.state import Pair, PairState, StateStore
from relay.state_records import StateRecord
from relay.state_show import GroupView
from relay.state_topic import restore

MAX_REQUEST_BYTES: Final = 8 * 1024 * 1024


class FleetRunning(Exception):
    """A member of the fleet's consumer group is alive (or the source changed during the copy): nothing to trust."""


class TargetNotUsable(Exception):
    """The target topic exists and holds records, or is not what ``relay run`` would create."""


class CopyMismatch(Exception):
    """The copy read back differs from the source: the message names the first pair that differs."""


# --- Pure: what a copy writes, and how it is checked -----------------------------------------------------------------


def placed_records(source: StateStore, partitions: int) -> Iterator[StateRecord]:
    """Every record that holds ``source``'s latest state, placed for ``partitions``: per pair its shapes, its
    entities' fingerprints and its checkpoint (always written, so that every pair of the source exists in the copy,
    a forgotten one as the default checkpoint it restores to)."""
    placement = StateStore(partitions)  # partition_of and the encoding, exactly as relay run with N partitions
    for (integration, resource), state in sorted(source.pairs(), key=_by_pair):
        yield from placement.records_for(
            integration,
            resource,
            delta=state.entities,
            new_shapes=state.shapes.shape_records(),
            checkpoint=state.checkpoint,
        )


def _by_pair(item: tuple[Pair, PairState]) -> Pair:
    return item[0]


@dataclass(frozen=True, slots=True)
class Difference:
    """The first way in which a pair's copy differs from its source."""

    pair: Pair
    what: str

    def __str__(self) -> str:
        integration, resource = self.pair
        return f"integration {integration!r} resource {resource!r}: {self.what}"


def first_difference(source: StateStore, copy: StateStore) -> Difference | None:
    """The first pair (in order) whose state in ``copy`` is not its state in ``source`` (checkpoint, entities'
    fingerprints, record shapes), or that one of them has and the other not; None when they hold the same."""
    source_pairs = dict(source.pairs())
    copy_pairs = dict(copy.pairs())
    for pair in sorted(source_pairs.keys() | copy_pairs.keys()):
        original, copied = source_pairs.get(pair), copy_pairs.get(pair)
        if copied is None:
            return Difference(pair, "missing from the copy")
        if original is None:
            return Difference(pair, "in the copy but not in the source")
        what = _pair_difference(original, copied)
        if what is not None:
            return Difference(pair, what)
    return None


def _pair_difference(original: PairState, copied: PairState) -> str | None:
    if copied.checkpoint != original.checkpoint:
        return f"checkpoint {copied.checkpoint} in the copy, {original.checkpoint} in the source"
    if copied.entities != original.entities:
        missing = original.entities.keys() - copied.entities.keys()
        extra = copied.entities.keys() - original.entities.keys()
        changed = sorted(k for k in original.entities.keys() & copied.entities.keys() if _differs(original, copied, k))
        parts = [
            f"{len(missing)} entit(ies) missing (first {min(missing)!r})" if missing else "",
            f"{len(extra)} entit(ies) not in the source (first {min(extra)!r})" if extra else "",
            f"{len(changed)} fingerprint(s) differ (first {changed[0]!r})" if changed else "",
        ]
        return "; ".join(part for part in parts if part)
    if dict(copied.shapes.shape_records()) != dict(original.shapes.shape_records()):
        return "record shapes differ"
    return None


def _differs(original: PairState, copied: PairState, entity_id: str) -> bool:
    return original.entities[entity_id] != copied.entities[entity_id]


@dataclass(slots=True)
class PartitionLoad:
    """What one partition of the target holds after the copy."""

    partition: int
    integrations: set[str] = field(default_factory=set)
    pairs: set[Pair] = field(default_factory=set)
    records: int = 0


def partition_loads(
    source: StateStore, partitions: int, records_per_partition: Mapping[int, int]
) -> list[PartitionLoad]:
    """Per partition of the target (every one, empty ones too): its integrations, pairs and records written."""
    loads = [PartitionLoad(p, records=records_per_partition.get(p, 0)) for p in range(partitions)]
    placement = StateStore(partitions)
    for integration, resource in (pair for pair, _ in source.pairs()):
        load = loads[placement.partition_of(integration)]
        load.integrations.add(integration)
        load.pairs.add((integration, resource))
    return loads


@dataclass(frozen=True, slots=True)
class RepartitionReport:
    """What ``relay state repartition`` did."""

    source_topic: str
    source_partitions: int
    source_records: int  # read, tombstones and superseded values included
    target_topic: str
    partitions: int
    created: bool  # False: the target existed, empty
    loads: tuple[PartitionLoad, ...]
    control_topic: str
    control_partitions: int | None  # before the command; None: the topic does not exist (relay run creates it)

    @property
    def pairs(self) -> int:
        return sum(len(load.pairs) for load in self.loads)

    @property
    def integrations(self) -> int:
        return sum(len(load.integrations) for load in self.loads)

    @property
    def records(self) -> int:
        return sum(load.records for load in self.loads)

    @property
    def control_grown(self) -> bool:
        return self.control_partitions is not None and self.control_partitions < self.partitions

    def settings(self) -> dict[str, str]:
        """The settings every replica must get before the fleet starts again."""
        return {"RELAY_STATE_TOPIC": self.target_topic, "RELAY_STATE_TOPIC_PARTITIONS": str(self.partitions)}


def render_text(report: RepartitionReport) -> list[str]:
    created = "created" if report.created else "existing, empty,"
    lines = [
        f"read {report.source_records} record(s) of {report.source_topic} ({report.source_partitions} partition(s))",
        f"copied {report.pairs} pair(s) of {report.integrations} integration(s) as {report.records} record(s) to "
        f"{created} {report.target_topic} ({report.partitions} partition(s)), and verified the copy",
        "  PARTITION  INTEGRATIONS  PAIRS  RECORDS",
        *(
            f"  {load.partition:<9}  {len(load.integrations):<12}  {len(load.pairs):<5}  {load.records}"
            for load in report.loads
        ),
    ]
    if report.control_grown:
        lines.append(
            f"grew the control topic {report.control_topic} from {report.control_partitions} to "
            f"{report.partitions} partitions"
        )
    elif report.control_partitions is None:
        lines.append(f"the control topic {report.control_topic} does not exist: relay run creates it")
    else:
        lines.append(f"the control topic {report.control_topic} has {report.control_partitions} partitions: enough")
    lines.append(f"{report.source_topic} is unchanged: delete it once the fleet runs on {report.target_topic}")
    lines.append("next: set on every replica, then start the fleet:")
    lines.extend(f"  {name}={value}" for name, value in report.settings().items())
    return lines


def render_json(report: RepartitionReport) -> dict[str, Any]:
    return {
        "source": {"topic": report.source_topic, "partitions": report.source_partitions},
        "records_read": report.source_records,
        "target": {"topic": report.target_topic, "partitions": report.partitions, "created": report.created},
        "pairs": report.pairs,
        "integrations": report.integrations,
        "records_written": report.records,
        "verified": True,
        "partitions": [
            {
                "partition": load.partition,
                "integrations": len(load.integrations),
                "pairs": len(load.pairs),
                "records": load.records,
            }
            for load in report.loads
        ],
        "control_topic": {
            "topic": report.control_topic,
            "partitions_before": report.control_partitions,
            "grown_to": report.partitions if report.control_grown else None,
        },
        "settings": report.settings(),
    }


# --- Kafka ------------------------------------------------------------------------------------------------------------

GroupDescriber = Callable[[], Awaitable[GroupView]]  # the fleet's consumer group as Kafka describes it now
Offsets = dict[TopicPartition, int]


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics the command deals with, as Kafka describes them: partition counts (None: missing)."""

    source: int | None
    target: int | None
    control: int | None


class Repartition:
    """The Kafka steps of a repartition of ``config``'s state topic into ``target`` (the configuration ``relay run``
    will have afterwards: its state topic and partition count are the new ones). Each step raises
    :class:`~relay.errors.KafkaAuthorizationFailed` for an ACL's refusal, :class:`~relay.errors.KafkaUnavailable`
    for anything else Kafka does not do."""

    def __init__(self, config: Config, target: Config, *, timeout_ms: int) -> None:
        self.config = config
        self.target = target
        self._timeout_ms = timeout_ms

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[AIOKafkaAdminClient]:
        admin = AIOKafkaAdminClient(**self.config.kafka_client_kwargs(), request_timeout_ms=self._timeout_ms)
        try:
            await admin.start()
            yield admin
        except KafkaError as exc:
            raise authorization_failed(exc, self.config, doing="read") or KafkaUnavailable(
                f"a request to Kafka's admin API failed (topics, their configuration or partitions): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), 5)

    async def topics(self) -> Topics:
        async with self._admin() as admin:
            existing = set(await admin.list_topics())
            names = [self.config.state_topic, self.target.state_topic, self.config.control_topic]
            wanted = [name for name in names if name in existing]
            counts = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(wanted)} if wanted else {}
        return Topics(*(counts.get(name) for name in names))

    async def check_target_usable(self, partitions: int) -> None:
        """Raise TargetNotUsable unless the existing target topic is empty, compacted and has ``partitions``."""
        topic = self.target.state_topic
        if partitions != self.target.state_topic_partitions:
            raise TargetNotUsable(
                f"--state-topic {topic!r} exists with {partitions} partition(s), not "
                f"--partitions {self.target.state_topic_partitions}: delete it, or choose another name"
            )
        held = await self.records_held(topic)
        if held:
            raise TargetNotUsable(
                f"--state-topic {topic!r} exists and holds {held} record(s): the copy goes only to a new or empty "
                "topic (a failed earlier copy? delete the topic and run again)"
            )
        async with self._admin() as admin:
            [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        [(error_code, error_message, _, _, entries)] = response.resources
        if error_code == TOPIC_AUTHORIZATION_FAILED:
            raise KafkaAuthorizationFailed(
                f"Kafka refused {principal_of(self.config)} DescribeConfigs on the topic {topic!r} "
                "(TOPIC_AUTHORIZATION_FAILED): grant it DescribeConfigs on that topic"
            )
        if error_code:
            raise KafkaUnavailable(f"cannot describe the settings of {topic!r}: error {error_code} {error_message}")
        policy = {entry[0]: entry[1] for entry in entries}.get("cleanup.policy", "")
        if "compact" not in str(policy).split(","):
            raise TargetNotUsable(
                f"--state-topic {topic!r} exists with cleanup.policy={policy}: a state topic must be compacted "
                "(cleanup.policy=compact), or retention would delete the state"
            )

    async def records_held(self, topic: str) -> int:
        """How many offsets ``topic``'s partitions span (0 for a topic that never held a record)."""
        start, end = await self.offsets(topic)
        return sum(end[tp] - start[tp] for tp in end)

    async def offsets(self, topic: str) -> tuple[Offsets, Offsets]:
        """The beginning and end offsets of every partition of ``topic``."""
        async with self._consumer() as consumer:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise KafkaUnavailable(f"the topic {topic!r} is not in Kafka's metadata")
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            return await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)

    @contextlib.asynccontextmanager
    async def _consumer(self) -> AsyncIterator[AIOKafkaConsumer]:
        consumer = AIOKafkaConsumer(
            **self.config.kafka_client_kwargs(), group_id=None, request_timeout_ms=self._timeout_ms
        )
        try:
            await consumer.start()
            yield consumer
        except KafkaError as exc:
            raise authorization_failed(exc, self.config, doing="read") or KafkaUnavailable(
                f"cannot read the offsets of the topics: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5)

    async def read(self, config: Config) -> tuple[StateStore, int]:
        """``config``'s state topic read as ``relay run`` with ``config`` reads it (to its end, committed records
        only, every record checked to be where its partition count places it): the store, and the records read."""
        store = StateStore(config.state_topic_partitions)
        try:
            count = await restore(store, config.state_topic, self.config.kafka_client_kwargs())
        except KafkaError as exc:
            raise authorization_failed(exc, self.config, doing="read") or KafkaUnavailable(
                f"cannot read the state topic {config.state_topic!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return store, count

    async def create_target(self) -> None:
        """Create the target topic as ``relay run`` creates a state topic: compacted, with the new partition count
        and RELAY_TOPIC_REPLICATION_FACTOR."""
        topic = self.target.state_topic
        replication = self.config.topic_replication_factor
        new = NewTopic(
            topic, self.target.state_topic_partitions, max(replication, 1), topic_configs={"cleanup.policy": "compact"}
        )
        new.replication_factor = replication  # -1, the broker's default: NewTopic refuses it, CreateTopics takes it
        async with self._admin() as admin:
            response = await admin.create_topics([new])
        for name, code, *message in response.topic_errors:
            if code == TOPIC_AUTHORIZATION_FAILED:
                raise KafkaAuthorizationFailed(
                    f"Kafka refused {principal_of(self.config)} Create on the topic {name!r} "
                    "(TOPIC_AUTHORIZATION_FAILED): grant it Create on that topic, or create it beforehand (empty, "
                    f"compacted, {self.target.state_topic_partitions} partitions)"
                )
            if code == TOPIC_ALREADY_EXISTS:
                raise TargetNotUsable(f"--state-topic {name!r} was created by someone else meanwhile")
            if code:
                raise KafkaUnavailable(f"cannot create the topic {name!r}: error {code} {message}")

    async def write(self, records: Iterator[StateRecord]) -> dict[int, int]:
        """Write ``records`` to the target, each to its partition, acknowledged by every in-sync replica
        (``acks=all``, idempotent: a retried send is not doubled); return how many went to each partition."""
        topic = self.target.state_topic
        producer = AIOKafkaProducer(
            **self.config.kafka_client_kwargs(),
            acks="all",
            enable_idempotence=True,
            compression_type="zstd",
            linger_ms=5,
            max_batch_size=512 * 1024,
            max_request_size=MAX_REQUEST_BYTES,
            request_timeout_ms=self._timeout_ms,
        )
        written: dict[int, int] = {}
        try:
            await producer.start()
            # One batch per partition, as relay.sink does: a send() per record made writing most of the command's time.
            batches: dict[int, Any] = {}
            deliveries: list[asyncio.Future[Any]] = []
            for record in records:
                batch = batches.get(record.partition)
                if batch is None:
                    batch = batches[record.partition] = producer.create_batch()
                if batch.append(timestamp=None, key=record.key, value=record.value) is None:
                    # Full: send it, and start the partition's next batch (the first record of a batch always fits).
                    deliveries.append(await producer.send_batch(batch, topic, partition=record.partition))
                    batch = batches[record.partition] = producer.create_batch()
                    batch.append(timestamp=None, key=record.key, value=record.value)
                written[record.partition] = written.get(record.partition, 0) + 1
            for partition, batch in batches.items():
                batch.close()
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*deliveries)
        except KafkaError as exc:
            raise authorization_failed(exc, self.config, doing="write") or KafkaUnavailable(
                f"cannot write to {topic!r}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10)
        return written

    async def grow_control_topic(self) -> None:
        """Give the control topic the target's partition count: relay run refuses fewer (relay.control). Adding
        partitions loses nothing: it holds only short-lived triggers, and the records of an integration left in its
        old partition are passed over by its new owner."""
        topic = self.config.control_topic
        try:
            async with self._admin() as admin:
                await admin.create_partitions({topic: NewPartitions(self.target.state_topic_partitions)})
        except KafkaAuthorizationFailed as exc:
            raise KafkaAuthorizationFailed(
                f"Kafka refused {principal_of(self.config)} Alter on the control topic {topic!r}: grant it Alter on "
                f"that topic, or recreate the topic with {self.target.state_topic_partitions} partitions (the copy "
                "is made and verified)"
            ) from exc


class Steps(Protocol):
    """The Kafka steps :func:`repartition` takes, in the order it takes them (:class:`Repartition` does them)."""

    config: Config
    target: Config

    async def topics(self) -> Topics: ...
    async def check_target_usable(self, partitions: int) -> None: ...
    async def offsets(self, topic: str) -> tuple[Offsets, Offsets]: ...
    async def read(self, config: Config) -> tuple[StateStore, int]: ...
    async def create_target(self) -> None: ...
    async def write(self, records: Iterator[StateRecord]) -> dict[int, int]: ...
    async def grow_control_topic(self) -> None: ...


async def repartition(steps: Steps, describe_group: GroupDescriber) -> RepartitionReport:
    """Copy the state topic into the target, verify the copy, grow the control topic if it must; the report.

    Raises FleetRunning, TargetNotUsable, CopyMismatch, StateError (a source this version cannot read, or placed
    for another count than RELAY_STATE_TOPIC_PARTITIONS), and the Kafka errors of :class:`Repartition`."""
    config, target = steps.config, steps.target
    _check_stopped(await describe_group(), "")
    topics = await steps.topics()
    if topics.source is None:
        raise StateError(f"the state topic {config.state_topic!r} (RELAY_STATE_TOPIC) does not exist: nothing to copy")
    if topics.target is not None:
        await steps.check_target_usable(topics.target)
    _, ends = await steps.offsets(config.state_topic)
    source, read = await steps.read(config)
    if topics.target is None:
        await steps.create_target()
    written = await steps.write(placed_records(source, target.state_topic_partitions))
    try:
        copy, _ = await steps.read(target)
    except StateError as exc:  # misplaced or unreadable: the copy is wrong, not the source
        raise CopyMismatch(f"{target.state_topic!r} does not read back as relay run reads state: {exc}") from exc
    difference = first_difference(source, copy)
    if difference is not None:
        raise CopyMismatch(f"the copy in {target.state_topic!r} differs from {config.state_topic!r}: {difference}")
    # Started, or written to, while the copy was made: the copy may miss what was written meanwhile.
    _check_stopped(await describe_group(), " during the copy, which may miss what it wrote")
    if (await steps.offsets(config.state_topic))[1] != ends:
        raise FleetRunning(
            f"the state topic {config.state_topic!r} was written to during the copy, which may miss it: stop "
            f"every writer, delete {target.state_topic!r} and run again"
        )
    if topics.control is not None and topics.control < target.state_topic_partitions:
        await steps.grow_control_topic()
    return RepartitionReport(
        source_topic=config.state_topic,
        source_partitions=topics.source,
        source_records=read,
        target_topic=target.state_topic,
        partitions=target.state_topic_partitions,
        created=topics.target is None,
        loads=tuple(partition_loads(source, target.state_topic_partitions, written)),
        control_topic=config.control_topic,
        control_partitions=topics.control,
    )


def _check_stopped(group: GroupView, when: str) -> None:
    if not group.members:
        return
    members = ", ".join(f"{m.client_id} on {m.client_host}" for m in group.members)
    raise FleetRunning(
        f"the consumer group {group.group_id!r} (RELAY_GROUP_ID) has {len(group.members)} live member(s){when}: "
        f"{members}. Stop every replica of the fleet first (replicas 0), then run this again"
    )

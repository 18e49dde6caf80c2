"""What the relay remembers, how it is written to the compacted state topic, and how it is restored.

Everything is keyed by ``(integration, resource)`` (a *pair*) and partitioned by integration: every state record of an
integration goes to partition ``murmur2(integration) % partitions``, so that a replica owning a set of integrations
can one day restore only their partitions. ``partitions`` is ``RELAY_STATE_TOPIC_PARTITIONS``; it must stay what it
was when the state was written, since a pair whose records sat in two partitions would restore in no defined order
(the newer fingerprint could lose to the older). :func:`restore` checks that every record is where that count places
it, and that the topic has that many partitions, and raises :class:`StateError` otherwise.

State-topic records (keys are JSON arrays, so ids containing ``:`` or anything else stay unambiguous):

============================================  ================================================================
key                                           value
============================================  ================================================================
``["e", integration, resource, entity_id]``   ``b"\\x02"`` + the entity's fingerprint (see :mod:`relay.diff`)
``["s", integration, resource, shape_id]``    JSON list of the field names of a record shape
``["c", integration, resource]``              JSON :class:`Checkpoint` (watermark, in-progress poll)
============================================  ================================================================

Format ``b"\\x01"`` (fingerprints with 32-bit field hashes, written by earlier versions) is still read: each field
hash keeps its low 16 bits (:func:`relay.diff.narrow_fingerprint`).

Deleted entities keep their (small) fingerprint: the relay must remember that they are deleted, to detect restores
and never announce them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.diff import ShapeTable, is_deleted, narrow_fingerprint
from relay.errors import KafkaUnavailable, StateError
from relay.partitioning import partition_for_key

log = logging.getLogger(__name__)

FINGERPRINT_FORMAT = b"\x02"
WIDE_FINGERPRINT_FORMAT = b"\x01"  # 32-bit field hashes: read, never written
PollKind = Literal["snapshot", "incremental", "reconcile"]
Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class InProgress:
    """A poll that has committed some pages but not its last one: where to resume after a restart."""

    kind: PollKind
    cursor: str
    updated_after: str | None
    started_at_ms: int
    pages: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Per pair: how far the relay got. Written in the same transaction as the events it covers."""

    # Source time (its Date header) at the start of the last completed poll; the next poll asks for changes since
    # then, minus the overlap. None until the first snapshot completed.
    watermark_ms: int | None = None
    snapshot_done: bool = False
    last_reconcile_ms: int | None = None
    in_progress: InProgress | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, value: bytes) -> Checkpoint:
        try:
            raw = orjson.loads(value)
            in_progress = raw.pop("in_progress", None)
            return cls(**raw, in_progress=InProgress(**in_progress) if in_progress else None)
        except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            raise StateError(f"unreadable checkpoint record: {exc}") from exc


@dataclass(slots=True)
class PairState:
    entities: dict[str, bytes] = field(default_factory=dict)
    shapes: ShapeTable = field(default_factory=ShapeTable)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    live_entities: int = 0


class StateRecord(NamedTuple):  # immutable, and several times faster to build than a frozen dataclass
    """One record for the state topic."""

    key: bytes
    value: bytes
    partition: int


class StateStore:
    """The in-memory state of every pair. Only :meth:`apply` changes it, after Kafka committed the change."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._pairs: dict[Pair, PairState] = {}
        self._partition_of: dict[str, int] = {}  # murmur2 in Python is slow; integrations are few

    def clear(self) -> None:
        self._pairs.clear()

    def pair(self, integration: str, resource: str) -> PairState:
        key = (integration, resource)
        state = self._pairs.get(key)
        if state is None:
            state = self._pairs[key] = PairState()
        return state

    def pairs(self) -> Iterator[tuple[Pair, PairState]]:
        return iter(self._pairs.items())

    def partition_of(self, integration: str) -> int:
        """The state topic partition of ``integration``'s records."""
        partition = self._partition_of.get(integration)
        if partition is None:
            partition = self._partition_of[integration] = partition_for_key(integration.encode(), self.partitions)
        return partition

    def records_for(
        self,
        integration: str,
        resource: str,
        *,
        delta: Mapping[str, bytes],
        new_shapes: Iterable[tuple[int, tuple[str, ...]]],
        checkpoint: Checkpoint | None,
    ) -> list[StateRecord]:
        """The state-topic records that persist ``delta``, new shapes and (optionally) the checkpoint."""
        partition = self.partition_of(integration)
        records = [
            StateRecord(orjson.dumps(["s", integration, resource, shape_id]), orjson.dumps(names), partition)
            for shape_id, names in new_shapes
        ]
        # The key of an entity record is the JSON array ["e", integration, resource, entity_id]: its first three
        # items are the same for the whole delta, so they are serialized once.
        prefix = orjson.dumps(["e", integration, resource])[:-1] + b","
        dumps = orjson.dumps
        records.extend(
            StateRecord(prefix + dumps(entity_id) + b"]", FINGERPRINT_FORMAT + fp, partition)
            for entity_id, fp in delta.items()
        )
        if checkpoint is not None:
            records.append(StateRecord(orjson.dumps(["c", integration, resource]), checkpoint.to_json(), partition))
        return records

    def apply(
        self,
        integration: str,
        resource: str,
        *,
        delta: Mapping[str, bytes],
        new_shapes: Iterable[tuple[int, tuple[str, ...]]],
        checkpoint: Checkpoint | None,
    ) -> None:
        state = self.pair(integration, resource)
        for shape_id, names in new_shapes:
            state.shapes.add_known(shape_id, names)
        for entity_id, fingerprint in delta.items():
            old = state.entities.get(entity_id)
            state.live_entities += _liveness(fingerprint) - _liveness(old)
            state.entities[entity_id] = fingerprint
        if checkpoint is not None:
            state.checkpoint = checkpoint

    def set_checkpoint(self, integration: str, resource: str, checkpoint: Checkpoint) -> None:
        self.pair(integration, resource).checkpoint = checkpoint

    def restore_record(self, key: bytes, value: bytes | None) -> None:
        """Apply one record read back from the state topic."""
        if value is None:
            return  # tombstones: nothing in this version writes them, older history may be compacted away
        try:
            parsed = orjson.loads(key)
            kind, integration, resource = parsed[0], parsed[1], parsed[2]
        except (orjson.JSONDecodeError, IndexError, TypeError) as exc:
            raise StateError(f"unreadable state key {key[:80]!r}") from exc
        if kind == "e":
            fingerprint = _fingerprint(key, value)
            self.apply(integration, resource, delta={parsed[3]: fingerprint}, new_shapes=(), checkpoint=None)
        elif kind == "s":
            self.pair(integration, resource).shapes.add_known(int(parsed[3]), tuple(orjson.loads(value)))
        elif kind == "c":
            self.set_checkpoint(integration, resource, Checkpoint.from_json(value))
        else:
            raise StateError(f"state record with unknown kind {kind!r}")

    def restore_records(self, records: Iterable[tuple[bytes, bytes | None]]) -> set[str]:
        """Apply many records read back from the state topic, in order: :meth:`restore_record`, faster. Returns the
        integrations they belong to.

        Entity records, nearly all of a state topic, go straight into their pair's dict, which makes restoring a million
        entities a matter of seconds.
        """
        touched: dict[Pair, PairState] = {}
        others: set[str] = set()
        loads = orjson.loads
        for key, value in records:
            if value is None:
                continue
            try:
                parsed = loads(key)
                is_entity = parsed[0] == "e" and len(parsed) == 4
            except (orjson.JSONDecodeError, IndexError, TypeError, KeyError) as exc:
                raise StateError(f"unreadable state key {key[:80]!r}") from exc
            if not is_entity:
                self.restore_record(key, value)
                others.add(parsed[1])
                continue
            pair = (parsed[1], parsed[2])
            state = touched.get(pair)
            if state is None:
                state = touched[pair] = self.pair(*pair)
            fingerprint = _fingerprint(key, value)
            old = state.entities.get(parsed[3])
            state.entities[parsed[3]] = fingerprint
            state.live_entities += (not is_deleted(fingerprint)) - (old is not None and not is_deleted(old))
        return others.union(integration for integration, _ in touched)

    def check_placement(self, topic: str, topic_partitions: int, partition: int, integrations: Iterable[str]) -> None:
        """Raise StateError if a record of one of ``integrations``, read from ``partition``, is not where this store
        places that integration's state (the module docstring says why that matters)."""
        for integration in integrations:
            home = self.partition_of(integration)
            if home != partition:
                key = integration.encode()
                fits = [c for c in range(1, topic_partitions + 1) if partition_for_key(key, c) == partition]
                raise StateError(
                    f"state of integration {integration[:128]!r} is in partition {partition} of the state topic "
                    f"{topic!r}, but RELAY_STATE_TOPIC_PARTITIONS={self.partitions} places it in partition {home}. "
                    "The setting must keep the value the state was written with, or records of one integration "
                    "would restore in no defined order. Counts up to the topic's that place it where it is: "
                    f"{', '.join(map(str, fits)) or 'none'}"
                )


def _fingerprint(key: bytes, value: bytes) -> bytes:
    """The fingerprint in an entity record's value, in the current layout whatever the record's format."""
    fmt = value[:1]
    if fmt == FINGERPRINT_FORMAT:
        return value[1:]
    if fmt == WIDE_FINGERPRINT_FORMAT:
        return narrow_fingerprint(value[1:])
    raise StateError(f"state record {key[:80]!r} has unknown format {fmt!r}")


def _liveness(fingerprint: bytes | None) -> int:
    return 0 if fingerprint is None or is_deleted(fingerprint) else 1


def complete_poll(checkpoint: Checkpoint, *, kind: PollKind, started_at_ms: int) -> Checkpoint:
    """The checkpoint after the last page of a poll committed."""
    return replace(
        checkpoint,
        watermark_ms=started_at_ms,
        snapshot_done=True,
        last_reconcile_ms=started_at_ms if kind in ("snapshot", "reconcile") else checkpoint.last_reconcile_ms,
        in_progress=None,
    )


async def restore(
    store: StateStore,
    topic: str,
    client_kwargs: Mapping[str, Any],
    *,
    partitions: Iterable[int] | None = None,
) -> int:
    """Read the state topic from its beginning to its end (committed records only) into ``store``.

    Returns the number of records read. The end is taken when the restore starts: nothing else writes our pairs'
    state while we restore, since the transactional id fences any older instance.

    Raises StateError when the topic has fewer partitions than ``store.partitions`` (state would be written to
    partitions it does not have), or a record is not in the partition ``store`` places its integration in; raises
    KafkaUnavailable when Kafka's metadata does not know the topic.
    """
    consumer = AIOKafkaConsumer(
        **client_kwargs,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    started = time.monotonic()
    count = 0
    try:
        topic_partitions = consumer.partitions_for_topic(topic) or await _partitions_of(consumer, topic)
        check_partition_count(topic, len(topic_partitions), store.partitions)
        wanted = sorted(partitions) if partitions is not None else sorted(topic_partitions)
        assigned = [TopicPartition(topic, p) for p in wanted]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end_offsets = await consumer.end_offsets(assigned)
        remaining = {tp for tp in assigned if end_offsets[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=50_000)
            for tp, records in batches.items():
                integrations = store.restore_records((record.key, record.value) for record in records)
                store.check_placement(topic, len(topic_partitions), tp.partition, integrations)
                count += len(records)
            # Positions step over transaction markers too, so comparing with the end offsets is exact.
            remaining = {tp for tp in remaining if (await consumer.position(tp)) < end_offsets[tp]}
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    log.info(
        "state restored",
        extra={"topic": topic, "records": count, "seconds": round(time.monotonic() - started, 3)},
    )
    return count


async def _partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise KafkaUnavailable(f"the state topic {topic!r} is not in Kafka's metadata")
    return set(partitions)


def check_partition_count(topic: str, topic_partitions: int, placed_over: int) -> None:
    """Raise StateError when the state topic has fewer partitions than the state is placed over."""
    if topic_partitions < placed_over:
        raise StateError(
            f"the state topic {topic!r} has {topic_partitions} partition(s), fewer than "
            f"RELAY_STATE_TOPIC_PARTITIONS={placed_over}, the number the relay places state over: set it to the count "
            f"the topic's state was written with (at most {topic_partitions})"
        )

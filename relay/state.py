"""What the relay remembers, in memory: per ``(integration, resource)`` (a *pair*) the entities' fingerprints, the
record shapes and the :class:`Checkpoint`, with the rule that moves a checkpoint on when a poll completes.

What belongs here: the in-memory store and the checkpoint types, pure (no I/O). A pair's entities are packed in an
:class:`~relay.entity_table.EntityTable` (most of the relay's memory: see there why not a dict). How this is written
to the state topic is :mod:`relay.state_records`; reading the topic back from Kafka is :mod:`relay.state_topic`.
Every record of an integration's state goes to one partition of the state topic, :meth:`StateStore.partition_of`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import orjson

from relay.diff import ShapeTable, is_deleted
from relay.entity_table import EntityTable
from relay.errors import StateError
from relay.partitioning import partition_for_key
from relay.state_records import (
    CHECKPOINT,
    ENTITY,
    SHAPE,
    StateRecord,
    encode_records,
    every_key,
    forget_keys,
    read_fingerprint,
    read_shape,
)

PollKind = Literal["snapshot", "incremental", "reconcile", "resnapshot"]
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

    def completed(self, *, kind: PollKind, started_at_ms: int) -> Checkpoint:
        """This checkpoint once the last page of a poll of ``kind``, started at ``started_at_ms``, committed."""
        return replace(
            self,
            watermark_ms=started_at_ms,
            snapshot_done=True,
            last_reconcile_ms=started_at_ms if kind in ("snapshot", "reconcile") else self.last_reconcile_ms,
            in_progress=None,
        )


@dataclass(slots=True)
class PairState:
    entities: EntityTable = field(default_factory=EntityTable)
    shapes: ShapeTable = field(default_factory=ShapeTable)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    live_entities: int = 0

    def is_empty(self) -> bool:
        """Whether nothing is remembered of the pair: as if it had never been polled."""
        return not self.entities and not len(self.shapes) and self.checkpoint == Checkpoint()


class StateStore:
    """The in-memory state of every pair. Only :meth:`apply` changes it, after Kafka committed the change."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._pairs: dict[Pair, PairState] = {}
        self._partition_of: dict[str, int] = {}  # murmur2 in Python is slow; integrations are few

    def clear(self) -> None:
        self._pairs.clear()

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the pairs of the integrations placed in ``partitions`` (handed over to another replica)."""
        gone = set(partitions)
        for pair in [pair for pair in self._pairs if self.partition_of(pair[0]) in gone]:
            del self._pairs[pair]

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
        return encode_records(
            integration,
            resource,
            self.partition_of(integration),
            delta=delta,
            new_shapes=new_shapes,
            checkpoint=None if checkpoint is None else checkpoint.to_json(),
        )

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
            old = state.entities.put(entity_id, fingerprint)
            state.live_entities += _liveness(fingerprint) - _liveness(old)
        if checkpoint is not None:
            state.checkpoint = checkpoint

    def forget(self, integration: str, resource: str) -> None:
        """Forget a pair's entities and checkpoint (``relay state reset``, once their tombstones committed): its next
        poll is a snapshot. Its shapes stay: ids the entities written later refer to, harmless to keep."""
        state = self.pair(integration, resource)
        state.entities = EntityTable()
        state.live_entities = 0
        state.checkpoint = Checkpoint()

    def held(self, partitions: Iterable[int]) -> dict[str, tuple[str, ...]]:
        """The integrations placed in ``partitions`` of which something is remembered, with the resources of their
        pairs that hold it."""
        wanted = set(partitions)
        held: dict[str, tuple[str, ...]] = {}
        for (integration, resource), state in self._pairs.items():
            if not state.is_empty() and self.partition_of(integration) in wanted:
                held[integration] = (*held.get(integration, ()), resource)
        return held

    def every_key(self, integration: str, resource: str) -> list[bytes]:
        """The state-topic keys whose tombstones forget a pair entirely: its entities', its shapes', its checkpoint's
        (last)."""
        state = self.pair(integration, resource)
        return every_key(
            integration, resource, state.entities, (shape_id for shape_id, _ in state.shapes.shape_records())
        )

    def discard(self, integration: str, resource: str) -> None:
        """Forget everything of a pair, shapes included (once the tombstones of :meth:`every_key` committed)."""
        self._pairs.pop((integration, resource), None)

    def tombstone_keys(self, integration: str, resource: str) -> list[bytes]:
        """The state-topic keys that forget a pair: its entities', then its checkpoint's (last)."""
        return forget_keys(integration, resource, self.pair(integration, resource).entities)

    def set_checkpoint(self, integration: str, resource: str, checkpoint: Checkpoint) -> None:
        self.pair(integration, resource).checkpoint = checkpoint

    def restore_record(self, key: bytes, value: bytes | None) -> None:
        """Apply one record read back from the state topic."""
        try:
            parsed = orjson.loads(key)
            kind, integration, resource = parsed[0], parsed[1], parsed[2]
        except (orjson.JSONDecodeError, IndexError, TypeError) as exc:
            raise StateError(f"unreadable state key {key[:80]!r}") from exc
        if value is None:  # a tombstone (relay state reset, a removed integration): forget what it names
            self._forget_record(kind, (integration, resource), parsed)
            return
        if kind == ENTITY:
            fingerprint = read_fingerprint(key, value)
            self.apply(integration, resource, delta={parsed[3]: fingerprint}, new_shapes=(), checkpoint=None)
        elif kind == SHAPE:
            self.pair(integration, resource).shapes.add_known(int(parsed[3]), read_shape(value))
        elif kind == CHECKPOINT:
            self.set_checkpoint(integration, resource, Checkpoint.from_json(value))
        else:
            raise StateError(f"state record with unknown kind {kind!r}")

    def _forget_record(self, kind: str, pair: Pair, parsed: list[object]) -> None:
        state = self._pairs.get(pair)
        if state is None:
            return
        if kind == ENTITY:
            state.live_entities -= _liveness(state.entities.pop(str(parsed[3]), None))
        elif kind == SHAPE and isinstance(parsed[3], int):
            state.shapes.forget(parsed[3])
        elif kind == CHECKPOINT:
            state.checkpoint = Checkpoint()
        if state.is_empty():  # every record of the pair was tombstoned: as if never polled
            del self._pairs[pair]

    def restore_records(self, records: Iterable[tuple[bytes, bytes | None]]) -> set[str]:
        """Apply many records read back from the state topic, in order: :meth:`restore_record`, faster. Returns the
        integrations they belong to.

        Entity records, nearly all of a state topic, go straight into their pair's dict, without the general path's
        per-record dispatch.
        """
        touched: dict[Pair, PairState] = {}
        others: set[str] = set()
        loads = orjson.loads
        for key, value in records:
            if value is None:  # a tombstone: rare (relay state reset, a removed integration), the general path
                self.restore_record(key, value)
                others.update(integration for integration, _ in touched)
                touched.clear()  # it may have dropped a pair from memory: look each one up again
                continue
            try:
                parsed = loads(key)
                is_entity = parsed[0] == ENTITY and len(parsed) == 4
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
            fingerprint = read_fingerprint(key, value)
            old = state.entities.put(parsed[3], fingerprint)
            state.live_entities += (not is_deleted(fingerprint)) - (old is not None and not is_deleted(old))
        return others.union(integration for integration, _ in touched)


def _liveness(fingerprint: bytes | None) -> int:
    return 0 if fingerprint is None or is_deleted(fingerprint) else 1


__all__ = [
    "Checkpoint",
    "InProgress",
    "PairState",
    "PollKind",
    "StateRecord",
    "StateStore",
]

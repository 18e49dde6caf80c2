"""The mutations: what each does to a record (Kombo's semantics), and their log. :class:`MutationLog` applies a
mutation to its :class:`~relay.simulator.store.Collection`, gives it the next sequence number and a time, and logs it;
the :class:`~relay.simulator.model.Simulator` calls it for its public ``create``/``update``/... and its churn.

Semantics: ``changed_at`` moves only when the record's own fields change (``update``, ``delete``, ``restore``);
``change_nested`` leaves it alone but still makes the record match ``updated_after``; ``delete`` sets
``remote_deleted_at``; ``restore`` clears it; ``hard_delete`` makes the record vanish outright. Every modification
gets a time in milliseconds strictly after the previous one: the clock's time, or 1 ms after the last modification if
the clock has not moved that far.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from relay.simulator.clock import from_ms, to_ms
from relay.simulator.errors import InvalidMutation, SimulatorError
from relay.simulator.records import PROTECTED_FIELDS, Change, Record, RecordSeed
from relay.simulator.store import Collection, Entry
from relay.timestamps import format_timestamp_ms


class MutationKind(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    NESTED_UPDATED = "nested_updated"
    DELETED = "deleted"
    RESTORED = "restored"
    HARD_DELETED = "hard_deleted"


CHURN_WEIGHTS: tuple[tuple[MutationKind, int], ...] = (
    (MutationKind.CREATED, 2),
    (MutationKind.UPDATED, 4),
    (MutationKind.NESTED_UPDATED, 3),
    (MutationKind.DELETED, 1),
    (MutationKind.RESTORED, 1),
    (MutationKind.HARD_DELETED, 1),
)
"""The mix of a churn: relative weights of the mutation kinds."""


@dataclass(frozen=True, slots=True)
class Mutation:
    """One entry of the mutation log. ``record`` is the record after the mutation (None after a hard delete);
    it is shared with the store: read it, never modify it."""

    seq: int  # 1, 2, 3, ...: the position in the log
    time: datetime
    integration: str
    resource: str
    id: str
    kind: MutationKind
    record: Record | None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": format_timestamp_ms(to_ms(self.time)),
            "integration": self.integration,
            "resource": self.resource,
            "id": self.id,
            "kind": self.kind.value,
            "record": self.record,
        }


class MutationLog:
    """Applies mutations to collections and logs them in ``mutations``; the sequence numbers and times come from here,
    the seeded records' included (:meth:`reserve`). ``now_ms`` is the simulator's clock; ``seed`` draws the random
    changes (``mutations:{seed}``)."""

    def __init__(self, now_ms: Callable[[], int], seed: int) -> None:
        self.mutations: list[Mutation] = []
        self._now_ms = now_ms
        self._seed = seed
        self._rng = random.Random(f"mutations:{seed}")
        self._seq = 0
        self._last_ms = 0

    def _next_ms(self) -> int:
        """The time of the next modification: now, or 1 ms after the last one if the clock has not got that far."""
        return max(self._now_ms(), self._last_ms + 1)

    def _stamp(self, ms: int) -> int:
        """Take the next sequence number for a modification at ``ms`` (from :meth:`_next_ms`)."""
        self._seq += 1
        self._last_ms = ms
        return self._seq

    def reserve(self, count: int, last_ms: int) -> int:
        """Take ``count`` sequence numbers at once, for records seeded up to ``last_ms`` (not logged); returns the
        number before the first of them."""
        before = self._seq
        if count:
            self._seq, self._last_ms = before + count, max(self._last_ms, last_ms)
        return before

    def _log(self, collection: Collection, ident: str, kind: MutationKind, ms: int, record: Record | None) -> Mutation:
        mutation = Mutation(
            len(self.mutations) + 1, from_ms(ms), collection.integration, collection.spec.name, ident, kind, record
        )
        self.mutations.append(mutation)
        return mutation

    def _change(self, collection: Collection, ms: int) -> Change:
        return Change(self._rng, ms, self._seed, collection.integration)

    def _check_fields(
        self, collection: Collection, current: Record, fields: Mapping[str, Any], *, nested_allowed: bool = False
    ) -> None:
        for name in fields:
            if name not in current:
                raise SimulatorError(f"{collection.spec.name} records have no field {name!r}")
            if name in PROTECTED_FIELDS:
                raise SimulatorError(f"{name!r} is managed by the simulator (use delete/restore for deletion)")
            if name == collection.spec.nested_field and not nested_allowed:
                raise SimulatorError(f"{name!r} is nested data: change it with change_nested")

    def create(self, collection: Collection, fields: Mapping[str, Any] | None) -> Mutation:
        number = collection.next_number
        ms = self._next_ms()
        seed = RecordSeed(self._seed, collection.integration, collection.spec.name, number, ms, collection.population)
        record = collection.spec.generate(seed)
        if fields:
            self._check_fields(collection, record, fields, nested_allowed=True)
            record.update(fields)
        collection.next_number = number + 1
        entry = Entry(record["id"], number, self._stamp(ms), ms, record)
        collection.add(entry, record)
        return self._log(collection, entry.id, MutationKind.CREATED, ms, record)

    def update(self, collection: Collection, entry: Entry, fields: Mapping[str, Any] | None) -> Mutation | None:
        current = collection.record(entry)
        ms = self._next_ms()
        if fields is None:
            fields = collection.spec.random_update(current, self._change(collection, ms))
        self._check_fields(collection, current, fields)
        if all(current[name] == value for name, value in fields.items()):
            return None
        record = {**current, **fields, "changed_at": format_timestamp_ms(ms)}
        collection.replace(entry, record, self._stamp(ms), ms)
        return self._log(collection, entry.id, MutationKind.UPDATED, ms, record)

    def change_nested(self, collection: Collection, entry: Entry, value: list[Any] | None) -> Mutation:
        current = collection.record(entry)
        ms = self._next_ms()
        if value is None:
            value = collection.spec.change_nested(current, self._change(collection, ms))
        elif not isinstance(value, list):
            raise SimulatorError(f"{collection.spec.nested_field} must be a list")
        record = {**current, collection.spec.nested_field: value}
        collection.replace(entry, record, self._stamp(ms), ms)
        return self._log(collection, entry.id, MutationKind.NESTED_UPDATED, ms, record)

    def delete(self, collection: Collection, entry: Entry) -> Mutation:
        if entry.deleted:
            raise InvalidMutation(f"{entry.id} is already deleted")
        ms = self._next_ms()
        record = {
            **collection.record(entry),
            "remote_deleted_at": format_timestamp_ms(ms),
            "changed_at": format_timestamp_ms(ms),
        }
        collection.replace(entry, record, self._stamp(ms), ms)
        return self._log(collection, entry.id, MutationKind.DELETED, ms, record)

    def restore(self, collection: Collection, entry: Entry) -> Mutation:
        if not entry.deleted:
            raise InvalidMutation(f"{entry.id} is not deleted")
        ms = self._next_ms()
        record = {**collection.record(entry), "remote_deleted_at": None, "changed_at": format_timestamp_ms(ms)}
        collection.replace(entry, record, self._stamp(ms), ms)
        return self._log(collection, entry.id, MutationKind.RESTORED, ms, record)

    def hard_delete(self, collection: Collection, entry: Entry) -> Mutation:
        ms = self._next_ms()
        self._stamp(ms)
        collection.remove(entry)
        return self._log(collection, entry.id, MutationKind.HARD_DELETED, ms, None)

    def random_mutation(self, collections: Iterable[Collection], rng: random.Random | None = None) -> Mutation | None:
        """One random mutation of a random record of a random non-empty collection, of a kind drawn by
        ``CHURN_WEIGHTS``; None if there is nothing to change. This is what the churn does, one step at a time."""
        rng = rng or self._rng
        candidates = [c for c in collections if c.by_id or c.population[c.spec.name]]
        if not candidates:
            return None
        collection = rng.choice(candidates)
        kind = rng.choices([k for k, _ in CHURN_WEIGHTS], [w for _, w in CHURN_WEIGHTS])[0]
        if kind is MutationKind.RESTORED:
            deleted = collection.random_entry(rng, deleted=True)
            if deleted is not None:
                return self.restore(collection, deleted)
            kind = MutationKind.DELETED  # nothing to restore: keep the mix by making something to restore later
        entry = collection.random_entry(rng, deleted=False) if kind is not MutationKind.CREATED else None
        if entry is None:
            return self.create(collection, None)
        if kind is MutationKind.UPDATED:
            return self.update(collection, entry, None) or self.change_nested(collection, entry, None)
        if kind is MutationKind.NESTED_UPDATED:
            return self.change_nested(collection, entry, None)
        if kind is MutationKind.DELETED:
            return self.delete(collection, entry)
        return self.hard_delete(collection, entry)

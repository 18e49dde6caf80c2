"""How the records of one resource of one integration are kept: :class:`Collection`, fast at 1M records, with its
entries and indexes. Storage only: what a mutation means, and the log of them, belong in ``mutations.py``.

* ``Collection.by_id`` maps id -> :class:`Entry` (the current state), and an append-only *modification order*
  (parallel arrays of modification sequence number, modification time and id) lists every record by its last
  modification, nested changes included. A modification appends the record again; its older position becomes stale
  and is skipped when read (its sequence number no longer matches the entry's) until a periodic compaction drops it.
  A page is a bisect into that order plus a short walk, never a scan.
* A seeded record is not stored as a dict: its content is generated from its number whenever it is served
  (see ``records.py``). Only a record that changed after seeding holds a dict, which is then shared, read-only,
  with the mutation log.
* Every modification gets the next global sequence number and a time in milliseconds strictly after the previous
  one, so within a collection, sequence order and time order agree and ``updated_after`` is a bisect on time.
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from relay.simulator.errors import NotFound
from relay.simulator.filters import Filter
from relay.simulator.records import Record, RecordSeed, ResourceSpec, record_id

PEEK_LIMIT = 5_000  # entries examined past a full page to learn whether another page exists; past it, assume one does


@dataclass(slots=True)
class Entry:
    """The current state of one record. ``record`` is None while the record is still exactly as seeded."""

    id: str
    number: int
    seq: int
    modified_ms: int
    record: Record | None = None
    deleted: bool = False


class KeyIndex:
    """key -> ids for an indexed filter; stores a bare id while a key has one (nearly always), to stay small."""

    def __init__(self) -> None:
        self._ids: dict[str, str | set[str]] = {}

    def add(self, key: str, ident: str) -> None:
        current = self._ids.setdefault(key, ident)
        if current is ident:
            return
        if isinstance(current, str):
            if current != ident:
                self._ids[key] = {current, ident}
        else:
            current.add(ident)

    def discard(self, key: str, ident: str) -> None:
        current = self._ids.get(key)
        if current == ident:
            del self._ids[key]
        elif isinstance(current, set):
            current.discard(ident)
            if len(current) == 1:
                self._ids[key] = next(iter(current))

    def get(self, key: str) -> set[str]:
        current = self._ids.get(key)
        if current is None:
            return set()
        return {current} if isinstance(current, str) else set(current)


class Collection:
    """The records of one resource of one integration, in modification order (see the module docstring)."""

    def __init__(self, spec: ResourceSpec, integration: str, salt: int, population: Mapping[str, int]) -> None:
        self.spec = spec
        self.integration = integration
        self.salt = salt
        self.population = population
        self.by_id: dict[str, Entry] = {}  # every record that exists, soft-deleted ones included
        self.next_number = 0
        self._seqs = array("q")
        self._times = array("q")
        self._ids: list[str] = []
        self._stale = 0
        self._indexes = {name: KeyIndex() for name, f in spec.filters.items() if f.indexed}
        self._deleted: list[str] = []  # restore candidates for the churn; entries restored since are skipped
        self.deleted_count = 0

    # -- reading ---------------------------------------------------------------------------------------------------

    def record(self, entry: Entry) -> Record:
        if entry.record is not None:
            return entry.record
        seed = RecordSeed(self.salt, self.integration, self.spec.name, entry.number, entry.modified_ms, self.population)
        return self.spec.generate(seed)

    def get(self, ident: str) -> Entry:
        entry = self.by_id.get(ident)
        if entry is None:
            raise NotFound(f"no record {ident} in {self.spec.name} of {self.integration}")
        return entry

    def lookup(self, param: str, keys: Iterable[str]) -> set[str]:
        """Ids whose indexed filter ``param`` has any of ``keys``."""
        index = self._indexes[param]
        found: set[str] = set()
        for key in keys:
            found |= index.get(key)
        return found

    def entries(self) -> Iterator[Entry]:
        """Every record's entry (``.id``, ``.deleted``, ...), soft-deleted included, in modification order."""
        return self.walk(0, None)

    def walk(self, after_seq: int, since_ms: int | None) -> Iterator[Entry]:
        """Live entries modified after sequence number ``after_seq`` and at or after ``since_ms``, in order."""
        start = bisect_right(self._seqs, after_seq)
        if since_ms is not None:
            start = max(start, bisect_left(self._times, since_ms))
        # Serving a page never awaits, so the order cannot change during that walk. A caller iterating over
        # entries() while mutating sees the order as it was when the walk began, minus what changed since.
        seqs, ids, end = self._seqs, self._ids, len(self._ids)
        for i in range(start, end):
            entry = self.by_id.get(ids[i])
            if entry is not None and entry.seq == seqs[i]:
                yield entry

    def select(
        self,
        *,
        after_seq: int,
        since_ms: int | None,
        include_deleted: bool,
        ids: set[str] | None,
        predicates: list[tuple[Filter, Any]],
        page_size: int,
    ) -> tuple[list[Record], int | None]:
        """One page: the records and, if more may follow, the sequence number to continue after."""
        candidates: Iterable[Entry]
        if ids is None:
            candidates = self.walk(after_seq, since_ms)
        else:
            chosen = (self.by_id.get(i) for i in ids)
            candidates = sorted(
                (
                    e
                    for e in chosen
                    if e is not None and e.seq > after_seq and (since_ms is None or e.modified_ms >= since_ms)
                ),
                key=lambda e: e.seq,
            )
        results: list[Record] = []
        last_seq = after_seq
        examined_past_full_page = 0
        for entry in candidates:
            if len(results) == page_size:
                examined_past_full_page += 1
                if examined_past_full_page > PEEK_LIMIT:
                    return results, last_seq
            if entry.deleted and not include_deleted:
                continue
            record = self.record(entry)
            if not all(f.matches(record, value) for f, value in predicates):
                continue
            if len(results) == page_size:
                return results, last_seq  # one more record matches: there is a next page
            results.append(record)
            last_seq = entry.seq
        return results, None

    # -- writing ---------------------------------------------------------------------------------------------------

    def _append(self, entry: Entry) -> None:
        self._seqs.append(entry.seq)
        self._times.append(entry.modified_ms)
        self._ids.append(entry.id)

    def _index(self, record: Record, ident: str, *, add: bool) -> None:
        for name, index in self._indexes.items():
            for key in self.spec.filters[name].keys(record):
                if add:
                    index.add(key, ident)
                else:
                    index.discard(key, ident)

    def add(self, entry: Entry, record: Record) -> None:
        """Add a new record with its content."""
        self.by_id[entry.id] = entry
        self._append(entry)
        self._index(record, entry.id, add=True)

    def add_seeded(self, entry: Entry, index_keys: Mapping[str, Iterable[str]]) -> None:
        """Add a seeded record without generating it: the resource computed its index keys cheaply."""
        self.by_id[entry.id] = entry
        self._seqs.append(entry.seq)
        self._times.append(entry.modified_ms)
        self._ids.append(entry.id)
        for name, keys in index_keys.items():
            index = self._indexes[name]
            for key in keys:
                index.add(key, entry.id)

    def replace(self, entry: Entry, record: Record, seq: int, modified_ms: int) -> None:
        """Store the record's new content and move it to the end of the modification order."""
        self._index(self.record(entry), entry.id, add=False)
        self._index(record, entry.id, add=True)
        entry.record = record
        entry.seq = seq
        entry.modified_ms = modified_ms
        deleted = record["remote_deleted_at"] is not None
        if deleted != entry.deleted:
            self.deleted_count += 1 if deleted else -1
            if deleted:
                self._deleted.append(entry.id)
        entry.deleted = deleted
        self._append(entry)
        self._stale += 1
        self._maybe_compact()

    def remove(self, entry: Entry) -> None:
        self._index(self.record(entry), entry.id, add=False)
        del self.by_id[entry.id]
        self.deleted_count -= entry.deleted
        self._stale += 1
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        # Amortised O(1): compact only once the stale positions outnumber the live ones (and are not few).
        if self._stale < max(1024, len(self.by_id)):
            return
        keep = [i for i, ident in enumerate(self._ids) if (e := self.by_id.get(ident)) and e.seq == self._seqs[i]]
        self._seqs = array("q", (self._seqs[i] for i in keep))
        self._times = array("q", (self._times[i] for i in keep))
        self._ids = [self._ids[i] for i in keep]
        self._stale = 0

    def random_entry(self, rng: random.Random, *, deleted: bool) -> Entry | None:
        """A random live (or, with ``deleted``, soft-deleted) entry, or None if none was found quickly."""
        if deleted:
            while self._deleted:
                ident = self._deleted.pop(rng.randrange(len(self._deleted)))
                entry = self.by_id.get(ident)
                if entry is not None and entry.deleted:
                    return entry
            return None
        if not self.by_id or self.next_number == 0:
            return None
        for _ in range(32):  # numbers of hard-deleted records miss; a few tries find a live one
            number = rng.randrange(self.next_number)
            entry = self.by_id.get(record_id(self.salt, self.integration, self.spec.name, number))
            if entry is not None and not entry.deleted:
                return entry
        return None

    def positions(self) -> int:
        """Length of the modification order, stale positions included (for tests of compaction)."""
        return len(self._ids)

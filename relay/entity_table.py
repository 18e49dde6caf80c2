"""One pair's remembered entities, entity id -> fingerprint, packed: :class:`EntityTable`.

What belongs here: the in-memory container of a pair's fingerprints, nothing about what a fingerprint means
(:mod:`relay.diff`) nor how it is persisted (:mod:`relay.state_records`). Pure: no I/O.

Why not a ``dict[str, bytes]``: a million remembered entities are most of the relay's memory, and in a dict each
costs its id as a ``str`` object (48 B of header, and pymalloc rounds up to 16 B: 80 B for a 24-character id), its
fingerprint as a ``bytes`` object (32 B of header: 80 B for a 45-byte fingerprint) and its dict slot (about 31 B),
194 B in all (the README's Performance section). Here only the bytes themselves are kept, in a few large buffers.

Layout: one or more *shards*, each with

* its *records*, one ``bytearray``: per entity ``<II`` (the id's length, the fingerprint's length), the id's UTF-8
  (``surrogatepass``: any Python string) and the fingerprint, appended in the order entities are first remembered.
  A fingerprint replaced by one of the same length (an update of the same shape) is overwritten in place; one of
  another length is appended as a new record and the old one is marked dead (the high bit of its fingerprint length)
  and counted as garbage, which is dropped by copying the shard's live records once it is half of its buffer;
* its *slots*, an open-addressing hash table (linear probing) in one ``array("q")``: per slot the id's hash and its
  record's offset (0: empty, -1: a removed entity, so that probing goes on past it). Its capacity is a power of two,
  doubled when more than two thirds are used.

Why shards: growing the slots, or compacting the records, is a Python loop over every entity of the shard (about 1.5 us
each), and it runs inside one ``put``, on the event loop: with one table of 1.4M entities that was 0.5 to 1 s
(load-dependent) during which no heartbeat, webhook or other pair's poll was served. A table starts as one shard; when
that shard would need more than ``_SPLIT_CAPACITY`` slots (at about 5,500 entities) its entities are spread over
``_SHARDS`` (64) shards by the top byte of their hash (slot indexes use the low bits), once, and from then on each shard
grows and compacts on its own, so a stall touches 1/64 of the entities: 12 to 24 ms at worst while inserting 1.5M (0.5
to 0.7 s unsharded), 45 ms for a shard's compaction at 1M (2.6 s unsharded). Few shards, not one per 1,000 entities: the
shards' buffers are small enough for glibc to serve from the heap, where growing ones leave holes (256 shards left RSS
at 122 B per entity after ``malloc_trim``, 64 at 115 B, one at 112 B). A small table (most pairs of a fleet) stays one
shard, so it pays for no more than one.

The hash is Python's ``hash`` of the id (a ``str`` keeps it once computed), randomized per process: a source cannot
choose ids that all probe the same slots. Two ids with the same hash are told apart by comparing the ids.

Few, large buffers: millions of small objects freed in another order leave holes in the heap (a first version with a few
thousand ``bytes`` buckets, rebuilt on each write, held 80 B per entity but left the heap at 175 B per entity). Buffers
past glibc's mmap threshold are served with ``mmap`` and grown with ``mremap``, leaving none; a split table's, about 1.2
MB of records and 0.5 MB of slots per shard at 1M, may come from the heap, hence the few B per entity that 64 shards
cost above.

Iteration follows the records, shard by shard: in a table of one shard (under about 5,500 entities), the order in
which entities were first remembered, except that an entity whose fingerprint changed length comes where its new
record is; in a split table, that order within each shard, the shards in turn, which depends on the process's hash
seed. Nothing relies on more: the vanished check (:func:`relay.diff.find_vanished`) and a pair's tombstones
(:func:`relay.state_records.forget_keys`) concern each entity on its own, in its own Kafka key, and ``relay state
show`` sorts the ids. (A ``dict`` kept the order of first insertion throughout.)
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, MutableMapping
from itertools import chain
from typing import Any, Final

_LENGTHS: Final = struct.Struct("<II")  # of the id, of the fingerprint (high bit: dead)
_unpack_lengths: Final = _LENGTHS.unpack_from
_pack_lengths: Final = _LENGTHS.pack
_DEAD: Final = 0x8000_0000
_EMPTY: Final = 0  # offset of an empty slot: the records start with one byte of padding, no record is at 0
_REMOVED: Final = -1
_MIN_CAPACITY: Final = 8
_SHARD_SHIFT: Final = 56  # a split table's shard is the hash's top byte; slot indexes use the low bits
# A table whose one shard would need more slots than this is split into _SHARDS shards (tests lower both).
_SPLIT_CAPACITY = 1 << 13
_SHARDS = 64
_MISSING: Final = object()


def _key(entity_id: str) -> bytes:
    return entity_id.encode("utf-8", "surrogatepass")


def _id(key: bytes | bytearray) -> str:
    return key.decode("utf-8", "surrogatepass")


class _FingerprintReaders(dict[int, Callable[[bytearray, int], tuple[bytes]]]):
    """Fingerprint length -> what reads a fingerprint of that length at an offset of the records, as ``bytes``: one C
    call and one object, where ``bytes()`` of a slice makes two. A few lengths: one per record shape, and deleted."""

    def __missing__(self, length: int) -> Callable[[bytearray, int], tuple[bytes]]:
        reader = self[length] = struct.Struct(f"{length}s").unpack_from
        return reader


_read_fingerprint: Final = _FingerprintReaders()


def _capacity_for(live: int) -> int:
    """Slots for ``live`` entities: under half used, room to grow by a third before the next rehash."""
    capacity = _MIN_CAPACITY
    while 2 * live >= capacity:
        capacity *= 2
    return capacity


class _Shard:
    """Records and slots of the entities whose hash picks this shard (all of them before a split)."""

    __slots__ = ("filled", "garbage", "live", "mask", "records", "slots")

    def __init__(self, capacity: int = _MIN_CAPACITY) -> None:
        self.clear(capacity)

    def clear(self, capacity: int) -> None:
        """No records, ``capacity`` empty slots."""
        self.records = bytearray(1)
        self.slots = array("q", bytes(16 * capacity))
        self.mask = capacity - 1
        self.live = 0
        self.filled = 0  # slots that are not empty: live and removed
        self.garbage = 0  # bytes of dead records

    def find(self, key_hash: int, key: bytes) -> tuple[int, int]:
        """(slot, offset of the record) of ``key``; when absent, the slot where it goes and its offset: _EMPTY, or
        _REMOVED when a removed entity's slot can be reused."""
        slots, records, mask = self.slots, self.records, self.mask
        slot = key_hash & mask
        reusable = -1
        while True:
            offset = slots[2 * slot + 1]
            if offset == _EMPTY:
                return (slot, _EMPTY) if reusable < 0 else (reusable, _REMOVED)
            if offset == _REMOVED:
                if reusable < 0:
                    reusable = slot
            elif slots[2 * slot] == key_hash:
                start = offset + 8
                if records[start : start + _unpack_lengths(records, offset)[0]] == key:
                    return slot, offset
            slot = (slot + 1) & mask

    def kill(self, offset: int, id_length: int, fp_length: int) -> None:
        """Mark a record dead; drop the dead ones once they are half of the records."""
        _LENGTHS.pack_into(self.records, offset, id_length, fp_length | _DEAD)
        self.garbage += 8 + id_length + fp_length
        if 2 * self.garbage > len(self.records):
            live, records = self.live_slots(), self.records
            self.clear(_capacity_for(len(live)))
            _refill([self], 0, records, live)

    def grow(self) -> None:
        """Slots as many as the live entities need, the live ones placed again where their hash says (removed slots
        dropped); the records stay."""
        old_slots, capacity = self.slots, _capacity_for(self.live)
        self.slots = slots = array("q", bytes(16 * capacity))
        self.mask = mask = capacity - 1
        # The old slots' hashes and offsets side by side (sliced in C): the loop touches each old slot once.
        for key_hash, offset in zip(old_slots[0::2], old_slots[1::2], strict=True):
            if offset > 0:
                slot = key_hash & mask
                while slots[2 * slot + 1] != _EMPTY:
                    slot = (slot + 1) & mask
                slots[2 * slot] = key_hash
                slots[2 * slot + 1] = offset
        self.filled = self.live

    def live_slots(self) -> list[tuple[int, int]]:
        """(offset, hash) of the live entities, in the order of their records."""
        slots = self.slots
        return sorted(
            (offset, key_hash) for key_hash, offset in zip(slots[0::2], slots[1::2], strict=True) if offset > 0
        )

    def entries(self) -> Iterator[tuple[str, bytes]]:
        """(entity id, fingerprint) of the live records, in order."""
        records = self.records
        offset, end = 1, len(records)
        while offset < end:
            id_length, fp_length = _unpack_lengths(records, offset)
            start = offset + 8
            if fp_length & _DEAD:
                offset = start + id_length + (fp_length & ~_DEAD)
                continue
            middle = start + id_length
            offset = middle + fp_length
            yield _id(records[start:middle]), _read_fingerprint[fp_length](records, middle)[0]


def _refill(shards: list[_Shard], shard_mask: int, records: bytearray, live: list[tuple[int, int]]) -> None:
    """Append the records of ``records`` at ``live`` (offset, hash), in that order, each to the shard its hash picks
    and slotted there (the shards' slots must have room: no rehash)."""
    for offset, key_hash in live:
        id_length, fp_length = _unpack_lengths(records, offset)
        shard = shards[(key_hash >> _SHARD_SHIFT) & shard_mask]
        slots, mask, target = shard.slots, shard.mask, shard.records
        slot = key_hash & mask
        while slots[2 * slot + 1] != _EMPTY:
            slot = (slot + 1) & mask
        slots[2 * slot] = key_hash
        slots[2 * slot + 1] = len(target)
        target += records[offset : offset + 8 + id_length + fp_length]
        shard.live += 1
        shard.filled += 1


class EntityTable(MutableMapping[str, bytes]):
    """Entity id -> fingerprint, as a mapping; see the module docstring for why and how it is packed."""

    __slots__ = ("_len", "_shard_mask", "_shards")

    def __init__(self, entries: Mapping[str, bytes] | Iterable[tuple[str, bytes]] = ()) -> None:
        self._shards = [_Shard()]
        self._shard_mask = 0  # _SHARDS - 1 once split
        self._len = 0
        for entity_id, fingerprint in entries.items() if isinstance(entries, Mapping) else entries:
            self.put(entity_id, fingerprint)

    def __len__(self) -> int:
        return self._len

    def get(self, entity_id: str, default: Any = None) -> Any:
        # Shard.find written out: the diff calls this for every record it reads, and in a snapshot most are not found.
        key_hash = hash(entity_id)
        shard = self._shards[(key_hash >> _SHARD_SHIFT) & self._shard_mask]
        slots, mask = shard.slots, shard.mask
        slot = key_hash & mask
        while True:
            offset = slots[2 * slot + 1]
            if offset == _EMPTY:
                return default
            if offset > 0 and slots[2 * slot] == key_hash:
                records = shard.records
                id_length, fp_length = _unpack_lengths(records, offset)
                start = offset + 8
                middle = start + id_length
                if records[start:middle] == entity_id.encode("utf-8", "surrogatepass"):
                    return _read_fingerprint[fp_length](records, middle)[0]
            slot = (slot + 1) & mask

    def __getitem__(self, entity_id: str) -> bytes:
        found: bytes | None = self.get(entity_id)
        if found is None:
            raise KeyError(entity_id)
        return found

    def __contains__(self, entity_id: object) -> bool:
        return isinstance(entity_id, str) and self.get(entity_id, _MISSING) is not _MISSING

    def __iter__(self) -> Iterator[str]:
        for entity_id, _ in self.entries():
            yield entity_id

    def items(self) -> ItemsView[str, bytes]:
        return _Items(self)

    def entries(self) -> Iterator[tuple[str, bytes]]:
        """(entity id, fingerprint) of every entity, shard by shard, each in its records' order: what ``items()``
        iterates, without a lookup per entity."""
        return chain.from_iterable(shard.entries() for shard in self._shards)

    def __setitem__(self, entity_id: str, fingerprint: bytes) -> None:
        self.put(entity_id, fingerprint)

    def put(self, entity_id: str, fingerprint: bytes) -> bytes | None:
        """Remember ``fingerprint`` for ``entity_id``; returns the one it replaces, None if there was none."""
        key_hash = hash(entity_id)
        shard = self._shards[(key_hash >> _SHARD_SHIFT) & self._shard_mask]
        key = _key(entity_id)
        slot, offset = shard.find(key_hash, key)
        records = shard.records
        if offset <= 0:
            slots = shard.slots
            slots[2 * slot] = key_hash
            slots[2 * slot + 1] = len(records)
            records += _pack_lengths(len(key), len(fingerprint))
            records += key
            records += fingerprint
            shard.live += 1
            self._len += 1
            if offset == _EMPTY:
                shard.filled += 1
                if 3 * shard.filled > 2 * (shard.mask + 1):
                    self._grow(shard)
            return None
        id_length, fp_length = _unpack_lengths(records, offset)
        start = offset + 8 + id_length
        old = _read_fingerprint[fp_length](records, start)[0]
        if len(fingerprint) == fp_length:
            records[start : start + fp_length] = fingerprint
        else:  # appended, the old record dead
            shard.slots[2 * slot + 1] = len(records)
            records += _pack_lengths(id_length, len(fingerprint))
            records += key
            records += fingerprint
            shard.kill(offset, id_length, fp_length)
        return old

    def __delitem__(self, entity_id: str) -> None:
        key_hash = hash(entity_id)
        shard = self._shards[(key_hash >> _SHARD_SHIFT) & self._shard_mask]
        slot, offset = shard.find(key_hash, _key(entity_id))
        if offset <= 0:
            raise KeyError(entity_id)
        shard.slots[2 * slot + 1] = _REMOVED
        shard.live -= 1
        self._len -= 1
        shard.kill(offset, *_unpack_lengths(shard.records, offset))

    def _grow(self, shard: _Shard) -> None:
        """More slots for a shard; or, for the one shard of a table not yet split that would need more than
        _SPLIT_CAPACITY, the split: its live records spread over _SHARDS shards by their hash's top byte."""
        if self._shard_mask or _capacity_for(shard.live) <= _SPLIT_CAPACITY:
            shard.grow()
            return
        live, shard_mask = shard.live_slots(), _SHARDS - 1
        counts = [0] * _SHARDS
        for _, key_hash in live:
            counts[(key_hash >> _SHARD_SHIFT) & shard_mask] += 1
        shards = [_Shard(_capacity_for(count)) for count in counts]
        _refill(shards, shard_mask, shard.records, live)
        self._shards, self._shard_mask = shards, shard_mask


class _Items(ItemsView[str, bytes]):
    """``EntityTable.items()``: iterated from the records, not by looking each id up."""

    _mapping: EntityTable

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return self._mapping.entries()


__all__ = ["EntityTable"]

"""One pair's remembered entities, entity id -> fingerprint, packed: :class:`EntityTable`.

What belongs here: the in-memory container of a pair's fingerprints, nothing about what a fingerprint means
(:mod:`relay.diff`) nor how it is persisted (:mod:`relay.state_records`). Pure: no I/O.

Why not a ``dict[str, bytes]``: a million remembered entities are most of the relay's memory, and in a dict each
costs its id as a ``str`` object (48 B of header, and pymalloc rounds up to 16 B: 80 B for a 24-character id), its
fingerprint as a ``bytes`` object (32 B of header: 80 B for a 45-byte fingerprint) and its dict slot (about 31 B),
194 B in all (the README's Performance section). Here only the bytes themselves are kept, in two large buffers.

Layout:

* the *records*, one ``bytearray``: per entity ``<II`` (the id's length, the fingerprint's length), the id's UTF-8
  (``surrogatepass``: any Python string) and the fingerprint, appended in the order entities are first remembered.
  A fingerprint replaced by one of the same length (an update of the same shape) is overwritten in place; one of
  another length is appended as a new record and the old one is marked dead (the high bit of its fingerprint length)
  and counted as garbage, which is dropped by copying the live records once it is half of the buffer;
* the *slots*, an open-addressing hash table (linear probing) in one ``array("q")``: per slot the id's hash and its
  record's offset (0: empty, -1: a removed entity, so that probing goes on past it). Its capacity is a power of two,
  doubled when more than two thirds are used.

The hash is Python's ``hash`` of the id (a ``str`` keeps it once computed), randomized per process: a source cannot
choose ids that all probe the same slots. Two ids with the same hash are told apart by comparing the ids.

Large buffers: glibc serves them with ``mmap`` and grows them with ``mremap``, so they leave no holes in the heap as
millions of small objects freed in another order do (a first version with a few thousand ``bytes`` buckets, rebuilt
on each write, held 80 B per entity but left the heap at 175 B per entity).

Iteration follows the records: the order in which entities were first remembered, except that an entity whose
fingerprint changed length comes where its new record is.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Final

_LENGTHS: Final = struct.Struct("<II")  # of the id, of the fingerprint (high bit: dead)
_unpack_lengths: Final = _LENGTHS.unpack_from
_pack_lengths: Final = _LENGTHS.pack
_DEAD: Final = 0x8000_0000
_EMPTY: Final = 0  # offset of an empty slot: the records start with one byte of padding, no record is at 0
_REMOVED: Final = -1
_MIN_CAPACITY: Final = 8


def _key(entity_id: str) -> bytes:
    return entity_id.encode("utf-8", "surrogatepass")


def _id(key: bytes | bytearray) -> str:
    return key.decode("utf-8", "surrogatepass")


class EntityTable(MutableMapping[str, bytes]):
    """Entity id -> fingerprint, as a mapping; see the module docstring for why and how it is packed."""

    __slots__ = ("_filled", "_garbage", "_len", "_mask", "_records", "_slots")

    def __init__(self, entries: Mapping[str, bytes] | Iterable[tuple[str, bytes]] = ()) -> None:
        self._records = bytearray(1)
        self._slots = array("q", bytes(16 * _MIN_CAPACITY))
        self._mask = _MIN_CAPACITY - 1
        self._len = 0
        self._filled = 0  # slots that are not empty: live and removed
        self._garbage = 0  # bytes of dead records
        for entity_id, fingerprint in entries.items() if isinstance(entries, Mapping) else entries:
            self.put(entity_id, fingerprint)

    def __len__(self) -> int:
        return self._len

    def get(self, entity_id: str, default: Any = None) -> Any:
        # _find written out: the diff calls this for every record it reads, and in a snapshot most are not found.
        slots, mask = self._slots, self._mask
        key_hash = hash(entity_id)
        slot = key_hash & mask
        while True:
            offset = slots[2 * slot + 1]
            if offset == _EMPTY:
                return default
            if offset > 0 and slots[2 * slot] == key_hash:
                records = self._records
                id_length, fp_length = _unpack_lengths(records, offset)
                start = offset + 8
                if records[start : start + id_length] == _key(entity_id):
                    return bytes(records[start + id_length : start + id_length + fp_length])
            slot = (slot + 1) & mask

    def __getitem__(self, entity_id: str) -> bytes:
        found: bytes | None = self.get(entity_id)
        if found is None:
            raise KeyError(entity_id)
        return found

    def __contains__(self, entity_id: object) -> bool:
        if not isinstance(entity_id, str):
            return False
        return self._find(entity_id)[1] > 0

    def __iter__(self) -> Iterator[str]:
        for key, _ in self._live():
            yield _id(key)

    def items(self) -> ItemsView[str, bytes]:
        return _Items(self)

    def entries(self) -> Iterator[tuple[str, bytes]]:
        """(entity id, fingerprint) of every entity, in the records' order: what ``items()`` iterates, without a
        lookup per entity."""
        for key, fingerprint in self._live():
            yield _id(key), fingerprint

    def __setitem__(self, entity_id: str, fingerprint: bytes) -> None:
        self.put(entity_id, fingerprint)

    def put(self, entity_id: str, fingerprint: bytes) -> bytes | None:
        """Remember ``fingerprint`` for ``entity_id``; returns the one it replaces, None if there was none."""
        slot, offset = self._find(entity_id)
        if offset <= 0:  # _append written out: a snapshot and a restore insert every entity
            records, slots, key = self._records, self._slots, _key(entity_id)
            slots[2 * slot] = hash(entity_id)
            slots[2 * slot + 1] = len(records)
            records += _pack_lengths(len(key), len(fingerprint)) + key + fingerprint
            self._len += 1
            if offset == _EMPTY:
                self._filled += 1
                if 3 * self._filled > 2 * (self._mask + 1):
                    self._rehash()
            return None
        records = self._records
        id_length, fp_length = _unpack_lengths(records, offset)
        start = offset + 8 + id_length
        old = bytes(records[start : start + fp_length])
        if len(fingerprint) == fp_length:
            records[start : start + fp_length] = fingerprint
        else:
            self._slots[2 * slot + 1] = self._append(entity_id, fingerprint)
            self._kill(offset, id_length, fp_length)
        return old

    def __delitem__(self, entity_id: str) -> None:
        slot, offset = self._find(entity_id)
        if offset <= 0:
            raise KeyError(entity_id)
        self._slots[2 * slot + 1] = _REMOVED
        self._len -= 1
        self._kill(offset, *_LENGTHS.unpack_from(self._records, offset))

    def _find(self, entity_id: str) -> tuple[int, int]:
        """(slot, offset of the record) of ``entity_id``; when absent, the slot where it goes and its offset: _EMPTY,
        or _REMOVED when a removed entity's slot can be reused."""
        slots, records, mask = self._slots, self._records, self._mask
        key_hash = hash(entity_id)
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
                if records[start : start + _unpack_lengths(records, offset)[0]] == _key(entity_id):
                    return slot, offset
            slot = (slot + 1) & mask

    def _append(self, entity_id: str, fingerprint: bytes) -> int:
        """Append a record; returns its offset."""
        records = self._records
        offset = len(records)
        key = _key(entity_id)
        records += _pack_lengths(len(key), len(fingerprint)) + key + fingerprint
        return offset

    def _kill(self, offset: int, id_length: int, fp_length: int) -> None:
        """Mark a record dead; drop the dead ones once they are half of the records."""
        _LENGTHS.pack_into(self._records, offset, id_length, fp_length | _DEAD)
        self._garbage += 8 + id_length + fp_length
        if 2 * self._garbage > len(self._records):
            self._compact()

    def _live(self) -> Iterator[tuple[bytearray, bytes]]:
        """(id's UTF-8, fingerprint) of the live records, in order."""
        records = self._records
        offset, end = 1, len(records)
        while offset < end:
            id_length, fp_length = _LENGTHS.unpack_from(records, offset)
            start = offset + 8
            if fp_length & _DEAD:
                offset = start + id_length + (fp_length & ~_DEAD)
                continue
            middle = start + id_length
            offset = middle + fp_length
            yield records[start:middle], bytes(records[middle:offset])

    def _compact(self) -> None:
        """Copy the live records to a new buffer, and hash them again into slots as many as they need."""
        live = list(self._live())
        self._records = bytearray(1)
        self._garbage = 0
        self._rehash(((_id(key), fingerprint) for key, fingerprint in live), len(live))

    def _rehash(self, entries: Iterable[tuple[str, bytes]] | None = None, count: int | None = None) -> None:
        """New slots, more than twice as many as the live entities, then ``entries`` appended, or the live
        records placed again where their hash says (removed slots dropped)."""
        live = self._len if count is None else count
        capacity = _MIN_CAPACITY
        while 2 * live >= capacity:  # under half used: room to grow by a third before the next rehash
            capacity *= 2
        old_slots = self._slots
        self._slots = array("q", bytes(16 * capacity))
        self._mask = capacity - 1
        self._filled = 0
        if entries is not None:
            self._len = 0
            for entity_id, fingerprint in entries:
                self.put(entity_id, fingerprint)
            return
        slots, mask, filled = self._slots, self._mask, 0
        # The old slots' hashes and offsets side by side (sliced in C): the loop touches each old slot once.
        for key_hash, offset in zip(old_slots[0::2], old_slots[1::2], strict=True):
            if offset > 0:
                slot = key_hash & mask
                while slots[2 * slot + 1] != _EMPTY:
                    slot = (slot + 1) & mask
                slots[2 * slot] = key_hash
                slots[2 * slot + 1] = offset
                filled += 1
        self._filled = filled


class _Items(ItemsView[str, bytes]):
    """``EntityTable.items()``: iterated from the records, not by looking each id up."""

    _mapping: EntityTable

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return self._mapping.entries()


__all__ = ["EntityTable"]

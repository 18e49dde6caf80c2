"""The diff engine: from what we remember about an ``(integration, resource)`` and a page of records, the events to
publish and what to remember next.

Everything here is pure: no I/O, no clock (times are passed in), no asyncio, and nothing given to it is mutated. The
caller publishes :attr:`DiffResult.changes`, and only once Kafka committed them applies :attr:`DiffResult.delta` and
:attr:`DiffResult.new_shapes` to its memory (new shapes first: the fingerprints refer to them). A page must be
applied before the next page of the same pair is diffed, or the next page is compared with an outdated memory.

Rules, per entity (a record is an entity, keyed by its ``id``; deleted means ``remote_deleted_at`` is not null):

=================  ========================================  ====================================================
remembered         incoming                                  outcome
=================  ========================================  ====================================================
nothing            live                                      ``created``
nothing            deleted                                   remembered as deleted, no event
live               identical content                         nothing (counted in ``suppressed``)
live               other content                             ``updated``, with ``changed_fields``
live               deleted                                   ``deleted``
deleted            other content, still deleted              remembered, no event (counted in ``deleted_changes``)
deleted/vanished   live                                      ``created``, ``restored`` if it had been announced
any                other content, strictly older changed_at  nothing at all (counted in ``stale``)
=================  ========================================  ====================================================

Why these rules:

* "Identical" means the same 64-bit hash of the whole record (keys sorted), so a change anywhere, nested or not,
  is an update even when the source forgot to move ``changed_at``; re-fetches (polls overlap on purpose) are free.
* Stale reads are ignored entirely, state included. Overlapping polls, retries and lagging source replicas can
  serve a copy older than one we already saw; remembering it would move the entity backwards and the next good read
  would announce a spurious flip-flop (B, A, B). Only *strictly* older counts: same ``changed_at`` with other content
  is a real change the source did not timestamp.
* Changes to a deleted record are remembered but not announced (consumers were told it is gone). Its content hash
  is remembered too, so that a restore is recognised whatever content it comes back with.
* An entity first seen deleted is remembered (so it is never announced as deleted later) but never announced. If
  it comes back it gets ``created`` with ``restored=False``: ``restored`` promises the consumer that it saw this
  entity before, which it did not. ``restored`` is therefore "deleted or vanished, and already announced" (version
  above 0).
* In snapshot mode (the first full fetch of a pair) events carry ``snapshot=True``; with ``emit_snapshot=False``
  the snapshot only builds the memory and emits nothing (counted in ``snapshot_skipped``).
* In resnapshot mode (an operator's ``relay resnapshot``) the rules above apply as usual, and then every live record
  the page leaves remembered with its own content is announced once more: a ``created`` with ``snapshot=True`` and
  reason ``resnapshot``, after the entity's real change if it had one. A stale record is not re-announced (what is
  remembered is newer than it), nor a deleted one.

Memory: per entity we keep a *fingerprint*, one immutable ``bytes`` (layout below), not the record; the state store
packs a pair's ids and fingerprints (:mod:`relay.entity_table`), and this module reads them as a ``Mapping``. Field
names are kept once per distinct record *shape* (sorted tuple of top-level keys) in a :class:`ShapeTable`. Field names
are data from the source: any string is fine; they are only ever dict keys and JSON strings here.

Fingerprint layout (little-endian), 25 bytes of header then, for live entities, 2 bytes per field of the record's
shape::

    offset  size  field
    0       8     content hash: blake2b(digest_size=8) of the record as JSON with sorted keys
    8       8     changed_at, epoch ms, signed; NO_TIMESTAMP (-2**63) when the record has none
    16      4     version: events emitted for this entity (drives event ids), unsigned
    20      4     shape id in the pair's ShapeTable, unsigned; 0 and meaningless when deleted
    24      1     flags: 1 = deleted, 2 = vanished (deleted by reconciliation, not by the source)
    25      2*n   live only: low 16 bits of the crc32 of each top-level value as JSON with sorted keys, in the
                  shape's name order

Deleted entities keep the header only: field hashes serve ``changed_fields`` of updates, and what follows a
deletion is at most a ``created``. A typical 15-field live entity takes 55 bytes, a deleted one 25.

Why 16-bit field hashes: the fingerprints are most of the relay's memory (with the entity id and the dict slot), and
halving the field hashes shrinks them noticeably (the README's Performance section has the figures). Whether a record
changed at all is decided by the 64-bit content hash, so events are exact; only ``changed_fields`` can miss a field
whose value changed to one with the same 16-bit hash (about 1 in 65,536 changed fields; the update is still announced).
Fingerprints persisted with 32-bit hashes (state format 1) are read by keeping the low 16 bits of each, which is
exactly the 16-bit hash (see :func:`narrow_fingerprint`).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal

import orjson

from relay.errors import InvalidPage, StateError
from relay.events import Change, event_id
from relay.jsonenc import encode_json
from relay.kinds import ChangeKind
from relay.timestamps import formatted_text, parse_timestamp_ms

VanishRefusal = Literal["incomplete", "too_many"]
Shape = tuple[str, ...]  # the sorted top-level field names of a record

NO_TIMESTAMP: Final = -(2**63)

_HEADER: Final = struct.Struct("<8sqIIB")
_FLAGS_OFFSET: Final = 24
_DELETED: Final = 1
_VANISHED: Final = 2
_MAX_UINT32: Final = 2**32 - 1

_dumps: Final = orjson.dumps
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS
_blake2b: Final = hashlib.blake2b
_crc32: Final = zlib.crc32


def content_digest(record: Mapping[str, Any]) -> bytes:
    """The 8-byte content hash of a record as stored in fingerprints (see the layout)."""
    return hashlib.blake2b(encode_json(record, sort_keys=True), digest_size=8).digest()


def field_hash(value: Any) -> int:
    """The 16-bit hash of one top-level value, from which ``changed_fields`` is computed."""
    return zlib.crc32(encode_json(value, sort_keys=True)) & 0xFFFF


# --------------------------------------------------------------------------------------------------- fingerprints


@lru_cache(maxsize=256)
def _layout(field_count: int) -> struct.Struct:
    return struct.Struct(f"<8sqIIB{field_count}H")


def narrow_fingerprint(fingerprint: bytes) -> bytes:
    """A fingerprint of the earlier layout (32-bit field hashes) in this one: each hash keeps its low 16 bits,
    which is what :func:`field_hash` now computes. Deleted fingerprints (header only) are the same in both."""
    wide = fingerprint[_HEADER.size :]
    if not wide or len(wide) % 4:
        return fingerprint
    narrow = bytearray(len(wide) // 2)
    narrow[0::2] = wide[0::4]  # little-endian: the low 16 bits of each 4-byte hash are its first two bytes
    narrow[1::2] = wide[1::4]
    return fingerprint[: _HEADER.size] + narrow


def make_fingerprint(
    digest: bytes,
    *,
    changed_at_ms: int | None,
    version: int,
    deleted: bool,
    shape_id: int = 0,
    field_hashes: Sequence[int] = (),
) -> bytes:
    """Pack a fingerprint (see the module docstring for the layout). Deleted ones take no shape or field hashes."""
    changed_at = NO_TIMESTAMP if changed_at_ms is None else changed_at_ms
    if deleted:
        if shape_id or field_hashes:
            raise ValueError("a deleted entity's fingerprint keeps no shape and no field hashes")
        return _HEADER.pack(digest, changed_at, version, 0, _DELETED)
    return _layout(len(field_hashes)).pack(digest, changed_at, version, shape_id, 0, *field_hashes)


def content_hash(fingerprint: bytes) -> int:
    """The remembered record's 64-bit content hash, as an unsigned integer."""
    return int.from_bytes(fingerprint[:8], "little")


def changed_at_ms(fingerprint: bytes) -> int | None:
    """The remembered ``changed_at`` in epoch ms, None when the record had none."""
    value: int = _HEADER.unpack_from(fingerprint)[1]
    return None if value == NO_TIMESTAMP else value


def version(fingerprint: bytes) -> int:
    """How many events were emitted for this entity."""
    value: int = _HEADER.unpack_from(fingerprint)[2]
    return value


def shape_id(fingerprint: bytes) -> int:
    value: int = _HEADER.unpack_from(fingerprint)[3]
    return value


def is_deleted(fingerprint: bytes) -> bool:
    """Deleted by the source, or vanished from a complete fetch."""
    return bool(fingerprint[_FLAGS_OFFSET] & _DELETED)


def is_vanished(fingerprint: bytes) -> bool:
    return bool(fingerprint[_FLAGS_OFFSET] & _VANISHED)


def field_hashes(fingerprint: bytes, shapes: ShapeTable) -> dict[str, int]:
    """Top-level field name -> 16-bit hash of its value, for the remembered record (empty once deleted)."""
    if is_deleted(fingerprint):
        return {}
    return _hashes_by_name(fingerprint, shapes.names(shape_id(fingerprint)))


def _hashes_by_name(fingerprint: bytes, names: Shape) -> dict[str, int]:
    return dict(zip(names, _hash_values(fingerprint, names), strict=True))


def _hash_values(fingerprint: bytes, names: Shape) -> tuple[int, ...]:
    if len(fingerprint) != _HEADER.size + 2 * len(names):
        raise StateError(f"fingerprint of {len(fingerprint)} bytes does not match its shape of {len(names)} fields")
    values: tuple[int, ...] = _layout(len(names)).unpack(fingerprint)[5:]
    return values


def _vanished(fingerprint: bytes) -> bytes:
    """A live entity's fingerprint once it vanished: deleted, one more version, content and time kept."""
    digest, changed_at, previous_version, _, _ = _HEADER.unpack_from(fingerprint)
    return _HEADER.pack(digest, changed_at, previous_version + 1, 0, _DELETED | _VANISHED)


# -------------------------------------------------------------------------------------------------------- shapes


# The shapes of a pair are capped: a source whose records each bring a top-level key of their own would otherwise
# grow the table, held in memory and written to the state topic, by one shape per record. A real list endpoint has a
# handful (optional fields come and go); 1,000 is far above that. A record whose new shape would pass the cap is
# remembered with UNKNOWN_SHAPE instead, no field hashes: its content hash still decides every event, exactly as
# before, and only its updates' changed_fields are unknown (empty). Failing the page instead would stop the pair.
MAX_SHAPES_PER_PAIR: Final = 1000
UNKNOWN_SHAPE: Final[Shape] = ()  # no record has it: every record has an id


class ShapeTable:
    """Interns record shapes (sorted tuples of top-level field names) as small integers, per pair.

    Append-only: an id, once given, always means the same names, so persisted fingerprints stay readable. Ids are
    persisted one entry at a time (:meth:`shape_records` / :meth:`add_known`) or whole (:meth:`to_bytes`).
    """

    __slots__ = ("_by_id", "_by_names", "_next_id")

    def __init__(self) -> None:
        self._by_id: dict[int, Shape] = {}
        self._by_names: dict[Shape, int] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def id_of(self, names: Shape) -> int | None:
        return self._by_names.get(names)

    def names(self, shape_id: int) -> Shape:
        try:
            return self._by_id[shape_id]
        except KeyError:
            raise StateError(f"unknown record shape {shape_id}") from None

    def next_id(self) -> int:
        """The id the next new shape gets: one above the highest known."""
        return self._next_id

    def add_known(self, shape_id: int, names: Iterable[str]) -> None:
        """Learn a shape (restoring persisted state, or applying a diff's ``new_shapes``). Idempotent."""
        if isinstance(names, str):  # a string is iterable too, but is not a list of names
            raise StateError(f"record shape {shape_id} is not a list of names: {names[:80]!r}")
        shape = tuple(names)
        if not isinstance(shape_id, int) or not 0 <= shape_id <= _MAX_UINT32:
            raise StateError(f"record shape id {shape_id!r} is not a uint32")
        if not all(isinstance(name, str) for name in shape) or list(shape) != sorted(set(shape)):
            raise StateError(f"record shape {shape_id} is not a sorted list of distinct strings")
        known = self._by_id.get(shape_id)
        if known == shape:
            return
        if known is not None or shape in self._by_names:
            raise StateError(f"record shape {shape_id} conflicts with a known shape: were two diffs applied at once?")
        self._by_id[shape_id] = shape
        self._by_names[shape] = shape_id
        self._next_id = max(self._next_id, shape_id + 1)

    def forget(self, shape_id: int) -> None:
        """Forget a shape whose record was tombstoned: only ever done with every record of its pair (the state of an
        integration removed from the registry), so no remembered fingerprint refers to it any more."""
        names = self._by_id.pop(shape_id, None)
        if names is not None:
            del self._by_names[names]

    def shape_records(self) -> Iterator[tuple[int, Shape]]:
        return iter(self._by_id.items())

    def to_bytes(self) -> bytes:
        return orjson.dumps([[shape_id, list(names)] for shape_id, names in self._by_id.items()])

    @classmethod
    def from_bytes(cls, data: bytes) -> ShapeTable:
        table = cls()
        try:
            entries = orjson.loads(data)
            if not isinstance(entries, list):
                raise TypeError("expected a JSON list of [id, names] pairs")
            for shape_id, names in entries:
                table.add_known(shape_id, names)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise StateError(f"unreadable shape table: {exc}") from exc
        return table


# -------------------------------------------------------------------------------------------------------- changes


@dataclass(frozen=True, slots=True)
class DiffResult:
    changes: list[Change]
    delta: dict[str, bytes]
    new_shapes: list[tuple[int, Shape]]
    suppressed: int = 0  # identical re-fetches
    stale: int = 0  # older than what we remember
    deleted_changes: int = 0  # records first seen deleted, or changed while deleted
    snapshot_skipped: int = 0  # events not emitted because emit_snapshot=False

    def suppressed_by_reason(self) -> dict[str, int]:
        """Records that produced no event, by the reasons of ``relay_events_suppressed_total``."""
        return {
            "noop": self.suppressed,
            "stale": self.stale,
            "deleted": self.deleted_changes,
            "snapshot_skipped": self.snapshot_skipped,
        }


@dataclass(frozen=True, slots=True)
class VanishResult:
    changes: list[Change]
    delta: dict[str, bytes]
    refused: VanishRefusal | None
    would_vanish: int
    live: int


# ----------------------------------------------------------------------------------------------------------- diff


def diff_page(
    state: Mapping[str, bytes],
    shapes: ShapeTable,
    records: Sequence[dict[str, Any]],
    *,
    integration: str,
    resource: str,
    snapshot: bool,
    emit_snapshot: bool = True,
    resnapshot: bool = False,
) -> DiffResult:
    """The events for one page of records and the fingerprints to remember once they are committed.

    ``records`` are JSON objects with a string ``id`` and ``changed_at`` / ``remote_deleted_at`` as RFC 3339 strings
    or null (the source client validated that). An entity appearing twice in the page is handled in order, the later
    record compared with the earlier. Raises InvalidPage if a record cannot be encoded as JSON.
    """
    page = PageDiff(
        state,
        shapes,
        integration=integration,
        resource=resource,
        snapshot=snapshot,
        emit_snapshot=emit_snapshot,
        resnapshot=resnapshot,
    )
    page.feed(records)
    return page.result()


class PageDiff:
    """:func:`diff_page` in steps: :meth:`feed` the page's records in as many slices as wanted, in order, then take
    the :meth:`result`. The outcome is the same as one :func:`diff_page` call over all of them; slices let an
    asyncio caller give the event loop back between them, so that I/O in flight (a transaction committing) is not
    held up by a long diff. The delta so far overlays the state it was given.
    """

    def __init__(
        self,
        state: Mapping[str, bytes],
        shapes: ShapeTable,
        *,
        integration: str,
        resource: str,
        snapshot: bool,
        emit_snapshot: bool = True,
        resnapshot: bool = False,
    ) -> None:
        self.state = state
        self.resnapshot = resnapshot
        self.shapes = shapes
        self.integration = integration
        self.resource = resource
        self.snapshot = snapshot
        self.emit = emit_snapshot or not snapshot
        self.changes: list[Change] = []
        self.delta: dict[str, bytes] = {}
        # Shapes first seen in this page: the caller learns them with the delta, after the commit.
        self.new_shape_ids: dict[Shape, int] = {}
        self.new_shape_names: dict[int, Shape] = {}
        self.suppressed = self.stale = self.deleted_changes = self.snapshot_skipped = 0

    def result(self) -> DiffResult:
        return DiffResult(
            changes=self.changes,
            delta=self.delta,
            new_shapes=list(self.new_shape_names.items()),
            suppressed=self.suppressed,
            stale=self.stale,
            deleted_changes=self.deleted_changes,
            snapshot_skipped=self.snapshot_skipped,
        )

    def feed(self, records: Sequence[dict[str, Any]]) -> None:
        """Diff the next records of the page. Raises InvalidPage if one cannot be encoded as JSON."""
        state, delta = self.state, self.delta
        suppressed = 0
        for record in records:
            entity_id: str = record["id"]
            try:  # content_digest(), inlined: this loop runs for every record fetched
                record_json = _dumps(record, option=_SORT_KEYS)
            except orjson.JSONEncodeError:
                record_json = self._encoded(record, entity_id)
            digest = _blake2b(record_json, digest_size=8).digest()
            previous = delta.get(entity_id)
            if previous is None:
                previous = state.get(entity_id)
            # The hot path: most records of an overlapping poll are exactly what we remember. A vanished entity
            # coming back unchanged is the exception: it has the remembered hash but must be announced again.
            if previous is not None and previous.startswith(digest) and not previous[_FLAGS_OFFSET] & _VANISHED:
                if self.resnapshot:
                    self._reannounce(record, entity_id, record_json, digest)
                else:
                    suppressed += 1
                continue
            self._changed(record, entity_id, record_json, digest, previous)
            if self.resnapshot:
                self._reannounce(record, entity_id, record_json, digest)
        self.suppressed += suppressed

    def _reannounce(self, record: dict[str, Any], entity_id: str, record_json: bytes, digest: bytes) -> None:
        """Resnapshot mode: announce a live record once more, if memory holds it with this very content."""
        current = self.delta.get(entity_id)
        if current is None:
            current = self.state.get(entity_id)
        if current is None or not current.startswith(digest) or current[_FLAGS_OFFSET] & _DELETED:
            return  # stale (memory is newer), or deleted: nothing live to re-announce
        version = _HEADER.unpack_from(current)[2] + 1
        changed_at = self._timestamp(record, "changed_at", entity_id)
        self._remember(record, entity_id, digest, changed_at, version=version, deleted=False)
        content = int.from_bytes(digest, "little")
        self.changes.append(
            Change(
                kind="created",
                entity_id=entity_id,
                record=record,
                changed_fields=None,
                snapshot=True,
                restored=False,
                reason="resnapshot",
                version=version,
                content_hash=content,
                time_ms=changed_at,
                event_id=event_id(self.integration, self.resource, entity_id, version, "created", content),
                record_json=record_json,
                time_text=formatted_text(record.get("changed_at")),
            )
        )

    def _changed(
        self, record: dict[str, Any], entity_id: str, record_json: bytes, digest: bytes, previous: bytes | None
    ) -> None:
        deleted_now = record.get("remote_deleted_at") is not None
        changed_at = self._timestamp(record, "changed_at", entity_id)
        if previous is None:
            if deleted_now:
                self.deleted_changes += 1
                self._remember(record, entity_id, digest, changed_at, version=0, deleted=True)
            else:
                self._emit("created", record, entity_id, record_json, digest, changed_at, previous_version=0)
            return
        _, previous_changed_at, previous_version, _, flags = _HEADER.unpack_from(previous)
        if changed_at is not None and previous_changed_at != NO_TIMESTAMP and changed_at < previous_changed_at:
            self.stale += 1
        elif flags & _DELETED and deleted_now:
            self.deleted_changes += 1
            self._remember(record, entity_id, digest, changed_at, version=previous_version, deleted=True)
        elif flags & _DELETED:
            restored = previous_version > 0
            self._emit("created", record, entity_id, record_json, digest, changed_at, previous_version, restored)
        elif deleted_now:
            self._emit("deleted", record, entity_id, record_json, digest, changed_at, previous_version)
        else:
            self._emit(
                "updated", record, entity_id, record_json, digest, changed_at, previous_version, previous=previous
            )

    def _emit(
        self,
        kind: ChangeKind,
        record: dict[str, Any],
        entity_id: str,
        record_json: bytes,
        digest: bytes,
        changed_at: int | None,
        previous_version: int,
        restored: bool = False,
        *,
        previous: bytes | None = None,
    ) -> None:
        # An event's time is its record's changed_at, or remote_deleted_at for a deletion (see relay.events).
        time_field = "remote_deleted_at" if kind == "deleted" else "changed_at"
        time_ms = changed_at if kind != "deleted" else self._timestamp(record, time_field, entity_id)
        if not self.emit:
            # A silent snapshot builds memory only. The version counts emitted events, so it stays.
            self.snapshot_skipped += 1
            self._remember(record, entity_id, digest, changed_at, version=previous_version, deleted=kind == "deleted")
            return
        new_version = previous_version + 1
        names, hashes = self._remember(
            record, entity_id, digest, changed_at, version=new_version, deleted=kind == "deleted"
        )
        changed_fields = self._changed_fields(previous, names, hashes) if previous is not None else None
        content = int.from_bytes(digest, "little")
        self.changes.append(
            Change(
                kind=kind,
                entity_id=entity_id,
                record=record,
                changed_fields=changed_fields,
                snapshot=self.snapshot,
                restored=restored,
                reason=None,
                version=new_version,
                content_hash=content,
                time_ms=time_ms,
                event_id=event_id(self.integration, self.resource, entity_id, new_version, kind, content),
                record_json=record_json,
                time_text=formatted_text(record.get(time_field)),
            )
        )

    def _remember(
        self,
        record: dict[str, Any],
        entity_id: str,
        digest: bytes,
        changed_at: int | None,
        *,
        version: int,
        deleted: bool,
    ) -> tuple[Shape, list[int]]:
        """Put the record's fingerprint in the delta; returns its shape and field hashes."""
        if deleted:
            self.delta[entity_id] = make_fingerprint(digest, changed_at_ms=changed_at, version=version, deleted=True)
            return (), []
        names = tuple(sorted(record))
        if len(self.shapes) + len(self.new_shape_ids) >= MAX_SHAPES_PER_PAIR and self._is_new_shape(names):
            names = UNKNOWN_SHAPE
        try:  # field_hash(), inlined
            hashes = [_crc32(_dumps(record[name], option=_SORT_KEYS)) & 0xFFFF for name in names]
        except orjson.JSONEncodeError:  # an integer beyond 64 bits somewhere: the exact, slower way
            hashes = [self._field_hash(record[name], entity_id, name) for name in names]
        fingerprint = make_fingerprint(
            digest,
            changed_at_ms=changed_at,
            version=version,
            shape_id=self._shape_id(names),
            deleted=False,
            field_hashes=hashes,
        )
        self.delta[entity_id] = fingerprint
        return names, hashes

    def _changed_fields(self, previous: bytes, names: Shape, hashes: list[int]) -> tuple[str, ...]:
        """Top-level fields whose value changed, appeared or disappeared. Empty on a 16-bit hash collision, or when
        either record is remembered with UNKNOWN_SHAPE (see MAX_SHAPES_PER_PAIR): then which fields changed is unknown.
        """
        previous_names = self._shape_names(previous)
        if names == UNKNOWN_SHAPE or previous_names == UNKNOWN_SHAPE:
            return ()
        previous_hashes = _hash_values(previous, previous_names)
        if previous_names == names:  # the usual case: compare position by position, names already sorted
            return tuple(name for name, old, new in zip(names, previous_hashes, hashes, strict=True) if old != new)
        before = dict(zip(previous_names, previous_hashes, strict=True))
        after = dict(zip(names, hashes, strict=True))
        return tuple(sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name)))

    def _shape_names(self, fingerprint: bytes) -> Shape:
        # The fingerprint may refer to a shape first seen earlier in this page, not yet in the table.
        shape = shape_id(fingerprint)
        names = self.new_shape_names.get(shape)
        return self.shapes.names(shape) if names is None else names

    def _is_new_shape(self, names: Shape) -> bool:
        return self.shapes.id_of(names) is None and names not in self.new_shape_ids

    def _shape_id(self, names: Shape) -> int:
        known = self.shapes.id_of(names)
        if known is None:
            known = self.new_shape_ids.get(names)
        if known is None:
            known = self.shapes.next_id() + len(self.new_shape_ids)
            if known > _MAX_UINT32:
                raise self._invalid("", "RELAY.TOO_MANY_SHAPES", "more record shapes than a uint32 can number")
            self.new_shape_ids[names] = known
            self.new_shape_names[known] = names
        return known

    def _encoded(self, record: dict[str, Any], entity_id: str) -> bytes:
        try:
            return encode_json(record, sort_keys=True)
        except ValueError as exc:
            raise self._invalid(entity_id, "RELAY.UNENCODABLE_RECORD", str(exc)) from None

    def _field_hash(self, value: Any, entity_id: str, name: str) -> int:
        try:
            return field_hash(value)
        except ValueError as exc:  # pragma: no cover - the whole record was encoded already
            raise self._invalid(entity_id, "RELAY.UNENCODABLE_RECORD", f"field {name[:64]!r}: {exc}") from None

    def _timestamp(self, record: dict[str, Any], name: str, entity_id: str) -> int | None:
        value = record.get(name)
        if value is None:
            return None
        try:
            return parse_timestamp_ms(value)
        except (TypeError, ValueError) as exc:
            raise self._invalid(entity_id, "RELAY.INVALID_TIMESTAMP", f"`{name}`: {exc}") from None

    def _invalid(self, entity_id: str, code: str, problem: str) -> InvalidPage:
        subject = f"record {entity_id[:128]!r}: " if entity_id else ""
        return InvalidPage(subject + problem, code=code, integration=self.integration, resource=self.resource)


# -------------------------------------------------------------------------------------------------------- vanish


def find_vanished(
    state: Mapping[str, bytes],
    seen_ids: Collection[str],
    *,
    integration: str,
    resource: str,
    complete: bool,
    max_vanish_fraction: float,
) -> VanishResult:
    """``deleted`` events (reason ``vanished``) for live entities that a full fetch did not return.

    ``seen_ids`` must hold every id the full fetch returned, deleted ones included. Absence is weak evidence, so
    this refuses (no events, nothing to remember) when the fetch did not complete, or when more than
    ``max_vanish_fraction`` of the live entities would vanish at once: that smells of a source outage or a changed
    filter, not of mass deletion. The refusal tells how many would have vanished.
    """
    if not 0.0 <= max_vanish_fraction <= 1.0:
        raise ValueError(f"max_vanish_fraction must be between 0 and 1, got {max_vanish_fraction!r}")
    live = 0
    missing: list[tuple[str, bytes]] = []
    for entity_id, fingerprint in state.items():
        if fingerprint[_FLAGS_OFFSET] & _DELETED:
            continue
        live += 1
        if entity_id not in seen_ids:
            missing.append((entity_id, fingerprint))
    refused: VanishRefusal | None = None
    if not complete:
        refused = "incomplete"
    elif missing and len(missing) > max_vanish_fraction * live:
        refused = "too_many"
    if refused is not None:
        return VanishResult(changes=[], delta={}, refused=refused, would_vanish=len(missing), live=live)
    changes: list[Change] = []
    delta: dict[str, bytes] = {}
    for entity_id, fingerprint in missing:
        delta[entity_id] = vanished = _vanished(fingerprint)
        new_version = version(vanished)
        content = content_hash(fingerprint)
        changes.append(
            Change(
                kind="deleted",
                entity_id=entity_id,
                record=None,
                changed_fields=None,
                snapshot=False,
                restored=False,
                reason="vanished",
                version=new_version,
                content_hash=content,
                time_ms=None,
                event_id=event_id(integration, resource, entity_id, new_version, "deleted", content),
            )
        )
    return VanishResult(changes=changes, delta=delta, refused=None, would_vanish=len(missing), live=live)


__all__ = [
    "NO_TIMESTAMP",
    "Change",
    "ChangeKind",
    "DiffResult",
    "PageDiff",
    "ShapeTable",
    "VanishResult",
    "changed_at_ms",
    "content_digest",
    "content_hash",
    "diff_page",
    "field_hash",
    "field_hashes",
    "find_vanished",
    "is_deleted",
    "is_vanished",
    "make_fingerprint",
    "narrow_fingerprint",
    "shape_id",
    "version",
]

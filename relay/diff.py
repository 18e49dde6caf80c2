"""The diff engine: from what we remember about an ``(integration, resource)`` and a page of records, the events to
publish and what to remember next.

Everything here is pure: no I/O, no clock (times are passed in), no asyncio, and nothing given to it is mutated. The
caller publishes :attr:`DiffResult.changes`, and only once Kafka committed them applies :attr:`DiffResult.delta` and
:attr:`DiffResult.new_shapes` to its memory (:func:`apply_result` does exactly that). A page must be applied before
the next page of the same pair is diffed, or the next page is compared with an outdated memory.

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

Memory: per entity we keep a *fingerprint*, one immutable ``bytes`` (layout below), not the record. Field names
are kept once per distinct record *shape* (sorted tuple of top-level keys) in a :class:`ShapeTable`. Field names are
data from the source: any string is fine; they are only ever dict keys and JSON strings here.

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

Why 16-bit field hashes: the fingerprints are most of the relay's memory (with the entity id and the dict slot,
about 190 bytes per entity for 10-field records, against 220 with 32-bit hashes). Whether a record changed at all is
decided by the 64-bit content hash, so events are exact; only ``changed_fields`` can miss a field whose value
changed to one with the same 16-bit hash (about 1 in 65,536 changed fields; the update is still announced).
Fingerprints persisted with 32-bit hashes (state format 1) are read by keeping the low 16 bits of each, which is
exactly the 16-bit hash (see :func:`narrow_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, Literal, NamedTuple

import orjson

from relay.errors import InvalidPage, StateError

ChangeKind = Literal["created", "updated", "deleted"]
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


# --------------------------------------------------------------------------------------------------- timestamps

_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))",
    re.ASCII,
)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_MS_PER_DAY: Final = 86_400_000
_MIN_MS: Final = (date(1, 1, 1).toordinal() - _EPOCH_ORDINAL) * _MS_PER_DAY
_MAX_MS: Final = (date(9999, 12, 31).toordinal() - _EPOCH_ORDINAL + 1) * _MS_PER_DAY - 1
_EPOCH_NAIVE: Final = datetime(1970, 1, 1)
_ONE_MS: Final = timedelta(milliseconds=1)
_fromisoformat: Final = datetime.fromisoformat


@lru_cache(maxsize=4096)  # a page's times are parsed twice: when the source client validates it, then in its diff
def parse_timestamp_ms(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 timestamp (``2024-01-02T03:04:05.678Z``, ``...05+02:00``, ``...05Z``).

    A timezone is required: a naive time is ambiguous. Fractions finer than a millisecond are truncated, so a time
    never moves into the next millisecond. A leap second (``:60``) counts as the first millisecond of the next
    minute. Raises ValueError for anything else, including times outside years 1 to 9999 in UTC.
    """
    # Fast path for the form Kombo sends (``2024-01-02T03:04:05.678Z``): every separator checked here, every digit
    # by fromisoformat (ASCII digits only), so it accepts exactly what the pattern below accepts in this form.
    if (
        len(text) == 24
        and text[23] == "Z"
        and text[19] == "."
        and text[10] == "T"
        and text[4] == "-"
        and text[7] == "-"
        and text[13] == ":"
        and text[16] == ":"
    ):
        try:
            moment = _fromisoformat(text[:23])
        except ValueError:
            pass  # a leap second, or not a time at all: the general path decides
        else:
            if moment.tzinfo is None and text[20:23].isdigit() and text.isascii():
                return (moment - _EPOCH_NAIVE) // _ONE_MS
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp with a timezone: {text[:64]!r}")
    year, month, day, hour_text, minute_text, second_text, fraction, zulu, sign, offset_hours, offset_minutes = (
        match.groups()
    )
    hour, minute, second = int(hour_text), int(minute_text), int(second_text)
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"time of day out of range: {text[:64]!r}")
    days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL  # ValueError for 2024-02-30 etc.
    millis = int(fraction[:3].ljust(3, "0")) if fraction else 0
    offset_ms = 0
    if not zulu:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise ValueError(f"timezone offset out of range: {text[:64]!r}")
        offset_ms = (int(offset_hours) * 60 + int(offset_minutes)) * 60_000 * (1 if sign == "+" else -1)
    result = days * _MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + millis - offset_ms
    if not _MIN_MS <= result <= _MAX_MS:
        raise ValueError(f"timestamp outside years 1 to 9999 UTC: {text[:64]!r}")
    return result


def format_timestamp_ms(epoch_ms: int) -> str:
    """RFC 3339 in UTC with milliseconds (``2024-01-02T03:04:05.678Z``): the inverse of :func:`parse_timestamp_ms`."""
    days, millis_of_day = divmod(epoch_ms, _MS_PER_DAY)
    seconds_of_day, millis = divmod(millis_of_day, 1000)
    hours, seconds_of_hour = divmod(seconds_of_day, 3600)
    minutes, seconds = divmod(seconds_of_hour, 60)
    return "%sT%02d:%02d:%02d.%03dZ" % (_iso_day(days), hours, minutes, seconds, millis)  # noqa: UP031 - faster


@lru_cache(maxsize=4096)
def _iso_day(days: int) -> str:
    return date.fromordinal(days + _EPOCH_ORDINAL).isoformat()


def _event_time_text(text: Any) -> str | None:
    """``text`` if it is a timestamp already in :func:`format_timestamp_ms`'s form, else None (format it).

    For a ``text`` that :func:`parse_timestamp_ms` accepted, these checks are enough: 24 characters ending in ``Z``
    with the ``.`` and ``T`` in place leave exactly three fraction digits and fixed-width fields, and a leap second
    (``:60``), which parsing moves to the next minute, is the one other form excluded.
    """
    if (
        type(text) is str
        and len(text) == 24
        and text[23] == "Z"
        and text[19] == "."
        and text[10] == "T"
        and text[17] != "6"
    ):
        return text
    return None


# --------------------------------------------------------------------------------------------------------- JSON


def encode_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """``value`` as compact UTF-8 JSON; with ``sort_keys`` in a canonical form fit for hashing.

    orjson does the work. It refuses integers beyond 64 bits, which JSON allows and stdlib parsers produce, so those
    values fall back to the standard library: slower, but exact, and deterministic for a given value. Raises
    ValueError for what no JSON can carry: lone surrogates, non-string keys. (Non-finite floats, which no JSON parser
    produces, become null with orjson and a ValueError in the fallback.)
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except orjson.JSONEncodeError:
        pass
    try:
        text = json.dumps(value, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not encodable as JSON: {exc}") from None


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


def check_fingerprint(fingerprint: bytes, shapes: ShapeTable) -> None:
    """Raise StateError unless ``fingerprint`` is readable with ``shapes`` (for restoring persisted state)."""
    malformed = len(fingerprint) < _HEADER.size or fingerprint[_FLAGS_OFFSET] & ~(_DELETED | _VANISHED)
    if not malformed and is_deleted(fingerprint):
        malformed = len(fingerprint) != _HEADER.size or shape_id(fingerprint) != 0
    if malformed:
        raise StateError(f"malformed fingerprint {fingerprint[:40]!r}")
    field_hashes(fingerprint, shapes)


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


class Change(NamedTuple):  # immutable, and several times faster to build than a frozen dataclass
    """One event to publish. ``time_ms`` is None when the source gave no time: the caller uses detection time."""

    kind: ChangeKind
    entity_id: str
    record: dict[str, Any] | None  # as received; None for a vanished entity, whose record we do not keep
    changed_fields: tuple[str, ...] | None  # sorted; only for updates
    snapshot: bool
    restored: bool
    reason: Literal["vanished"] | None
    version: int
    content_hash: int
    time_ms: int | None
    event_id: str
    # The record as JSON with sorted keys, as hashed: the event embeds it instead of encoding the record again.
    record_json: bytes | None = None
    # The source's own text of ``time_ms`` when it is already in the event's form (``2024-01-02T03:04:05.678Z``).
    time_text: str | None = None


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


def event_id(integration: str, resource: str, entity_id: str, version: int, kind: ChangeKind, content: int) -> str:
    """Deterministic event id: the same change always gets the same id, so consumers can de-duplicate.

    ``version`` grows with every event of the entity, so content flipping A, B, A, B still gives distinct ids. The
    hash input is a JSON array, which keeps the parts unambiguous whatever characters they contain. The result is
    shaped as a UUIDv8 (RFC 9562: version and variant bits set, the rest is hash).
    """
    material = orjson.dumps([integration, resource, entity_id, version, kind, content])
    digest = bytearray(hashlib.blake2b(material, digest_size=16, person=b"relay.event-id").digest())
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
) -> DiffResult:
    """The events for one page of records and the fingerprints to remember once they are committed.

    ``records`` are JSON objects with a string ``id`` and ``changed_at`` / ``remote_deleted_at`` as RFC 3339 strings
    or null (the source client validated that). An entity appearing twice in the page is handled in order, the later
    record compared with the earlier. Raises InvalidPage if a record cannot be encoded as JSON.
    """
    page = PageDiff(
        state, shapes, integration=integration, resource=resource, snapshot=snapshot, emit_snapshot=emit_snapshot
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
    ) -> None:
        self.state = state
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
                suppressed += 1
                continue
            self._changed(record, entity_id, record_json, digest, previous)
        self.suppressed += suppressed

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
                time_text=_event_time_text(record.get(time_field)),
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


def apply_result(state: MutableMapping[str, bytes], shapes: ShapeTable, result: DiffResult | VanishResult) -> None:
    """Remember a result, once its events are committed: new shapes first, since the fingerprints refer to them."""
    if isinstance(result, DiffResult):
        for new_id, names in result.new_shapes:
            shapes.add_known(new_id, names)
    state.update(result.delta)


__all__ = [
    "NO_TIMESTAMP",
    "Change",
    "ChangeKind",
    "DiffResult",
    "PageDiff",
    "ShapeTable",
    "VanishResult",
    "apply_result",
    "changed_at_ms",
    "check_fingerprint",
    "content_digest",
    "content_hash",
    "diff_page",
    "encode_json",
    "event_id",
    "field_hash",
    "field_hashes",
    "find_vanished",
    "format_timestamp_ms",
    "is_deleted",
    "is_vanished",
    "make_fingerprint",
    "narrow_fingerprint",
    "parse_timestamp_ms",
    "shape_id",
    "version",
]

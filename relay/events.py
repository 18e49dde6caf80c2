"""The event contract: a :class:`Change` to announce, its deterministic id, and it as a CloudEvents 1.0 message.

What belongs here: what consumers see of a change (the Change the diff engine produces, :func:`event_id`, the
event's JSON, key and headers). The diff engine decides which changes there are; this module imports nothing from it.

This is a public contract; consumers depend on every name below. Structured content mode: the whole event is the
Kafka record value, JSON (UTF-8), and the ``content-type`` header says ``application/cloudevents+json``.

=================  ============================================================================================
attribute          value
=================  ============================================================================================
``specversion``    ``"1.0"``
``id``             deterministic (see :func:`event_id`): re-publishing a change repeats its id
``source``         ``/integrations/{integration}/{resource}``, each path segment percent-encoded, so it is a
                   valid URI-reference (a relative one, as CloudEvents allows) whatever the ids contain
``type``           ``{resource with "/" as "."}.{created|updated|deleted}``, e.g. ``ats.users.updated``
``subject``        the entity id
``time``           RFC 3339, UTC, milliseconds: ``changed_at``, or ``remote_deleted_at`` for deletes, or the
                   detection time when the source gave neither (vanished entities)
``datacontenttype`` ``"application/json"``
``data``           ``integration_id``, ``resource``, ``id``, ``remote_id`` (null for vanished entities),
                   ``record`` (as received, keys sorted; null for vanished entities, whose record is not kept),
                   ``changed_fields`` (sorted top-level names for ``updated``, else null), ``snapshot``,
                   ``restored``, ``reason`` (``"vanished"``, ``"resnapshot"`` or null)
=================  ============================================================================================

Kafka key: ``{integration}:{entity id}`` in UTF-8, so all events of an entity keep their order in one partition.
Headers: ``content-type``, plus ``ce_type`` and ``ce_id`` so consumers can route and de-duplicate without parsing
the value. Topic choice is the caller's.

Records hold whatever JSON the source sent, including integers beyond 64 bits: those are serialized exactly (see
:func:`relay.jsonenc.encode_json`), never rounded and never refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Final, Literal, NamedTuple, get_args
from urllib.parse import quote

import orjson

from relay.errors import InvalidPage
from relay.jsonenc import encode_json
from relay.kinds import ChangeKind
from relay.timestamps import format_timestamp_ms

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE: Final = b"application/cloudevents+json"
DATA_CONTENT_TYPE: Final = "application/json"

# The names of the contract, in the order the event's JSON has them. :func:`_event_json` writes exactly these (the
# unit tests check it) and :mod:`relay.contract` builds the published JSON Schema and AsyncAPI document from them.
ENVELOPE_ATTRIBUTES: Final = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data")
DATA_FIELDS: Final = (
    "integration_id",
    "resource",
    "id",
    "remote_id",
    "record",
    "changed_fields",
    "snapshot",
    "restored",
    "reason",
)
Reason = Literal["vanished", "resnapshot"]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
HEADER_CONTENT_TYPE: Final = "content-type"
HEADER_TYPE: Final = "ce_type"
HEADER_ID: Final = "ce_id"
KEY_SEPARATOR: Final = ":"
_EVENT_START: Final = b'{"specversion":%s,"id":' % encode_json(SPEC_VERSION)
_dumps: Final = orjson.dumps
_CONTENT_TYPE_HEADER: Final = (HEADER_CONTENT_TYPE, CONTENT_TYPE)


class Change(NamedTuple):  # immutable, and several times faster to build than a frozen dataclass
    """One event to publish. ``time_ms`` is None when the source gave no time: the caller uses detection time."""

    kind: ChangeKind
    entity_id: str
    record: dict[str, Any] | None  # as received; None for a vanished entity, whose record we do not keep
    changed_fields: tuple[str, ...] | None  # sorted; only for updates
    snapshot: bool
    restored: bool
    reason: Reason | None
    version: int
    content_hash: int
    time_ms: int | None
    event_id: str
    # The record as JSON with sorted keys, as hashed: the event embeds it instead of encoding the record again.
    record_json: bytes | None = None
    # The source's own text of ``time_ms`` when it is already in the event's form (``2024-01-02T03:04:05.678Z``).
    time_text: str | None = None


def event_id(integration: str, resource: str, entity_id: str, version: int, kind: ChangeKind, content: int) -> str:
    """Deterministic event id: the same change always gets the same id, so consumers can de-duplicate.

    ``version`` grows with every event of the entity, so content flipping A, B, A, B still gives distinct ids. The
    hash input is a JSON array, which keeps the parts unambiguous whatever characters they contain. The result is
    shaped as a UUIDv8 (RFC 9562: version and variant bits set, the rest is hash).
    """
    # The array's first two items are the same for every event of a pair: they are hashed once (_pair_hasher), and
    # each event hashes the rest, ``"entity",version,"kind",content]``, into a copy. Same bytes, same digest.
    hasher = _pair_hasher(integration, resource).copy()
    hasher.update(_dumps([entity_id, version, kind, content])[1:])
    digest = hasher.digest()
    h = digest.hex()
    # RFC 9562: the version nibble (the 13th hex digit) is 8; the variant, the top two bits of byte 8, is 0b10.
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{_VARIANT_DIGITS[(digest[8] >> 4) & 3]}{h[17:20]}-{h[20:]}"


_VARIANT_DIGITS: Final = "89ab"


@lru_cache(maxsize=4096)
def _pair_hasher(integration: str, resource: str) -> Any:
    """The event id's hash of a pair with ``[integration,resource,`` fed in: copied, never updated itself."""
    hasher = hashlib.blake2b(digest_size=16, person=b"relay.event-id")
    hasher.update(_dumps([integration, resource])[:-1] + b",")
    return hasher


class KafkaMessage(NamedTuple):  # immutable, and several times faster to build than a frozen dataclass
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    type: str


def event_type(resource: str, kind: ChangeKind) -> str:
    """``ats/users`` + ``updated`` -> ``ats.users.updated``."""
    return f"{_type_prefix(resource)}.{kind}"


@lru_cache(maxsize=1024)
def _type_prefix(resource: str) -> str:
    prefix = resource.strip("/").replace("/", ".")
    if not prefix:
        raise ValueError(f"resource {resource!r} names nothing")
    return prefix


@lru_cache(maxsize=1024)
def _types(resource: str, kind: ChangeKind) -> tuple[str, tuple[str, bytes]]:
    """The event type, and its Kafka header."""
    kind_type = event_type(resource, kind)
    return kind_type, (HEADER_TYPE, kind_type.encode())


@lru_cache(maxsize=4096)
def event_source(integration: str, resource: str) -> str:
    """The CloudEvents ``source``: ``/integrations/{integration}/{resource}``, percent-encoded per segment."""
    segments = [integration, *resource.strip("/").split("/")]
    return "/integrations/" + "/".join(quote(segment, safe="") for segment in segments)


def kafka_key(integration: str, entity_id: str) -> bytes:
    return f"{integration}{KEY_SEPARATOR}{entity_id}".encode()


def to_kafka_message(change: Change, *, integration: str, resource: str, detected_at_ms: int) -> KafkaMessage:
    """The Kafka message for ``change``. ``detected_at_ms`` is the ``time`` when the change carries none.

    Raises InvalidPage if the record cannot be encoded as JSON (which :func:`relay.diff.diff_page` already checked).
    """
    kind_type, type_header = _types(resource, change.kind)
    try:
        value = _event_json(change, integration, resource, detected_at_ms)
        key = kafka_key(integration, change.entity_id)
    except ValueError as exc:  # UnicodeEncodeError included: a lone surrogate in an id
        problem = f"record {change.entity_id[:128]!r} cannot be published: {exc}"
        raise InvalidPage(
            problem, code="RELAY.UNENCODABLE_RECORD", integration=integration, resource=resource
        ) from None
    headers = [_CONTENT_TYPE_HEADER, type_header, (HEADER_ID, change.event_id.encode())]
    return KafkaMessage(key, value, headers, kind_type)


def _event_json(change: Change, integration: str, resource: str, detected_at_ms: int) -> bytes:
    """The event as JSON: the bytes ``encode_json`` gives for the CloudEvent object (attributes in the order of the
    module docstring's table), assembled from pieces. What is the same for every event of a pair and kind is encoded
    once (:func:`_event_pieces`): encoding a whole object per event was a large share of the relay's CPU per record.
    The pieces that vary are encoded by orjson directly; what it refuses (an integer beyond 64 bits in ``remote_id``,
    a lone surrogate) takes :func:`encode_json`'s exact way, or fails the same."""
    try:
        return _assemble(change, integration, resource, detected_at_ms, _dumps)
    except orjson.JSONEncodeError:
        return _assemble(change, integration, resource, detected_at_ms, encode_json)


def _assemble(
    change: Change, integration: str, resource: str, detected_at_ms: int, encode: Callable[[Any], bytes]
) -> bytes:
    head, middle = _event_pieces(integration, resource, change.kind)
    record = change.record
    time_text = change.time_text or format_timestamp_ms(detected_at_ms if change.time_ms is None else change.time_ms)
    subject = encode(change.entity_id)
    return b"".join(
        (
            _EVENT_START,
            encode(change.event_id),
            head,
            subject,
            b',"time":',
            encode(time_text),
            middle,
            subject,
            b',"remote_id":',
            b"null" if record is None else encode(record.get("remote_id")),
            b',"record":',
            encode_json(record) if change.record_json is None else change.record_json,
            b',"changed_fields":',
            encode(change.changed_fields),
            _event_tail(change.snapshot, change.restored, change.reason),
        )
    )


@lru_cache(maxsize=4096)
def _event_pieces(integration: str, resource: str, kind: ChangeKind) -> tuple[bytes, bytes]:
    """The constant JSON between ``id`` and ``subject`` (source, type) and between ``time`` and ``data.id``."""
    head = b',"source":%s,"type":%s,"subject":' % (
        encode_json(event_source(integration, resource)),
        encode_json(_types(resource, kind)[0]),
    )
    middle = b',"datacontenttype":%s,"data":{"integration_id":%s,"resource":%s,"id":' % (
        encode_json(DATA_CONTENT_TYPE),
        encode_json(integration),
        encode_json(resource),
    )
    return head, middle


@lru_cache(maxsize=64)
def _event_tail(snapshot: bool, restored: bool, reason: str | None) -> bytes:
    return b',"snapshot":%s,"restored":%s,"reason":%s}}' % (
        encode_json(snapshot),
        encode_json(restored),
        encode_json(reason),
    )

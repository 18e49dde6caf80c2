"""The event contract: one :class:`~relay.diff.Change` as a CloudEvents 1.0 message for Kafka.

This is a public contract; consumers depend on every name below. Structured content mode: the whole event is the
Kafka record value, JSON (UTF-8), and the ``content-type`` header says ``application/cloudevents+json``.

=================  ============================================================================================
attribute          value
=================  ============================================================================================
``specversion``    ``"1.0"``
``id``             deterministic (see :func:`relay.diff.event_id`): re-publishing a change repeats its id
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
                   ``restored``, ``reason`` (``"vanished"`` or null)
=================  ============================================================================================

Kafka key: ``{integration}:{entity id}`` in UTF-8, so all events of an entity keep their order in one partition.
Headers: ``content-type``, plus ``ce_type`` and ``ce_id`` so consumers can route and de-duplicate without parsing
the value. Topic choice is the caller's.

Records hold whatever JSON the source sent, including integers beyond 64 bits: those are serialized exactly (see
:func:`relay.jsonenc.encode_json`), never rounded and never refused.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final, NamedTuple
from urllib.parse import quote

from relay.diff import Change, ChangeKind
from relay.errors import InvalidPage
from relay.jsonenc import encode_json
from relay.timestamps import format_timestamp_ms

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE: Final = b"application/cloudevents+json"
DATA_CONTENT_TYPE: Final = "application/json"
_EVENT_START: Final = b'{"specversion":%s,"id":' % encode_json(SPEC_VERSION)


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
def _types(resource: str, kind: ChangeKind) -> tuple[str, bytes]:
    kind_type = event_type(resource, kind)
    return kind_type, kind_type.encode()


@lru_cache(maxsize=4096)
def event_source(integration: str, resource: str) -> str:
    """The CloudEvents ``source``: ``/integrations/{integration}/{resource}``, percent-encoded per segment."""
    segments = [integration, *resource.strip("/").split("/")]
    return "/integrations/" + "/".join(quote(segment, safe="") for segment in segments)


def kafka_key(integration: str, entity_id: str) -> bytes:
    return f"{integration}:{entity_id}".encode()


def to_kafka_message(change: Change, *, integration: str, resource: str, detected_at_ms: int) -> KafkaMessage:
    """The Kafka message for ``change``. ``detected_at_ms`` is the ``time`` when the change carries none.

    Raises InvalidPage if the record cannot be encoded as JSON (which :func:`relay.diff.diff_page` already checked).
    """
    kind_type, kind_type_bytes = _types(resource, change.kind)
    try:
        value = _event_json(change, integration, resource, detected_at_ms)
        key = kafka_key(integration, change.entity_id)
    except ValueError as exc:  # UnicodeEncodeError included: a lone surrogate in an id
        problem = f"record {change.entity_id[:128]!r} cannot be published: {exc}"
        raise InvalidPage(
            problem, code="RELAY.UNENCODABLE_RECORD", integration=integration, resource=resource
        ) from None
    headers = [
        ("content-type", CONTENT_TYPE),
        ("ce_type", kind_type_bytes),
        ("ce_id", change.event_id.encode()),
    ]
    return KafkaMessage(key=key, value=value, headers=headers, type=kind_type)


def _event_json(change: Change, integration: str, resource: str, detected_at_ms: int) -> bytes:
    """The event as JSON: the bytes ``encode_json`` gives for the CloudEvent object (attributes in the order of the
    module docstring's table), assembled from pieces. What is the same for every event of a pair and kind is encoded
    once (:func:`_event_pieces`): encoding a whole object per event was an eighth of the relay's CPU per record."""
    head, middle = _event_pieces(integration, resource, change.kind)
    record = change.record
    time_text = change.time_text or format_timestamp_ms(detected_at_ms if change.time_ms is None else change.time_ms)
    subject = encode_json(change.entity_id)
    return b"".join(
        (
            _EVENT_START,
            encode_json(change.event_id),
            head,
            subject,
            b',"time":',
            encode_json(time_text),
            middle,
            subject,
            b',"remote_id":',
            b"null" if record is None else encode_json(record.get("remote_id")),
            b',"record":',
            encode_json(record) if change.record_json is None else change.record_json,
            b',"changed_fields":',
            encode_json(change.changed_fields),
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

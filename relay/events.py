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
:func:`relay.diff.encode_json`), never rounded and never refused.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final, NamedTuple
from urllib.parse import quote

import orjson

from relay.diff import Change, ChangeKind, encode_json, format_timestamp_ms
from relay.errors import InvalidPage

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE: Final = b"application/cloudevents+json"
DATA_CONTENT_TYPE: Final = "application/json"


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
    record = change.record
    event: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": change.event_id,
        "source": event_source(integration, resource),
        "type": kind_type,
        "subject": change.entity_id,
        "time": change.time_text or format_timestamp_ms(detected_at_ms if change.time_ms is None else change.time_ms),
        "datacontenttype": DATA_CONTENT_TYPE,
        "data": {
            "integration_id": integration,
            "resource": resource,
            "id": change.entity_id,
            "remote_id": None if record is None else record.get("remote_id"),
            "record": record if change.record_json is None else orjson.Fragment(change.record_json),
            "changed_fields": change.changed_fields,
            "snapshot": change.snapshot,
            "restored": change.restored,
            "reason": change.reason,
        },
    }
    try:
        value = encode_json(event)
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

"""The event contract: CloudEvents attributes, data, Kafka key and headers, and JSON fidelity."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from relay import diff
from relay.diff import ShapeTable
from relay.errors import InvalidPage
from relay.events import Change, KafkaMessage, event_id, event_source, event_type, kafka_key, to_kafka_message
from relay.jsonenc import encode_json
from relay.kinds import ChangeKind
from relay.timestamps import format_timestamp_ms, parse_timestamp_ms
from tests.unit.support import apply_result

INTEGRATION = "acme"
RESOURCE = "ats/users"
DETECTED_AT_MS = parse_timestamp_ms("2024-05-05T05:05:05.555Z")
CHANGED_AT = "2024-01-02T03:04:05.678Z"
DELETED_AT = "2024-02-03T04:05:06.789Z"

CLOUDEVENT_ATTRIBUTES = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}
DATA_FIELDS = {
    "integration_id",
    "resource",
    "id",
    "remote_id",
    "record",
    "changed_fields",
    "snapshot",
    "restored",
    "reason",
}
# RFC 3986 URI-reference characters: unreserved, reserved, and percent-encoded octets.
URI_REFERENCE = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")


def record(entity_id: str = "u1", **fields: Any) -> dict[str, Any]:
    return {
        "id": entity_id,
        "remote_id": f"remote-{entity_id}",
        "changed_at": CHANGED_AT,
        "remote_deleted_at": None,
        "name": "Ada",
        **fields,
    }


def changes_for(*pages: list[dict[str, Any]], integration: str = INTEGRATION, resource: str = RESOURCE) -> list[Change]:
    state: dict[str, bytes] = {}
    shapes = ShapeTable()
    changes: list[Change] = []
    for page in pages:
        result = diff.diff_page(state, shapes, page, integration=integration, resource=resource, snapshot=False)
        apply_result(state, shapes, result)
        changes.extend(result.changes)
    return changes


def message(change: Change, integration: str = INTEGRATION, resource: str = RESOURCE) -> KafkaMessage:
    return to_kafka_message(change, integration=integration, resource=resource, detected_at_ms=DETECTED_AT_MS)


def event_of(change: Change, integration: str = INTEGRATION, resource: str = RESOURCE) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(message(change, integration, resource).value)
    return parsed


def lifecycle() -> list[Change]:
    """created, updated, deleted, created again (restored) for u1."""
    return changes_for(
        [record()],
        [record(name="Grace", changed_at="2024-01-03T00:00:00Z")],
        [record(name="Grace", changed_at="2024-01-03T00:00:00Z", remote_deleted_at=DELETED_AT)],
        [record(name="Grace", changed_at="2024-03-01T00:00:00Z")],
    )


def vanished_change() -> Change:
    state: dict[str, bytes] = {}
    shapes = ShapeTable()
    apply_result(
        state,
        shapes,
        diff.diff_page(state, shapes, [record()], integration=INTEGRATION, resource=RESOURCE, snapshot=False),
    )
    result = diff.find_vanished(
        state, set(), integration=INTEGRATION, resource=RESOURCE, complete=True, max_vanish_fraction=1.0
    )
    [change] = result.changes
    return change


def assert_valid_cloudevent(event: dict[str, Any]) -> None:
    assert set(event) == CLOUDEVENT_ATTRIBUTES
    assert event["specversion"] == "1.0"
    for attribute in ("id", "source", "type", "subject", "time", "datacontenttype"):
        assert isinstance(event[attribute], str)
        assert event[attribute]
    assert URI_REFERENCE.fullmatch(event["source"])
    assert event["time"].endswith("Z")
    parse_timestamp_ms(event["time"])
    assert event["datacontenttype"] == "application/json"
    assert set(event["data"]) == DATA_FIELDS


# ------------------------------------------------------------------------------------------------ attributes


def test_every_kind_is_a_valid_cloudevent() -> None:
    for change in [*lifecycle(), vanished_change()]:
        assert_valid_cloudevent(event_of(change))


def test_created_event() -> None:
    [change] = changes_for([record()])
    event = event_of(change)
    assert event["id"] == change.event_id
    assert event["source"] == "/integrations/acme/ats/users"
    assert event["type"] == "ats.users.created"
    assert event["subject"] == "u1"
    assert event["time"] == CHANGED_AT
    assert event["data"] == {
        "integration_id": "acme",
        "resource": "ats/users",
        "id": "u1",
        "remote_id": "remote-u1",
        "record": record(),
        "changed_fields": None,
        "snapshot": False,
        "restored": False,
        "reason": None,
    }


def test_lifecycle_types_times_and_flags() -> None:
    events = [event_of(change) for change in lifecycle()]
    assert [e["type"] for e in events] == [
        "ats.users.created",
        "ats.users.updated",
        "ats.users.deleted",
        "ats.users.created",
    ]
    assert [e["time"] for e in events] == [
        CHANGED_AT,
        "2024-01-03T00:00:00.000Z",
        DELETED_AT,  # deletes are timed by remote_deleted_at
        "2024-03-01T00:00:00.000Z",
    ]
    assert [e["data"]["changed_fields"] for e in events] == [None, ["changed_at", "name"], None, None]
    assert [e["data"]["restored"] for e in events] == [False, False, False, True]
    assert len({e["id"] for e in events}) == 4


def test_vanished_delete_has_no_record_and_detection_time() -> None:
    event = event_of(vanished_change())
    assert event["type"] == "ats.users.deleted"
    assert event["time"] == "2024-05-05T05:05:05.555Z"
    assert event["data"]["record"] is None
    assert event["data"]["remote_id"] is None
    assert event["data"]["reason"] == "vanished"


def test_missing_changed_at_uses_detection_time() -> None:
    [change] = changes_for([record(changed_at=None)])
    assert event_of(change)["time"] == "2024-05-05T05:05:05.555Z"


def test_snapshot_flag_is_carried() -> None:
    result = diff.diff_page({}, ShapeTable(), [record()], integration=INTEGRATION, resource=RESOURCE, snapshot=True)
    assert event_of(result.changes[0])["data"]["snapshot"] is True


@pytest.mark.parametrize(
    ("resource", "kind", "expected"),
    [
        ("ats/users", "updated", "ats.users.updated"),
        ("/hris/employees/", "created", "hris.employees.created"),
        ("ats/application-stages", "deleted", "ats.application-stages.deleted"),
    ],
)
def test_event_type(resource: str, kind: ChangeKind, expected: str) -> None:
    assert event_type(resource, kind) == expected


def test_event_type_needs_a_resource() -> None:
    with pytest.raises(ValueError, match="names nothing"):
        event_type("/", "created")


@given(st.text(min_size=1), st.lists(st.text(min_size=1), min_size=1, max_size=3))
def test_source_is_a_uri_reference_for_any_ids(integration: str, segments: list[str]) -> None:
    resource = "/".join(segments)
    source = event_source(integration, resource)
    assert URI_REFERENCE.fullmatch(source)
    parts = source.split("/")
    assert parts[:2] == ["", "integrations"]
    decoded = [unquote(part) for part in parts[2:]]
    assert decoded == [integration, *resource.strip("/").split("/")]


# ------------------------------------------------------------------------------------------------ Kafka framing


def test_key_and_headers() -> None:
    [change] = changes_for([record()])
    out = message(change)
    assert out.key == b"acme:u1"
    assert out.type == "ats.users.created"
    assert out.headers == [
        ("content-type", b"application/cloudevents+json"),
        ("ce_type", b"ats.users.created"),
        ("ce_id", change.event_id.encode()),
    ]


def test_key_is_utf8_and_keeps_separators() -> None:
    assert kafka_key("inté:gration", "ü:1") == "inté:gration:ü:1".encode()


def test_same_change_gives_the_same_bytes() -> None:
    first, second = lifecycle(), lifecycle()
    assert [message(c) for c in first] == [message(c) for c in second]


def reference_event_id(
    integration: str, resource: str, entity_id: str, version: int, kind: ChangeKind, content: int
) -> str:
    """The event id as the contract defines it, written out plainly: the relay's faster way must give the same."""
    material = orjson.dumps([integration, resource, entity_id, version, kind, content])
    digest = bytearray(hashlib.blake2b(material, digest_size=16, person=b"relay.event-id").digest())
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))


@settings(max_examples=300, deadline=None)
@given(
    integration=st.text(min_size=1, max_size=20),
    entity_id=st.text(min_size=1, max_size=30),
    version=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["created", "updated", "deleted"]),
    content=st.integers(0, 2**64 - 1),
)
def test_event_ids_are_the_contracts_whatever_the_parts(
    integration: str, entity_id: str, version: int, kind: ChangeKind, content: int
) -> None:
    assume(not any(0xD800 <= ord(c) <= 0xDFFF for c in integration + entity_id))  # JSON carries no lone surrogate
    expected = reference_event_id(integration, RESOURCE, entity_id, version, kind, content)
    assert event_id(integration, RESOURCE, entity_id, version, kind, content) == expected


def test_ids_differ_between_integrations() -> None:
    [ours] = changes_for([record()])
    [theirs] = changes_for([record()], integration="other")
    assert ours.event_id != theirs.event_id


# ------------------------------------------------------------------------------------------------ JSON fidelity


def test_integers_beyond_64_bits_are_published_exactly() -> None:
    [change] = changes_for([record(big=2**100, negative=-(2**70), nested={"list": [2**64]})])
    data = event_of(change)["data"]
    assert data["record"]["big"] == 2**100
    assert data["record"]["negative"] == -(2**70)
    assert data["record"]["nested"] == {"list": [2**64]}


def test_the_record_is_embedded_as_hashed_with_sorted_keys() -> None:
    # The diff encodes each record once (keys sorted, for its content hash); the event embeds those bytes, so the
    # same record gives the same event bytes whatever order the source sent its keys in.
    [forward] = changes_for([record(b=1, a={"z": 1, "y": 2})])
    [backward] = changes_for([dict(reversed(record(a={"y": 2, "z": 1}, b=1).items()))])
    assert message(forward).value == message(backward).value
    assert b'"record":{"a":{"y":2,"z":1},"b":1,"changed_at":' in message(forward).value


def test_a_change_without_its_encoded_record_still_publishes_it() -> None:
    [change] = changes_for([record(b=1)])
    bare = change._replace(record_json=None, time_text=None)
    assert event_of(bare) == event_of(change)


def test_unencodable_record_is_refused_cleanly() -> None:
    broken = Change(
        kind="created",
        entity_id="u1",
        record={"id": "u1", "name": "\udcff"},
        changed_fields=None,
        snapshot=False,
        restored=False,
        reason=None,
        version=1,
        content_hash=0,
        time_ms=None,
        event_id="00000000-0000-8000-8000-000000000000",
    )
    with pytest.raises(InvalidPage, match="u1") as caught:
        message(broken)
    assert caught.value.code == "RELAY.UNENCODABLE_RECORD"


json_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | json_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(json_text, json_values, max_size=8), json_text.filter(bool))
def test_any_json_record_round_trips(fields: dict[str, Any], entity_id: str) -> None:
    incoming = {**fields, "id": entity_id, "changed_at": CHANGED_AT, "remote_deleted_at": None}
    [change] = changes_for([incoming])
    out = message(change)
    event = json.loads(out.value)
    assert_valid_cloudevent(event)
    assert event["data"]["record"] == incoming
    assert event["subject"] == entity_id
    assert out.key == f"{INTEGRATION}:{entity_id}".encode()


def event_object(change: Change, integration: str, resource: str) -> dict[str, Any]:
    """The CloudEvent as the module docstring specifies it, built the plain way: the reference for the bytes."""
    time_ms = DETECTED_AT_MS if change.time_ms is None else change.time_ms
    return {
        "specversion": "1.0",
        "id": change.event_id,
        "source": event_source(integration, resource),
        "type": event_type(resource, change.kind),
        "subject": change.entity_id,
        "time": change.time_text or format_timestamp_ms(time_ms),
        "datacontenttype": "application/json",
        "data": {
            "integration_id": integration,
            "resource": resource,
            "id": change.entity_id,
            # Pre-encoded like the record: an integer beyond 64 bits is encoded exactly (see test above), which orjson
            # alone refuses and the standard library's fallback cannot do around a Fragment.
            "remote_id": orjson.Fragment(
                encode_json(None if change.record is None else change.record.get("remote_id"))
            ),
            "record": orjson.Fragment(encode_json(change.record) if change.record_json is None else change.record_json),
            "changed_fields": change.changed_fields,
            "snapshot": change.snapshot,
            "restored": change.restored,
            "reason": change.reason,
        },
    }


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(json_text, json_values, max_size=6),
    json_text.filter(bool),
    json_text.filter(bool),
    json_text.filter(lambda text: bool(text.strip("/"))),
    json_values,
)
def test_the_event_bytes_are_those_of_the_cloudevent_object(
    fields: dict[str, Any], entity_id: str, integration: str, resource: str, remote_id: Any
) -> None:
    # The event is assembled from pre-encoded pieces for speed; it must be byte for byte what encoding the whole
    # object gives, for every kind of change and whatever the ids, the resource and the record contain.
    first = {**fields, "id": entity_id, "changed_at": CHANGED_AT, "remote_deleted_at": None, "remote_id": remote_id}
    pages = [
        [first],
        [{**first, "extra": 1, "changed_at": "2024-01-03T00:00:00+01:00"}],
        [{**first, "extra": 1, "changed_at": "2024-01-03T00:00:00+01:00", "remote_deleted_at": DELETED_AT}],
        [{**first, "changed_at": "2024-03-01T00:00:00Z"}],
    ]
    changes = changes_for(*pages, integration=integration, resource=resource)
    assert [change.kind for change in changes] == ["created", "updated", "deleted", "created"]
    state = {entity_id: diff.make_fingerprint(b"\0" * 8, changed_at_ms=0, version=1, deleted=False)}
    changes += diff.find_vanished(
        state, set(), integration=integration, resource=resource, complete=True, max_vanish_fraction=1.0
    ).changes
    changes.append(changes[0]._replace(record_json=None))
    for change in changes:
        value = message(change, integration, resource).value
        assert value == orjson.dumps(event_object(change, integration, resource))
        if change.record is not None:
            assert json.loads(value)["data"]["remote_id"] == remote_id

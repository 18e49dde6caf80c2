"""The event contract, machine-readable: the JSON Schema of an event and the AsyncAPI document of the topics.

What belongs here: building both documents from the names :mod:`relay.events` writes (attributes, data fields,
reasons, headers, key) and from the configuration (topics), so they cannot drift from the code. A record's schema
comes from Kombo's OpenAPI document (the result item of the resource's list endpoint), when it is at hand and
describes the resource; otherwise ``data.record`` is left open. ``deploy/schemas/`` holds the committed output
(``make schemas``); a test regenerates it and compares.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson

from relay.config import Config
from relay.config_kinds import is_resource_path
from relay.events import (
    CONTENT_TYPE,
    DATA_CONTENT_TYPE,
    DATA_FIELDS,
    ENVELOPE_ATTRIBUTES,
    HEADER_CONTENT_TYPE,
    HEADER_ID,
    HEADER_TYPE,
    KEY_SEPARATOR,
    REASONS,
    SPEC_VERSION,
    event_source,
    event_type,
)
from relay.kinds import CHANGE_KINDS
from relay.simulator.records import RESOURCES as SIMULATED_RESOURCES

JSON_SCHEMA: Final = "https://json-schema.org/draft/2020-12/schema"
EVENT_SCHEMA_FILE: Final = "event.schema.json"
KNOWN_RESOURCES: Final[tuple[str, ...]] = tuple(SIMULATED_RESOURCES)
"""The resources whose record schema is published: the ones the simulator serves (and the tests check)."""
# ``../shared/kombo-openapi.json`` beside the repository: where a checkout finds Kombo's OpenAPI document.
DEFAULT_OPENAPI: Final = Path(__file__).resolve().parents[2] / "shared" / "kombo-openapi.json"

# event_id(): a UUID shaped as version 8, variant RFC 9562.
_EVENT_ID_PATTERN: Final = "^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
# format_timestamp_ms(): RFC 3339, UTC, milliseconds.
_TIME_PATTERN: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
# is_resource_path(): segments of a-z, 0-9, _ and - between slashes.
_RESOURCE_PATTERN: Final = "^[a-z0-9_-]+(/[a-z0-9_-]+)*$"
_KINDS: Final = "|".join(CHANGE_KINDS)


def schema_file(resource: str) -> str:
    """The name of a resource's event schema: ``ats/users`` -> ``event.ats.users.schema.json``."""
    return f"event.{resource.replace('/', '.')}.schema.json"


def event_schema(resource: str | None = None, openapi: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema (2020-12) of an event: of any resource, or of ``resource``'s with its record's schema from
    ``openapi`` (Kombo's document) when it describes the resource."""
    record: dict[str, Any] = {"type": ["object", "null"], "description": "The record as the source sent it."}
    remote_id: dict[str, Any] = {"description": 'The record\'s "remote_id", or null (vanished entities).'}
    defs: dict[str, Any] = {}
    if resource is not None and openapi is not None:
        found = record_schema(openapi, resource)
        if found is not None:
            item, defs = found
            defs = {"record": item, **defs}
            record = {"anyOf": [{"$ref": "#/$defs/record"}, {"type": "null"}]}
            if "remote_id" in item.get("properties", {}):
                remote_id = {"anyOf": [item["properties"]["remote_id"], {"type": "null"}]}
    record["description"] = (
        "The record as received, keys sorted; null for a deleted entity with reason vanished (records are not kept)."
    )
    properties: dict[str, Any] = {
        "specversion": {"const": SPEC_VERSION},
        "id": {
            "type": "string",
            "pattern": _EVENT_ID_PATTERN,
            "description": "Deterministic (a UUIDv8 hash of integration, resource, entity, version, kind, content): "
            "the same change always has the same id.",
        },
        "source": _source_schema(resource),
        "type": _type_schema(resource),
        "subject": {"type": "string", "description": "The entity id (data.id)."},
        "time": {
            "type": "string",
            "format": "date-time",
            "pattern": _TIME_PATTERN,
            "description": "changed_at, or remote_deleted_at for deletes, or the detection time when the source gave "
            "neither; RFC 3339, UTC, milliseconds.",
        },
        "datacontenttype": {"const": DATA_CONTENT_TYPE},
        "data": {"$ref": "#/$defs/data"},
    }
    data: dict[str, Any] = {
        "integration_id": {"type": "string", "description": "The integration the entity belongs to."},
        "resource": {"const": resource} if resource else {"type": "string", "pattern": _RESOURCE_PATTERN},
        "id": {"type": "string", "description": "The entity id."},
        "remote_id": remote_id,
        "record": record,
        "changed_fields": {
            "type": ["array", "null"],
            "items": {"type": "string"},
            "uniqueItems": True,
            "description": "The top-level fields that changed, sorted, for updated; null otherwise.",
        },
        "snapshot": {"type": "boolean", "description": "Announced by a (re-)snapshot, not by a change seen live."},
        "restored": {"type": "boolean", "description": "A created for an entity announced deleted before."},
        "reason": {
            "enum": [*REASONS, None],
            "description": "vanished: deleted because a full listing lacked it. resnapshot: a created re-announcing a "
            "live record because an operator asked for a resnapshot (relay resnapshot); snapshot is true. Null "
            "otherwise, the initial snapshot's events included.",
        },
    }
    assert tuple(properties) == ENVELOPE_ATTRIBUTES  # the names events.py writes, in its order
    assert tuple(data) == DATA_FIELDS
    title = f"change-relay {resource} event" if resource else "change-relay event"
    return {
        "$schema": JSON_SCHEMA,
        "title": title,
        "description": "A CloudEvents 1.0 event, structured mode (the Kafka record value), as change-relay writes it.",
        "type": "object",
        "required": list(ENVELOPE_ATTRIBUTES),
        "additionalProperties": False,
        "properties": properties,
        "allOf": [
            {  # changed_fields is set exactly for updates
                "if": {"properties": {"type": {"pattern": r"\.updated$"}}},
                "then": {"properties": {"data": {"properties": {"changed_fields": {"type": "array"}}}}},
                "else": {"properties": {"data": {"properties": {"changed_fields": {"type": "null"}}}}},
            },
            {  # a resnapshot re-announces a live record: a created, flagged snapshot
                "if": {"properties": {"data": {"properties": {"reason": {"const": "resnapshot"}}}}},
                "then": {
                    "properties": {
                        "type": {"pattern": r"\.created$"},
                        "data": {"properties": {"snapshot": {"const": True}, "record": {"type": "object"}}},
                    }
                },
            },
            {  # a vanished entity is a delete without record
                "if": {"properties": {"data": {"properties": {"reason": {"const": "vanished"}}}}},
                "then": {
                    "properties": {
                        "type": {"pattern": r"\.deleted$"},
                        "data": {"properties": {"record": {"type": "null"}, "remote_id": {"type": "null"}}},
                    }
                },
            },
        ],
        "$defs": {
            "data": {
                "type": "object",
                "required": list(DATA_FIELDS),
                "additionalProperties": False,
                "properties": data,
            },
            **defs,
        },
    }


def _source_schema(resource: str | None) -> dict[str, Any]:
    description = "/integrations/{integration}/{resource}, each path segment percent-encoded."
    if resource is None:
        return {"type": "string", "pattern": "^/integrations/[^/]+(/[a-z0-9_-]+)+$", "description": description}
    # The tail is the same for every integration: take it from the function that writes it.
    tail = event_source("x", resource).removeprefix("/integrations/x")
    return {"type": "string", "pattern": f"^/integrations/[^/]+{re.escape(tail)}$", "description": description}


def _type_schema(resource: str | None) -> dict[str, Any]:
    description = "{resource with / as .}.{created|updated|deleted}"
    if resource is None:
        return {"type": "string", "pattern": f"^[a-z0-9_-]+(\\.[a-z0-9_-]+)*\\.({_KINDS})$", "description": description}
    return {"enum": [event_type(resource, kind) for kind in CHANGE_KINDS], "description": description}


def record_schema(openapi: Mapping[str, Any], resource: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The result item of ``GET /{resource}`` in Kombo's OpenAPI document, and the components it refers to (as
    ``$defs``, references rewritten to them); None if the document has no such list endpoint."""
    operation = openapi.get("paths", {}).get(f"/{resource}", {}).get("get")
    if operation is None:
        return None
    components: Mapping[str, Any] = openapi.get("components", {}).get("schemas", {})

    def resolve(node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            node = components[node["$ref"].removeprefix("#/components/schemas/")]
        return node

    try:
        response = resolve(operation["responses"]["200"]["content"]["application/json"]["schema"])
        item = response["properties"]["data"]["properties"]["results"]["items"]
    except KeyError:
        return None
    defs: dict[str, Any] = {}
    pending = [item]
    while pending:  # gather every component the item refers to, directly or not
        for name in _refs(pending.pop()):
            if name not in defs:
                defs[name] = components[name]
                pending.append(components[name])
    rewrite = _rewrite_refs
    return rewrite(resolve(item)), {name: rewrite(schema) for name, schema in sorted(defs.items())}


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            yield ref.removeprefix("#/components/schemas/")
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: value.replace("#/components/schemas/", "#/$defs/")
            if key == "$ref" and isinstance(value, str)
            else _rewrite_refs(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(value) for value in node]
    return node


def load_openapi(path: Path | None) -> dict[str, Any] | None:
    """Kombo's OpenAPI document, or None when ``path`` is None or missing (the records' schemas stay open)."""
    if path is None or not path.is_file():
        return None
    document: dict[str, Any] = orjson.loads(path.read_bytes())
    return document


def schema_files(resources: Iterable[str], openapi: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Every schema file by name: ``event.schema.json`` and one per resource."""
    files = {EVENT_SCHEMA_FILE: event_schema()}
    for resource in resources:
        if not is_resource_path(resource):
            raise ValueError(f"{resource!r} is not a resource path like ats/users")
        files[schema_file(resource)] = event_schema(resource, openapi)
    return files


def dump_json(document: Mapping[str, Any]) -> bytes:
    """How the generated documents are written: indented, keys in the order built, a final newline."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def asyncapi(config: Config, *, schema_base: str = "./") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the topics ``config`` produces: one channel per event topic of every resource of
    RELAY_RESOURCES, RELAY_RESOURCES_ATS and RELAY_RESOURCES_HRIS (message payload: the resource's event schema, in
    ``schema_base``) and the state topic, marked internal. Resources an integration of the registry names of its own
    are not known here: the description says they add topics."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    read_committed = (
        "Consume with isolation.level=read_committed: the relay writes each page's events in a Kafka transaction "
        "with its state, and read_uncommitted consumers also see the events of aborted transactions."
    )
    for resource in config.all_resources():
        message_id = "event_" + re.sub(r"[^A-Za-z0-9_]", "_", resource)
        schema = schema_file(resource) if resource in KNOWN_RESOURCES else EVENT_SCHEMA_FILE
        messages[message_id] = _message(resource, schema_base + schema, config.emit_tombstones)
        topics = dict.fromkeys(config.topic_for(resource, kind) for kind in CHANGE_KINDS)
        for topic in topics:
            channel_id = _channel_id(topic)
            kinds = [kind for kind in CHANGE_KINDS if config.topic_for(resource, kind) == topic]
            channels[channel_id] = {
                "address": topic,
                "title": topic,
                "description": f"{', '.join(kinds)} events of {resource}, every entity's events in one partition, "
                "in order (key: integration and entity). Read with isolation.level=read_committed.",
                "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
                "bindings": {
                    "kafka": {"topic": topic, "partitions": config.topic_partitions, "bindingVersion": "0.5.0"}
                },
                "x-kafka-consumer-config": {"isolation.level": "read_committed"},
            }
            operations[f"publish_{channel_id}"] = {
                "action": "send",
                "title": f"Publish {resource} changes",
                "description": f"The relay publishes one event per change. {read_committed}",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
            }
    state_id = _channel_id(config.state_topic)
    channels[state_id] = {
        "address": config.state_topic,
        "title": config.state_topic,
        "description": "Internal: the relay's own progress (compacted). Not part of the contract; do not consume.",
        "tags": [{"name": "internal"}],
        "bindings": {
            "kafka": {
                "topic": config.state_topic,
                "partitions": config.state_topic_partitions,
                "topicConfiguration": {"cleanup.policy": ["compact"]},
                "bindingVersion": "0.5.0",
            }
        },
        "x-internal": True,
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "change-relay events",
            "version": "1.0.0",
            "description": "One CloudEvents 1.0 JSON event per record change (created / updated / deleted) of a "
            f"Kombo-style API, per resource topic. {read_committed} The channels are the topics of the resources "
            "every integration may be polled for (RELAY_RESOURCES, RELAY_RESOURCES_ATS, RELAY_RESOURCES_HRIS); an "
            "integration of the registry with resources of its own (relay integrations add --resources) adds the "
            "topics of those, named by the same template, with the same message shape. Generated by `relay "
            "asyncapi`.",
        },
        "defaultContentType": CONTENT_TYPE.decode(),
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


_KEY_SCHEMA: Final = {
    "type": "string",
    "description": f"{{integration_id}}{KEY_SEPARATOR}{{entity id}} in UTF-8; integration ids may contain "
    f"'{KEY_SEPARATOR}', entity ids do not: split on the last one.",
    "pattern": f"^.+{KEY_SEPARATOR}[^{KEY_SEPARATOR}]+$",
}


def _channel_id(topic: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", topic)


def _message(resource: str, schema_ref: str, tombstones: bool) -> dict[str, Any]:
    description = f"A change of a {resource} record. Event id also in the {HEADER_ID} header, for de-duplication."
    if tombstones:
        description += " Each deleted event is followed by a tombstone (same key, null value), for compaction."
    return {
        "name": f"{resource.replace('/', '.')}.change",
        "title": f"{resource} change",
        "summary": f"{', '.join(event_type(resource, kind) for kind in CHANGE_KINDS)}",
        "description": description,
        "contentType": CONTENT_TYPE.decode(),
        "headers": {
            "type": "object",
            "required": [HEADER_CONTENT_TYPE, HEADER_TYPE, HEADER_ID],
            "properties": {
                HEADER_CONTENT_TYPE: {"const": CONTENT_TYPE.decode()},
                HEADER_TYPE: {"enum": [event_type(resource, kind) for kind in CHANGE_KINDS]},
                HEADER_ID: {"type": "string", "pattern": _EVENT_ID_PATTERN, "description": "The event's id."},
            },
        },
        "payload": {"schemaFormat": "application/schema+json;version=draft-2020-12", "schema": {"$ref": schema_ref}},
        "bindings": {"kafka": {"key": _KEY_SCHEMA, "bindingVersion": "0.5.0"}},
    }

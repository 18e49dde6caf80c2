"""The machine-readable contract in deploy/schemas/: made from the code that writes the events, committed as
generated, valid for its own specification, and valid for the events the relay writes.

(Every event the end-to-end tests collect is validated too: ``tests/integration/harness.py``.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from relay.contract import (
    EVENT_SCHEMA_FILE,
    KNOWN_RESOURCES,
    asyncapi,
    dump_json,
    load_openapi,
    schema_file,
    schema_files,
)
from relay.contract_asyncapi import render_yaml
from relay.events import DATA_FIELDS, ENVELOPE_ATTRIBUTES, HEADER_CONTENT_TYPE, HEADER_ID, HEADER_TYPE
from relay.simulator import Simulator
from relay.tail import load_reader_config
from tests.integration.harness import check_contract
from tests.unit.test_events import changes_for, lifecycle, message, vanished_change

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "deploy" / "schemas"
# The official JSON Schema of AsyncAPI 3.0.0: schemas/3.0.0-without-$id.json of the npm package @asyncapi/specs
# 6.11.1 (Apache-2.0), minified. No maintained AsyncAPI 3 validator is on PyPI; this is the schema the official
# JavaScript parser validates with.
ASYNCAPI_SCHEMA = Path(__file__).resolve().parent / "asyncapi-3.0.0.schema.json"


def committed_asyncapi_config_environ() -> dict[str, str]:
    """The configuration `make schemas` describes: defaults, every known resource (the Makefile must agree)."""
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^SCHEMA_RESOURCES := (.+)$", makefile, re.MULTILINE)
    assert match is not None
    assert match.group(1).split(",") == list(KNOWN_RESOURCES)
    return {"RELAY_RESOURCES": match.group(1)}


def test_the_event_json_has_the_contract_names_in_order() -> None:
    for change in [*lifecycle(), vanished_change()]:
        kafka = message(change)
        event: dict[str, Any] = orjson.loads(kafka.value)
        assert tuple(event) == ENVELOPE_ATTRIBUTES
        assert tuple(event["data"]) == DATA_FIELDS
        assert [name for name, _ in kafka.headers] == [HEADER_CONTENT_TYPE, HEADER_TYPE, HEADER_ID]


def test_committed_schemas_are_what_the_code_generates(kombo_spec_path: Path) -> None:
    generated = schema_files(KNOWN_RESOURCES, load_openapi(kombo_spec_path))
    committed = {path.name for path in SCHEMAS.glob("*.schema.json")}
    assert committed == set(generated), "deploy/schemas/ is stale: run `make schemas`"
    for name, schema in generated.items():
        assert (SCHEMAS / name).read_bytes() == dump_json(schema), f"{name} is stale: run `make schemas`"


def test_committed_asyncapi_is_what_the_code_generates() -> None:
    config = load_reader_config(None, committed_asyncapi_config_environ())
    expected = render_yaml(asyncapi(config))
    assert (SCHEMAS / "asyncapi.yaml").read_text() == expected, "asyncapi.yaml is stale: run `make schemas`"


@pytest.mark.parametrize("name", [EVENT_SCHEMA_FILE, *(schema_file(r) for r in KNOWN_RESOURCES)])
def test_schemas_are_valid_json_schema_2020_12(name: str) -> None:
    Draft202012Validator.check_schema(orjson.loads((SCHEMAS / name).read_bytes()))


def test_per_resource_schemas_carry_kombo_record_schemas() -> None:
    users = orjson.loads((SCHEMAS / schema_file("ats/users")).read_bytes())
    record = users["$defs"]["record"]
    assert {"id", "remote_id", "email", "changed_at", "remote_deleted_at"} <= set(record["properties"])
    generic = orjson.loads((SCHEMAS / EVENT_SCHEMA_FILE).read_bytes())
    assert generic["$defs"]["data"]["properties"]["record"]["type"] == ["object", "null"]  # open: any resource


def test_every_kind_of_event_validates_and_a_broken_one_does_not() -> None:
    for change in [*lifecycle(), vanished_change()]:
        check_contract(orjson.loads(message(change).value), by_resource=False)  # records of no Kombo shape
    event = orjson.loads(message(lifecycle()[1]).value)  # an update
    validator = Draft202012Validator(orjson.loads((SCHEMAS / EVENT_SCHEMA_FILE).read_bytes()))
    broken: list[dict[str, Any]] = [
        {**event, "extra": 1},
        {**event, "time": "2024-01-02T03:04:05Z"},
        {**event, "data": {**event["data"], "changed_fields": None}},  # updates name their fields
        {**event, "data": {**event["data"], "reason": "vanished"}},  # vanished: only deletes, without record
        {k: v for k, v in event.items() if k != "subject"},
    ]
    for body in broken:
        assert not validator.is_valid(body), body


def test_a_record_that_breaks_kombos_schema_fails_its_resource_schema() -> None:
    user = next(Simulator(integrations=["acme"], users=1).records("acme", "ats/users"))
    [change] = changes_for([user])
    event = orjson.loads(message(change, resource="ats/users").value)
    check_contract(event)
    event["data"]["record"]["status"] = "SOMETIMES"  # Kombo's enum: ACTIVE, INACTIVE
    with pytest.raises(AssertionError, match=r"event\.ats\.users\.schema\.json"):
        check_contract(event)


def test_asyncapi_document_is_valid_asyncapi_3() -> None:
    document = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    schema = orjson.loads(ASYNCAPI_SCHEMA.read_bytes())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in Draft7Validator(schema).iter_errors(document)]
    assert not errors, errors[:5]
    # What a JSON Schema cannot check: every reference resolves, inside the document or to a committed file.
    for ref in _refs(document):
        if ref.startswith("#/"):
            _resolve_pointer(document, ref)
        else:
            assert (SCHEMAS / ref).is_file(), ref


def test_asyncapi_channels_are_the_configured_topics() -> None:
    config = load_reader_config(None, {**committed_asyncapi_config_environ(), "RELAY_TOPIC_PREFIX": "acme"})
    document = asyncapi(config)
    addresses = {c["address"]: c for c in document["channels"].values()}
    assert set(addresses) == {*config.event_topics(), config.state_topic}
    assert addresses[config.state_topic]["x-internal"] is True
    for topic in config.event_topics():
        assert "read_committed" in addresses[topic]["description"]
    message = document["components"]["messages"]["event_ats_users"]
    assert message["headers"]["properties"]["ce_type"]["enum"] == [
        "ats.users.created",
        "ats.users.updated",
        "ats.users.deleted",
    ]
    assert message["payload"]["schema"] == {"$ref": "./event.ats.users.schema.json"}
    # A template routing by event gives three topics per resource, all described.
    split = load_reader_config(None, {"RELAY_TOPIC_TEMPLATE": "{prefix}.{resource}.{event}"})
    channels = {c["address"] for c in asyncapi(split)["channels"].values()}
    assert channels == {*split.event_topics(), split.state_topic}
    assert len(split.event_topics()) == 3


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve_pointer(document: Any, ref: str) -> Any:
    node = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_asyncapi_lists_the_topics_of_the_category_defaults_too() -> None:
    environ = {
        "RELAY_RESOURCES": "ats/users",
        "RELAY_RESOURCES_ATS": "ats/jobs",
        "RELAY_RESOURCES_HRIS": "hris/employees",
    }
    config = load_reader_config(None, environ)
    document = asyncapi(config)
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {"kombo.ats.users", "kombo.ats.jobs", "kombo.hris.employees", config.state_topic}
    assert set(document["components"]["messages"]) == {"event_ats_users", "event_ats_jobs", "event_hris_employees"}
    # Resources only an integration of the registry names are not in the configuration: the document says so.
    assert "relay integrations add --resources" in document["info"]["description"]

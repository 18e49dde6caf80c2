"""Helpers for the simulator's tests: the spec's schemas, a client, and shared constants.

Every response a test looks at can be checked against ``../shared/kombo-openapi.json`` with ``spec.check(...)``:
JSON Schema Draft 2020-12 validation with ``$ref`` resolved into the spec's components (via a ``referencing``
registry), plus a stricter check that every record carries every property its schema declares, nested ones too.
(A module of its own, not ``conftest``: several ``conftest.py`` outside packages make ``import conftest`` ambiguous.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from relay.simulator import SimulatorServer

SPEC_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "kombo-openapi.json"
SPEC_URI = "urn:kombo-openapi"
ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
API_KEY = "test-key"
USERS = "ats/users"
RESOURCES = ("ats/users", "ats/candidates", "ats/jobs", "hris/employees")
START = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


class Spec:
    """The list endpoints' schemas from the spec, ready to validate responses."""

    def __init__(self, path: Path) -> None:
        self.document: dict[str, Any] = orjson.loads(path.read_bytes())
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
        self._validators: dict[str, Draft202012Validator] = {}

    def operation(self, resource: str) -> dict[str, Any]:
        operation: dict[str, Any] = self.document["paths"][f"/{resource}"]["get"]
        return operation

    def _pointer(self, resource: str, status: int) -> str:
        responses = self.operation(resource)["responses"]
        if status == 200:
            ref = responses["200"]["content"]["application/json"]["schema"]["$ref"]
            return str(ref)
        ref = responses["default"]["$ref"]  # a response component; its schema is inside
        return f"{ref}/content/application~1json/schema"

    def validator(self, resource: str, status: int) -> Draft202012Validator:
        pointer = self._pointer(resource, status)
        if pointer not in self._validators:
            self._validators[pointer] = Draft202012Validator({"$ref": SPEC_URI + pointer}, registry=self.registry)
        return self._validators[pointer]

    def resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            node = self.registry.resolver(SPEC_URI).lookup(SPEC_URI + node["$ref"]).contents
        return node

    def record_schema(self, resource: str) -> dict[str, Any]:
        response = self.resolve({"$ref": self._pointer(resource, 200)})
        schema: dict[str, Any] = self.resolve(response["properties"]["data"]["properties"]["results"]["items"])
        return schema

    def check(self, resource: str, status: int, body: Any) -> None:
        """``body`` is valid for ``resource``'s response with ``status``, and its records are complete."""
        errors = sorted(self.validator(resource, status).iter_errors(body), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
        if status == 200:
            for record in body["data"]["results"]:
                missing = self.missing_properties(self.record_schema(resource), record)
                assert not missing, f"{resource} record {record.get('id')} lacks {missing}"

    def missing_properties(self, schema: Any, value: Any, path: str = "") -> list[str]:
        """Properties the schema declares that ``value`` lacks, and properties it has that the schema does not."""
        schema = self.resolve(schema)
        if not isinstance(schema, dict) or value is None:
            return []
        variants = schema.get("anyOf") or schema.get("oneOf")
        if variants:
            fitting = [v for v in variants if self._fits(v, value)]
            return self.missing_properties(fitting[0], value, path) if fitting else [f"{path}: no variant fits"]
        problems: list[str] = []
        if isinstance(value, dict) and "properties" in schema:
            declared = set(schema["properties"])
            problems += [f"{path}.{name}" for name in sorted(declared - set(value))]
            if schema.get("additionalProperties") is not True:
                problems += [f"{path}.{name} (undeclared)" for name in sorted(set(value) - declared)]
            for name, sub in schema["properties"].items():
                if name in value:
                    problems += self.missing_properties(sub, value[name], f"{path}.{name}")
        if isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                problems += self.missing_properties(schema["items"], item, f"{path}[{i}]")
        return problems

    def _fits(self, variant: Any, value: Any) -> bool:
        return bool(Draft202012Validator(variant, registry=self.registry).is_valid(value))


@dataclass
class Reply:
    status: int
    headers: Any  # CIMultiDictProxy[str]
    text: str

    @property
    def json(self) -> Any:
        return orjson.loads(self.text)

    @property
    def results(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = self.json["data"]["results"]
        return results

    @property
    def next(self) -> str | None:
        cursor: str | None = self.json["data"]["next"]
        return cursor

    @property
    def failure(self) -> tuple[int, str | None]:
        """(HTTP status, Kombo error code) of an error reply."""
        return self.status, self.code

    @property
    def code(self) -> str | None:
        code: str | None = self.json["error"]["code"]
        return code


class Client:
    """Requests to the simulator's API the way a Kombo client makes them."""

    def __init__(self, session: aiohttp.ClientSession, server: SimulatorServer, spec: Spec) -> None:
        self.session = session
        self.server = server
        self.spec = spec

    async def get(
        self,
        resource: str = USERS,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
        *,
        integration: str | None = ACME,
        api_key: str | None = API_KEY,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        check: bool = True,
    ) -> Reply:
        """GET a list endpoint; a JSON reply is validated against the spec unless ``check`` is False."""
        sent = dict(headers or {})
        if api_key is not None:
            sent["Authorization"] = f"Bearer {api_key}"
        if integration is not None:
            sent["X-Integration-Id"] = integration
        async with self.session.get(
            f"{self.server.url}/{resource}",
            params=params or {},
            headers=sent,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            reply = Reply(response.status, response.headers, await response.text())
        if check and reply.headers.get("Content-Type", "").startswith("application/json"):
            self.spec.check(resource, reply.status, reply.json)
        return reply

    async def all_pages(
        self, resource: str = USERS, params: dict[str, str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Every record, following ``next`` and resending the filters with each page, as a client must."""
        records: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(10_000):
            page_params = {**(params or {}), **({"cursor": cursor} if cursor else {})}
            reply = await self.get(resource, page_params, **kwargs)
            assert reply.status == 200, reply.text
            records += reply.results
            cursor = reply.next
            if cursor is None:
                return records
        raise AssertionError("pagination did not end")

    async def control(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the control API; returns (status, parsed JSON)."""
        data = orjson.dumps(body) if body is not None else None
        async with self.session.request(method, f"{self.server.control_url}{path}", data=data) as response:
            return response.status, orjson.loads(await response.read())

"""The admin HTTP API without a broker: the parsing of request bodies (each problem named), the bearer check, the
mapping of outcomes to statuses, and, on a real HTTP server on localhost, what is answered before Kafka is asked:
404 when the API is off, 401 without or with a wrong token (and the token in no log line), 400 for a bad body or
id, 413 for a body too large. The operations themselves, on the real broker: tests/integration/test_admin_http.py."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.admin import (
    MAX_BODY_BYTES,
    STATUSES,
    AdminApi,
    admin_routes,
    bearer_matches,
    outcome_of,
    parse_add,
    parse_command,
    parse_edit,
)
from relay.config import Config, load_config
from relay.errors import (
    KafkaAuthenticationFailed,
    KafkaAuthorizationFailed,
    KafkaTimedOut,
    KafkaUnavailable,
    UnknownIntegration,
)
from relay.metrics import ADMIN_OUTCOMES, Metrics
from relay.netaddr import bound_port
from relay.secret import Secret
from tests.unit.support import NO_KAFKA

TOKEN = "s3cret-admin-t0ken"

# --- Bodies -------------------------------------------------------------------------------------------------------


def test_an_empty_body_asks_for_the_defaults() -> None:
    added = parse_add(b"")
    assert (added.category, added.resources, added.by) == (None, None, None)
    assert (added.wait, added.timeout) == (True, 30.0)
    edit = parse_edit(b"  ")
    assert (edit.by, edit.wait, edit.timeout) == (None, True, 30.0)
    command = parse_command(b"{}", "resnapshot")
    assert (command.resource, command.wait, command.timeout, command.yes) == (None, True, 60.0, False)


def test_a_full_body_is_read() -> None:
    added = parse_add(b'{"category": "ats", "resources": ["ats/users", "ats/jobs"], "by": "alice"}')
    assert (added.category, added.resources, added.by) == ("ats", ("ats/users", "ats/jobs"), "alice")
    edit = parse_edit(b'{"by": "bob", "wait": false, "timeout": 2.5}')
    assert (edit.by, edit.wait, edit.timeout) == ("bob", False, 2.5)
    command = parse_command(b'{"resource": "ats/users", "wait": false, "timeout": 5, "yes": true}', "reset")
    assert (command.resource, command.wait, command.timeout, command.yes) == ("ats/users", False, 5.0, True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"category=ats", "the body is not JSON"),
        (b"\xff\xfe", "the body is not JSON"),
        (b'["ats"]', "the body must be a JSON object, not a list"),
        (b'"ats"', "the body must be a JSON object, not a string"),
        (b'{"categroy": "ats"}', "unknown field 'categroy'; the fields are category, resources, by, wait, timeout"),
        (b'{"category": 1}', "field 'category' must be a string, not a number"),
        (b'{"category": "crm"}', "field 'category' must be one of ats, hris or null, got 'crm'"),
        (b'{"resources": "ats/users"}', "field 'resources' must be a list, not a string"),
        (b'{"resources": ["ats/users", 2]}', "field 'resources' must be a list of strings"),
        (b'{"resources": []}', "field 'resources': list 1 to 256 resources"),
        (b'{"resources": ["ATS/users"]}', "field 'resources': 'ATS/users' is not a resource path"),
        (b'{"category": "hris", "resources": ["ats/users"]}', "not a resource of an HRIS integration"),
        (b'{"by": true}', "field 'by' must be a string, not true or false"),
    ],
)
def test_a_bad_add_body_is_refused_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_add(body)


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [
        (b'{"resource": ["ats/users"]}', "reconcile", "field 'resource' must be a string, not a list"),
        (b'{"wait": "no"}', "resnapshot", "field 'wait' must be true or false, not a string"),
        (b'{"timeout": "5"}', "resnapshot", "field 'timeout' must be a number, not a string"),
        (b'{"timeout": 0}', "resnapshot", "field 'timeout' must be a number of seconds > 0 and <= 300"),
        (b'{"timeout": 301}', "resnapshot", "<= 300"),
        (b'{"timeout": true}', "resnapshot", "field 'timeout' must be a number of seconds"),
        (b'{"yes": true}', "resnapshot", "unknown field 'yes'; the fields are resource, wait, timeout"),
        (b'{"yes": "yes"}', "reset", "field 'yes' must be true or false, not a string"),
    ],
)
def test_a_bad_command_body_is_refused_naming_the_field(body: bytes, kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_command(body, kind)


# --- Authentication, statuses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # the scheme is case-insensitive (RFC 7235)
        (f"Bearer {TOKEN} ", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        (f"Basic {TOKEN}", False),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
    ],
)
def test_the_bearer_token_must_be_the_configured_one(header: str | None, matches: bool) -> None:
    assert bearer_matches(header, Secret(TOKEN)) is matches


@pytest.mark.parametrize(
    ("error", "outcome", "status"),
    [
        (UnknownIntegration("x", integration="a:1"), "unknown_integration", 404),
        (ValueError("x"), "invalid", 400),
        (KafkaAuthorizationFailed("x"), "kafka_refused", 502),
        (KafkaAuthenticationFailed("x"), "kafka_refused", 502),
        (KafkaTimedOut("x"), "kafka_timeout", 504),
        (KafkaUnavailable("x"), "kafka_unavailable", 503),
    ],
)
def test_each_failure_has_its_outcome_and_status(error: Exception, outcome: str, status: int) -> None:
    assert outcome_of(error) == outcome
    assert STATUSES[outcome] == status


def test_every_outcome_has_a_status_and_a_metric_label() -> None:
    assert set(STATUSES) == set(ADMIN_OUTCOMES)
    assert {STATUSES[o] for o in ("done", "sent", "no_ack", "failed")} == {200, 202, 500}


# --- On a real HTTP server ----------------------------------------------------------------------------------------


def config_with(**environ: str) -> Config:
    return load_config(environ={"RELAY_KAFKA_BOOTSTRAP_SERVERS": NO_KAFKA, **environ}, kafka_only=True)


async def serve(config: Config, metrics: Metrics) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_routes(admin_routes(config, metrics))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}"
    finally:
        await runner.cleanup()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def api(metrics: Metrics) -> AsyncIterator[str]:
    async for url in serve(config_with(RELAY_ADMIN_TOKEN=TOKEN), metrics):
        yield url


async def call(
    method: str, url: str, *, token: str | None = TOKEN, body: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.request(method, url, data=body, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/integrations"), ("POST", "/admin/integrations/personio:acme/pause"), ("GET", "/admin")],
)
async def test_every_admin_path_answers_404_when_the_api_is_off(metrics: Metrics, method: str, path: str) -> None:
    async for url in serve(config_with(), metrics):
        status, document, _ = await call(method, url + path)
        assert status == 404
        assert "the admin API is off" in document["error"]
    assert (
        metrics.registry.get_sample_value("relay_admin_requests_total", {"operation": "list", "outcome": "done"})
        is None
    )


async def test_no_token_and_a_wrong_token_are_401_with_a_challenge_and_never_logged(
    api: str, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="relay"):
        status, document, headers = await call("GET", f"{api}/admin/integrations", token=None)
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="relay admin"'
        assert document["error"] == "unauthorized: a bearer token is required"

        wrong = "not-" + TOKEN
        status, document, headers = await call("POST", f"{api}/admin/integrations/personio:acme/pause", token=wrong)
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="relay admin", error="invalid_token"'
        assert document == {
            "operation": "pause",
            "outcome": "unauthorized",
            "integration": "personio:acme",
            "error": "unauthorized: wrong token",
        }
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert "admin request" in logged
    assert TOKEN not in logged
    labels = {"operation": "pause", "outcome": "unauthorized"}
    assert metrics.registry.get_sample_value("relay_admin_requests_total", labels) == 1
    assert metrics.registry.get_sample_value("relay_admin_requests_total", {"operation": "add", "outcome": "done"}) == 0


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/admin/integrations/personio:acme", b"{", "the body is not JSON"),
        ("/admin/integrations/personio:acme", b'{"resources": "ats/users"}', "field 'resources' must be a list"),
        ("/admin/integrations/personio:acme/pause", b'{"by": ""}', "by must be printable text of 1 to 256 characters"),
        ("/admin/integrations/personio:a%20b", b"", "'personio:a b' is not an integration id"),
        ("/admin/integrations/personio:acme/resnapshot", b'{"wait": 1}', "field 'wait' must be true or false"),
        ("/admin/integrations/personio:acme/reset", b"", 'Send {"yes": true} to do it'),
    ],
)
async def test_a_bad_request_is_400_before_kafka_is_asked(api: str, path: str, body: bytes, message: str) -> None:
    status, document, _ = await call("POST", api + path, body=body)
    assert (status, document["outcome"]) == (400, "invalid"), document
    assert message in document["error"]


async def test_a_body_too_large_is_413(api: str) -> None:
    body = b'{"by": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, document, _ = await call("POST", f"{api}/admin/integrations/personio:acme/pause", body=body)
    assert (status, document["outcome"]) == (413, "too_large")
    assert document["error"] == f"the body is larger than {MAX_BODY_BYTES} bytes"


async def test_kafka_refusing_connections_is_503(api: str) -> None:
    status, document, _ = await call("POST", f"{api}/admin/integrations/personio:acme/pause")
    assert (status, document["outcome"]) == (503, "kafka_unavailable")
    assert document["error"].startswith("no Kafka bootstrap server could be reached")


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """host:port of a socket that accepts connections (the kernel does, from its backlog) and never answers."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield f"127.0.0.1:{listening.getsockname()[1]}"


async def test_beyond_the_requests_allowed_in_flight_one_is_503_busy(silent_broker: str, metrics: Metrics) -> None:
    """Each request holds Kafka clients while it runs: past the bound, one is turned away at once, not queued."""
    api = AdminApi(
        config_with(RELAY_ADMIN_TOKEN=TOKEN, RELAY_KAFKA_BOOTSTRAP_SERVERS=silent_broker), metrics, max_in_flight=1
    )
    app = web.Application()
    app.router.add_routes(api.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{bound_port(runner)}/admin/integrations/personio:acme/resnapshot"
    try:
        # Kafka never answers: the first request waits its whole timeout, in flight.
        first = asyncio.create_task(call("POST", url, body=b'{"timeout": 3}'))
        while api.in_flight < 1:
            assert not first.done(), await first
            await asyncio.sleep(0.01)
        status, document, headers = await call("POST", url)
        assert (status, document["outcome"], headers["Retry-After"]) == (503, "busy", "1")
        assert document["error"] == "busy: 1 admin requests are in progress; try again"
        status, document, _ = await call("POST", url.replace("/resnapshot", "/reconcile"), token="wrong")
        assert status == 401  # the bearer check comes first: a stranger learns nothing of the load
        status, document, _ = await first
        # Its timeout and the connection's end at the same moment: either says Kafka did not answer.
        assert (status, document["outcome"]) in ((504, "kafka_timeout"), (503, "kafka_unavailable"))
        assert api.in_flight == 0
    finally:
        await runner.cleanup()
    labels = {"operation": "resnapshot", "outcome": "busy"}
    assert metrics.registry.get_sample_value("relay_admin_requests_total", labels) == 1

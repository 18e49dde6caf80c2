"""The source client against a broken or hostile source: every wait, size, time, label and field it takes from a
response is bounded. Small aiohttp servers on 127.0.0.1 play the source, each test setting how it answers."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from relay.config import load_config
from relay.errors import InvalidPage, RateLimited, RetryableSourceError, SourceError
from relay.metrics import Metrics
from relay.source import KOMBO_ERROR_CODES, MAX_CURSOR_CHARS, SourceClient
from tests.unit.support import RecordingSleep

GLOBEX = "greenhouse:globex"
ACME = "personio:acme"
USERS = "ats/users"
API_KEY = "sk-hostile-0123456789"
RECORD = {"id": "u1", "changed_at": "2025-07-01T12:00:00.000Z", "remote_deleted_at": None}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def page_body(records: list[dict[str, Any]] | None = None, next_cursor: object = None) -> bytes:
    results = [RECORD] if records is None else records
    return orjson.dumps({"status": "success", "data": {"results": results, "next": next_cursor}})


def answer(status: int = 200, body: bytes | None = None, **headers: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status,
            body=page_body() if body is None else body,
            headers={name.replace("_", "-"): value for name, value in headers.items()},
            content_type="application/json",
        )

    return handle


def error_body(code: str, log_url: str | None = None) -> bytes:
    return orjson.dumps({"status": "error", "error": {"code": code, "message": "no", "log_url": log_url}})


class FakeSource:
    """A source on 127.0.0.1 that answers with ``handler`` and remembers the requests it got."""

    def __init__(self) -> None:
        self.handler: Handler = answer()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((str(request.rel_url), dict(request.headers)))
        return await self.handler(request)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get(f"/v1/{USERS}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        return runner


class Harness:
    def __init__(self, source: FakeSource) -> None:
        self.source = source
        self.sleep = RecordingSleep()
        self.metrics = Metrics([USERS])
        self._clients: list[SourceClient] = []

    def client(self, **settings: str) -> SourceClient:
        environ = {
            "RELAY_SOURCE_URL": self.source.url,
            "RELAY_API_KEY": API_KEY,
            "RELAY_INTEGRATIONS": ACME,
            "RELAY_RESOURCES": USERS,
            "RELAY_SOURCE_MAX_RETRIES": "0",
            **{f"RELAY_{name.upper()}": value for name, value in settings.items()},
        }
        client = SourceClient(load_config(None, environ), self.metrics, sleep=self.sleep)
        self._clients.append(client)
        return client

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    def codes(self) -> dict[str, float]:
        """relay_source_requests_total by its code label, summed over the other labels."""
        totals: dict[str, float] = {}
        for metric in self.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "relay_source_requests_total":
                    code = sample.labels["code"]
                    totals[code] = totals.get(code, 0.0) + sample.value
        return totals


@pytest.fixture
async def source() -> AsyncIterator[FakeSource]:
    fake = FakeSource()
    runner = await fake.start()
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
async def harness(source: FakeSource) -> AsyncIterator[Harness]:
    running = Harness(source)
    try:
        yield running
    finally:
        await running.close()


async def fetch(client: SourceClient, *, cursor: str | None = None, page_number: int = 0) -> Any:
    return await client.fetch_page(ACME, USERS, updated_after=None, cursor=cursor, page_number=page_number)


# --- 1. Waits taken from headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "999999999"}, 7.0),  # absurdly large: capped at RELAY_SOURCE_BACKOFF_MAX_SECONDS
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "Tue, 01 Jul 2003 12:00:00 GMT"}, 0.0),  # a date in the past: now
        ({"ratelimit-reset": "1e12"}, 7.0),  # an epoch time far away: capped
        ({"Retry-After": "-5", "ratelimit-reset": "4"}, 4.0),  # not a delay: ignored, the next header counts
        ({"Retry-After": "nan", "ratelimit-reset": "4"}, 4.0),
        ({"Retry-After": "inf", "ratelimit-reset": "4"}, 4.0),
        ({"Retry-After": "-inf", "ratelimit-reset": "4"}, 4.0),
    ],
)
async def test_a_wait_the_source_asks_for_is_read_sensibly_and_capped(
    harness: Harness, headers: dict[str, str], expected: float
) -> None:
    harness.source.handler = answer(429, b"{}", **headers)
    client = harness.client(source_max_retries="1", source_backoff_max_seconds="7")
    with pytest.raises(RateLimited) as raised:
        await fetch(client)
    assert raised.value.retry_after == expected
    assert harness.sleep.waits == [expected]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-3"])
async def test_a_retry_after_that_is_no_delay_falls_back_to_the_backoff(harness: Harness, value: str) -> None:
    harness.source.handler = answer(429, b"{}", Retry_After=value)
    client = harness.client(source_max_retries="1", source_backoff_max_seconds="7")
    with pytest.raises(RateLimited) as raised:
        await fetch(client)
    assert raised.value.retry_after is None
    assert len(harness.sleep.waits) == 1
    assert 0 <= harness.sleep.waits[0] <= 7


async def test_a_ratelimit_reset_that_is_an_epoch_time_is_read_as_one(harness: Harness) -> None:
    reset = int(time.time()) + 30
    harness.source.handler = answer(200, **{"ratelimit-remaining": "0", "ratelimit-reset": str(reset)})
    client = harness.client(source_backoff_max_seconds="60")
    await fetch(client)
    await fetch(client)  # the budget is spent: this one waits for the reset first
    assert len(harness.sleep.waits) == 1
    assert 20 <= harness.sleep.waits[0] <= 30


@pytest.mark.parametrize("reset", ["1e12", "999999999", "inf"])
async def test_a_spent_budget_never_stalls_longer_than_the_backoff_max(harness: Harness, reset: str) -> None:
    harness.source.handler = answer(200, **{"ratelimit-remaining": "0", "ratelimit-reset": reset})
    client = harness.client(source_backoff_max_seconds="7")
    await fetch(client)
    await fetch(client)
    assert all(0 <= wait <= 7 for wait in harness.sleep.waits)


async def test_one_integrations_spent_budget_never_makes_another_wait(harness: Harness) -> None:
    async def by_integration(request: web.Request) -> web.StreamResponse:
        spent = request.headers["X-Integration-Id"] == ACME
        headers = {"ratelimit-remaining": "0" if spent else "900", "ratelimit-reset": "30"}
        return web.Response(body=page_body(), content_type="application/json", headers=headers)

    harness.source.handler = by_integration
    client = harness.client(source_backoff_max_seconds="60")
    await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    await client.fetch_page(GLOBEX, USERS, updated_after=None, cursor=None, page_number=0)
    await client.fetch_page(GLOBEX, USERS, updated_after=None, cursor=None, page_number=0)
    assert harness.sleep.waits == []  # globex has budget left, whatever acme was told
    await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    assert len(harness.sleep.waits) == 1  # acme waits for its own reset
    assert 29 <= harness.sleep.waits[0] <= 30


@pytest.mark.parametrize("remaining", ["inf", "-inf", "nan", "1e400", "lots"])
async def test_a_ratelimit_remaining_that_is_no_count_is_ignored(harness: Harness, remaining: str) -> None:
    harness.source.handler = answer(200, **{"ratelimit-remaining": remaining, "ratelimit-reset": "5"})
    client = harness.client()
    assert len((await fetch(client)).records) == 1
    assert len((await fetch(client)).records) == 1
    assert all(0 <= wait <= 5 for wait in harness.sleep.waits)


# --- 2. The size of a response --------------------------------------------------------------------------------------

LIMIT = 64 * 1024


def padded_page(size: int) -> bytes:
    """A valid page of exactly ``size`` bytes (JSON whitespace makes up the difference)."""
    head, tail = b'{"status":"success","data":{"results":' + orjson.dumps([RECORD]), b',"next":null}}'
    return head + b" " * (size - len(head) - len(tail)) + tail


async def test_a_response_at_the_limit_is_a_page(harness: Harness) -> None:
    harness.source.handler = answer(200, padded_page(LIMIT))
    page = await fetch(harness.client(source_max_response_bytes=str(LIMIT)))
    assert page.records == [RECORD]


def streamed(body: bytes, *, chunk: int, encoding: str | None = None) -> Handler:
    """Sends ``body`` chunk by chunk without a Content-Length, until it is done or the client goes away."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if encoding is not None:
            response.headers["Content-Encoding"] = encoding
        await response.prepare(request)
        try:
            for start in range(0, len(body), chunk):
                await response.write(body[start : start + chunk])
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response

    return handle


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(answer(200, padded_page(LIMIT + 1)), id="content-length"),
        pytest.param(streamed(padded_page(64 * LIMIT), chunk=LIMIT // 4), id="chunked"),
        pytest.param(
            answer(200, gzip.compress(padded_page(64 * LIMIT)), Content_Encoding="gzip"), id="gzip-content-length"
        ),
        pytest.param(streamed(gzip.compress(padded_page(64 * LIMIT)), chunk=1024, encoding="gzip"), id="gzip-chunked"),
    ],
)
async def test_a_response_over_the_limit_is_an_invalid_page_not_retried(harness: Harness, handler: Handler) -> None:
    harness.source.handler = handler
    client = harness.client(source_max_response_bytes=str(LIMIT), source_max_retries="3")
    with pytest.raises(InvalidPage) as raised:
        await fetch(client, page_number=4)
    error = raised.value
    assert (error.code, error.integration, error.resource) == ("RELAY.RESPONSE_TOO_LARGE", ACME, USERS)
    assert "page 4" in str(error)
    assert f"{LIMIT} bytes" in str(error)
    assert "RELAY_SOURCE_MAX_RESPONSE_BYTES" in str(error)
    assert harness.sleep.waits == []


async def test_an_error_response_over_the_limit_is_classified_by_its_status(harness: Harness) -> None:
    harness.source.handler = answer(503, error_body("PLATFORM.INPUT_INVALID") + b" " * LIMIT)
    client = harness.client(source_max_response_bytes=str(LIMIT))
    with pytest.raises(RetryableSourceError) as raised:
        await fetch(client)
    assert raised.value.code == "RELAY.HTTP_503"


# --- 3. The deadline of a whole request -----------------------------------------------------------------------------


def dripping(body: bytes, *, at_once: int, interval: float) -> Handler:
    """Sends the first ``at_once`` bytes of ``body`` at once, then one byte every ``interval`` seconds."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            await response.write(body[:at_once])
            for index in range(at_once, len(body)):
                await asyncio.sleep(interval)  # the behaviour under test: a body that trickles in
                await response.write(body[index : index + 1])
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response

    return handle


async def test_a_body_that_trickles_in_times_out_as_a_whole(harness: Harness) -> None:
    body = page_body()
    # Every byte comes well within the read timeout, but the whole body takes ~3 s: longer than the deadline.
    harness.source.handler = dripping(body, at_once=len(body) - 30, interval=0.1)
    client = harness.client(source_read_timeout_seconds="0.5", source_request_timeout_seconds="0.5")
    with pytest.raises(RetryableSourceError) as raised:
        await fetch(client)
    assert raised.value.code == "RELAY.TIMEOUT"


# --- 4. Metric labels -----------------------------------------------------------------------------------------------


async def test_error_codes_the_source_makes_up_are_one_label_value(harness: Harness) -> None:
    client = harness.client()
    for index in range(5):
        harness.source.handler = answer(400, error_body(f"MADE.UP_{index}"))
        with pytest.raises(SourceError) as raised:
            await fetch(client)
        assert raised.value.code == f"MADE.UP_{index}"  # the error and the log keep the real code
    harness.source.handler = answer(400, error_body("X" * 5000))
    with pytest.raises(SourceError) as raised:
        await fetch(client)
    assert raised.value.code == "X" * 100  # untrusted: truncated
    harness.source.handler = answer(404, error_body("PLATFORM.INTEGRATION_NOT_FOUND"))
    with pytest.raises(SourceError):
        await fetch(client)
    harness.source.handler = answer(418, b"teapot")
    with pytest.raises(SourceError):
        await fetch(client)
    harness.source.handler = answer(400, error_body("418"))
    with pytest.raises(SourceError):
        await fetch(client)
    assert harness.codes() == {"": 0.0, "other": 7.0, "PLATFORM.INTEGRATION_NOT_FOUND": 1.0, "RELAY.HTTP_418": 1.0}


def test_the_kombo_error_codes_are_those_of_the_spec(kombo_spec_path: Path) -> None:
    spec = orjson.loads(kombo_spec_path.read_bytes())
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            code = node.get("properties", {}).get("error", {}).get("properties", {}).get("code", {})
            found.update(code.get("enum", ()))
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(spec)
    assert found, "the spec has no error codes where this test looks for them"
    assert found == KOMBO_ERROR_CODES


# --- 5. Redirects ---------------------------------------------------------------------------------------------------


async def test_a_redirect_is_not_followed(harness: Harness) -> None:
    elsewhere = FakeSource()
    runner = await elsewhere.start()
    try:
        target = f"{elsewhere.url}/{USERS}?page_size=250"
        harness.source.handler = answer(302, b"", Location=target)
        client = harness.client(source_max_retries="3")
        with pytest.raises(SourceError) as raised:
            await fetch(client, cursor="c1")
    finally:
        await runner.cleanup()
    assert elsewhere.requests == []  # neither the integration id, nor the query, nor the key went there
    error = raised.value
    assert not isinstance(error, RetryableSourceError)
    assert (error.code, error.status, error.integration, error.resource) == ("RELAY.REDIRECT", 302, ACME, USERS)
    assert elsewhere.url.removesuffix("/v1") in str(error)
    assert "page_size" not in str(error)  # the origin only
    assert API_KEY not in str(error)
    assert harness.sleep.waits == []


# --- 6. JSON nested too deep ----------------------------------------------------------------------------------------


async def test_json_nested_deeper_than_the_parser_reads_is_an_invalid_page(harness: Harness) -> None:
    deep = b"[" * 2000 + b"]" * 2000
    harness.source.handler = answer(200, b'{"status":"success","data":{"results":[' + deep + b'],"next":null}}')
    client = harness.client(source_max_retries="3")
    with pytest.raises(InvalidPage) as raised:
        await fetch(client, page_number=2)
    assert (raised.value.code, raised.value.integration, raised.value.resource) == ("RELAY.JSON_TOO_DEEP", ACME, USERS)
    assert "page 2" in str(raised.value)
    assert harness.sleep.waits == []


# --- 7. More records than asked for ---------------------------------------------------------------------------------


async def test_a_page_with_more_records_than_asked_for_is_invalid(harness: Harness) -> None:
    records = [{**RECORD, "id": f"u{index}"} for index in range(3)]
    harness.source.handler = answer(200, page_body(records))
    with pytest.raises(InvalidPage) as raised:
        await fetch(harness.client(page_size="2"), page_number=5)
    error = raised.value
    assert (error.code, error.integration, error.resource) == ("RELAY.INVALID_PAGE", ACME, USERS)
    assert "page 5" in str(error)
    assert "3 records" in str(error)
    assert "page_size 2" in str(error)


async def test_a_page_with_as_many_records_as_asked_for_is_fine(harness: Harness) -> None:
    records = [{**RECORD, "id": f"u{index}"} for index in range(2)]
    harness.source.handler = answer(200, page_body(records, next_cursor="c2"))
    page = await fetch(harness.client(page_size="2"))
    assert (page.records, page.next_cursor) == (records, "c2")


# --- 8. Other unbounded fields --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "next_cursor",
    [pytest.param("c" * (MAX_CURSOR_CHARS + 1), id="too-long"), 123, [], {"a": 1}, ""],
)
async def test_a_next_cursor_that_is_no_cursor_is_an_invalid_page(harness: Harness, next_cursor: object) -> None:
    harness.source.handler = answer(200, page_body(next_cursor=next_cursor))
    with pytest.raises(InvalidPage) as raised:
        await fetch(harness.client())
    assert raised.value.code == "RELAY.INVALID_PAGE"
    assert "c" * 200 not in str(raised.value)  # the error does not repeat a huge cursor


async def test_a_cursor_at_the_limit_is_fine(harness: Harness) -> None:
    harness.source.handler = answer(200, page_body(next_cursor="c" * MAX_CURSOR_CHARS))
    assert (await fetch(harness.client())).next_cursor == "c" * MAX_CURSOR_CHARS


async def test_a_huge_log_url_is_truncated(harness: Harness) -> None:
    harness.source.handler = answer(400, error_body("INTEGRATION.INACTIVE", log_url="https://x/" + "l" * 10_000))
    with pytest.raises(SourceError) as raised:
        await fetch(harness.client())
    assert raised.value.log_url is not None
    assert len(raised.value.log_url) <= 2048

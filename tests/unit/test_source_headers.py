"""What the source client reads from response headers: the source's clock (``Date``) and ``Retry-After`` as an HTTP
date. A small aiohttp server stands in for the source and answers with the headers each test sets."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from relay.config import load_config
from relay.errors import RateLimited
from relay.metrics import Metrics
from relay.source import SourceClient

ACME = "personio:acme"
USERS = "ats/users"
EMPTY_PAGE = orjson.dumps({"status": "success", "data": {"results": [], "next": None}})


class FakeSource:
    """Answers every request with ``status``, ``body`` and ``headers``, as the test sets them."""

    def __init__(self) -> None:
        self.status = 200
        self.body = EMPTY_PAGE
        self.headers: dict[str, str] = {}

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers, content_type="application/json")


@pytest.fixture
async def source() -> AsyncIterator[tuple[FakeSource, SourceClient]]:
    fake = FakeSource()
    app = web.Application()
    app.router.add_get(f"/v1/{USERS}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = load_config(
        None,
        {
            "RELAY_SOURCE_URL": f"http://127.0.0.1:{port}/v1",
            "RELAY_API_KEY": "k",
            "RELAY_INTEGRATIONS": ACME,
            "RELAY_RESOURCES": USERS,
            "RELAY_SOURCE_MAX_RETRIES": "0",
        },
    )
    try:
        async with SourceClient(config, Metrics([USERS])) as client:
            yield fake, client
    finally:
        await runner.cleanup()


async def fetch(client: SourceClient) -> int | None:
    page = await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    return page.source_time_ms


async def test_the_date_header_is_the_source_time_of_the_page(source: tuple[FakeSource, SourceClient]) -> None:
    fake, client = source
    fake.headers["Date"] = "Tue, 01 Jul 2025 12:00:00 GMT"
    assert await fetch(client) == 1_751_371_200_000
    assert await fetch(client) == 1_751_371_200_000  # the same header again: the same time
    fake.headers["Date"] = "Tue, 01 Jul 2025 12:00:01 GMT"
    assert await fetch(client) == 1_751_371_201_000


async def test_a_date_header_that_is_not_a_date_gives_no_source_time(source: tuple[FakeSource, SourceClient]) -> None:
    fake, client = source
    fake.headers["Date"] = "yesterday, around noon"
    assert await fetch(client) is None


async def test_retry_after_may_be_an_http_date(source: tuple[FakeSource, SourceClient]) -> None:
    fake, client = source
    fake.status = 429
    fake.body = b"{}"
    fake.headers["Retry-After"] = email.utils.formatdate(time.time() + 30, usegmt=True)
    with pytest.raises(RateLimited) as raised:
        await fetch(client)
    assert raised.value.retry_after is not None
    assert 25 <= raised.value.retry_after <= 30

"""The source client against the real simulator over HTTP: requests, error classes, retries, rate limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from relay.errors import (
    AuthenticationError,
    CursorRejected,
    IntegrationError,
    RateLimited,
    RetryableSourceError,
)
from relay.metrics import Metrics
from relay.simulator import FaultKind, Simulator, SimulatorServer
from relay.source import RateLimitBudget, SourceClient
from relay.timestamps import format_timestamp_ms
from tests.integration.harness import relay_config
from tests.unit.support import RecordingSleep

ACME = "personio:acme"
USERS = "ats/users"


@pytest.fixture
async def server() -> AsyncIterator[SimulatorServer]:
    sim = Simulator(api_key="sk-test-0123456789", integrations=[ACME, "greenhouse:globex"], users=12, seed=3)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as running:
        yield running


def client_for(server: SimulatorServer, sleep: RecordingSleep, **overrides: Any) -> tuple[SourceClient, Metrics]:
    config = relay_config(
        source_url=server.url,
        api_key=server.sim.api_key,
        integrations=[ACME],
        bootstrap_servers="127.0.0.1:1",
        topic_prefix="unused",
        **overrides,
    )
    metrics = Metrics([USERS])
    return SourceClient(config, metrics, sleep=sleep), metrics


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def fetch_all(client: SourceClient, updated_after: str | None = None) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    page = 0
    while True:
        result = await client.fetch_page(ACME, USERS, updated_after=updated_after, cursor=cursor, page_number=page)
        records.extend(result.records)
        if result.next_cursor is None:
            return records
        cursor, page = result.next_cursor, page + 1


async def test_pages_through_everything_including_deleted(server: SimulatorServer) -> None:
    sim = server.sim
    deleted = sim.delete(ACME, USERS, next(sim.records(ACME, USERS))["id"])
    async with client_for(server, RecordingSleep(), page_size=5)[0] as client:
        records = await fetch_all(client)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in sim.records(ACME, USERS))
    assert deleted["id"] in {r["id"] for r in records}  # include_deleted=true is always sent


async def test_the_date_header_becomes_the_source_time(server: SimulatorServer) -> None:
    async with client_for(server, RecordingSleep())[0] as client:
        page = await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    assert page.source_time_ms is not None
    assert abs(page.source_time_ms - server.sim.now_ms()) < 5_000


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (FaultKind.HTTP_503, "REMOTE.SERVICE_UNAVAILABLE"),
        (FaultKind.HTTP_429, "PLATFORM.RATE_LIMIT_EXCEEDED"),
        (FaultKind.HTML_502, "RELAY.HTTP_502"),
        (FaultKind.TRUNCATED_JSON, "RELAY.MALFORMED_BODY"),
        (FaultKind.MALFORMED_JSON, "RELAY.MALFORMED_BODY"),
        (FaultKind.STALL, "RELAY.TIMEOUT"),
    ],
)
async def test_transient_errors_are_retried_with_backoff(server: SimulatorServer, kind: FaultKind, code: str) -> None:
    server.sim.faults.inject(kind, count=2)
    sleep = RecordingSleep()
    client, metrics = client_for(server, sleep, source_read_timeout_seconds=0.3)
    async with client:
        page = await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    assert len(page.records) == 12
    assert sample(metrics.registry, "relay_source_retries_total", resource=USERS, code=code) == 2
    assert len(sleep.waits) == 2


async def test_retries_are_bounded(server: SimulatorServer) -> None:
    server.sim.faults.inject(FaultKind.HTTP_503, count=10)
    sleep = RecordingSleep()
    client, _ = client_for(server, sleep, source_max_retries=3)
    async with client:
        with pytest.raises(RetryableSourceError) as raised:
            await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    assert raised.value.code == "REMOTE.SERVICE_UNAVAILABLE"
    assert raised.value.log_url is not None
    assert "/_sim/interactions/" in raised.value.log_url
    assert len(sleep.waits) == 3
    assert all(0 <= wait <= 0.05 for wait in sleep.waits)  # jittered, under RELAY_SOURCE_BACKOFF_MAX_SECONDS


@pytest.mark.parametrize("retry_after", [True, False])
async def test_rate_limit_waits_as_long_as_the_source_asks(server: SimulatorServer, retry_after: bool) -> None:
    server.sim.rate_limiter.configure(limit=1, window=30, retry_after=retry_after)
    sleep = RecordingSleep()
    # A wait the source asks for is capped at RELAY_SOURCE_BACKOFF_MAX_SECONDS, which the harness keeps tiny.
    client, metrics = client_for(
        server, sleep, source_max_retries=1, source_ratelimit_min_remaining=0, source_backoff_max_seconds=60
    )
    async with client:
        await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
        with pytest.raises(RateLimited) as raised:
            await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    # With or without Retry-After, the wait comes from the source (Retry-After, else ratelimit-reset): ~30 s.
    assert raised.value.retry_after is not None
    assert 20 <= raised.value.retry_after <= 30
    assert sleep.waits
    assert 20 <= sleep.waits[0] <= 30
    assert sample(metrics.registry, "relay_rate_limit_waits_total", reason="retry_after") == 1


async def test_the_client_slows_down_before_the_budget_runs_out(server: SimulatorServer) -> None:
    server.sim.rate_limiter.configure(limit=4, window=40, retry_after=True)
    sleep = RecordingSleep()
    client, metrics = client_for(server, sleep, source_ratelimit_min_remaining=2, source_backoff_max_seconds=60)
    async with client:
        for _ in range(3):
            await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    # After the second request only 2 of 4 remain: the third waits a share of the time left until the reset.
    assert len(sleep.waits) == 1
    assert 5 <= sleep.waits[0] <= 40 / 3
    assert sample(metrics.registry, "relay_rate_limit_waits_total", reason="budget_low") == 1


def test_budget_spreads_the_remaining_requests_until_the_reset() -> None:
    budget = RateLimitBudget(remaining=3, reset_at=100.0)
    assert budget.pause_before_next(min_remaining=5, now=60.0) == 10.0  # 40 s left, 3 requests: 4 slots
    assert budget.pause_before_next(min_remaining=2, now=60.0) == 0.0
    assert RateLimitBudget(remaining=0, reset_at=100.0).pause_before_next(5, now=90.0) == 10.0
    assert RateLimitBudget().pause_before_next(5, now=0.0) == 0.0


@pytest.mark.parametrize(
    ("state", "code"),
    [("setup_pending", "INTEGRATION.SETUP_SYNC_PENDING"), ("inactive", "INTEGRATION.INACTIVE")],
)
async def test_integration_level_errors_are_not_retried(server: SimulatorServer, state: str, code: str) -> None:
    server.sim.set_integration_state(ACME, state)
    sleep = RecordingSleep()
    async with client_for(server, sleep)[0] as client:
        with pytest.raises(IntegrationError) as raised:
            await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    assert (raised.value.code, raised.value.integration, raised.value.resource) == (code, ACME, USERS)
    assert sleep.waits == []


async def test_an_unknown_integration_is_an_integration_error(server: SimulatorServer) -> None:
    server.sim.remove_integration(ACME)
    async with client_for(server, RecordingSleep())[0] as client:
        with pytest.raises(IntegrationError) as raised:
            await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    assert (raised.value.code, raised.value.status) == ("PLATFORM.INTEGRATION_NOT_FOUND", 404)


async def test_a_refused_api_key_is_an_authentication_error_without_the_key(server: SimulatorServer) -> None:
    client, _ = client_for(server, RecordingSleep())
    server.sim.api_key = "rotated"
    async with client:
        with pytest.raises(AuthenticationError) as raised:
            await client.fetch_page(ACME, USERS, updated_after=None, cursor=None, page_number=0)
    assert raised.value.code == "PLATFORM.AUTHENTICATION_INVALID"
    assert "sk-test-0123456789" not in repr(raised.value)
    assert "sk-test-0123456789" not in str(raised.value)


async def test_a_garbage_cursor_is_rejected_as_such(server: SimulatorServer) -> None:
    async with client_for(server, RecordingSleep())[0] as client:
        with pytest.raises(CursorRejected):
            await client.fetch_page(ACME, USERS, updated_after=None, cursor="bm9wZQ", page_number=3)


async def test_filters_are_resent_with_every_cursor(server: SimulatorServer) -> None:
    sim = server.sim
    since = sim.now_ms()
    changed = [r["id"] for r in sim.records(ACME, USERS)][:5]
    for entity_id in changed:
        sim.update(ACME, USERS, entity_id, {"first_name": "Changed"})
    async with client_for(server, RecordingSleep(), page_size=2)[0] as client:
        records = await fetch_all(client, updated_after=format_timestamp_ms(since))
    assert sorted(r["id"] for r in records) == sorted(changed)

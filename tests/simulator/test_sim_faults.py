"""Each injectable fault, its count / fraction / integration scope, and that it touches only the /v1 API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest
from simkit import ACME, GLOBEX, USERS, Client

from relay.simulator import FaultKind, Simulator

Eventually = Callable[..., Awaitable[None]]
ERRORS = [
    (FaultKind.HTTP_400, 400, "PLATFORM.INPUT_INVALID"),
    (FaultKind.HTTP_401, 401, "PLATFORM.AUTHENTICATION_INVALID"),
    (FaultKind.HTTP_404, 404, "PLATFORM.INTEGRATION_NOT_FOUND"),
    (FaultKind.HTTP_409, 409, "INTEGRATION.SETUP_SYNC_PENDING"),
    (FaultKind.HTTP_429, 429, "PLATFORM.RATE_LIMIT_EXCEEDED"),
    (FaultKind.HTTP_503, 503, "REMOTE.SERVICE_UNAVAILABLE"),
]


@pytest.mark.parametrize(("kind", "status", "code"), ERRORS)
async def test_error_faults_answer_in_the_envelope_for_the_next_k_requests(
    sim: Simulator, client: Client, kind: FaultKind, status: int, code: str
) -> None:
    sim.faults.inject(kind, count=2)
    first, second = await client.get(USERS), await client.get(USERS)  # both validated against the spec
    assert first.failure == second.failure == (status, code)
    assert "ratelimit-remaining" in first.headers
    assert (kind is FaultKind.HTTP_429) == ("Retry-After" in first.headers)
    assert (await client.get(USERS)).status == 200
    assert sim.faults.active == []


async def test_a_fault_can_target_one_integration(sim: Simulator, client: Client) -> None:
    sim.faults.inject(FaultKind.HTTP_503, count=1, integration=GLOBEX)
    assert (await client.get(USERS)).status == 200
    assert (await client.get(USERS, integration=GLOBEX)).status == 503
    assert (await client.get(USERS, integration=GLOBEX)).status == 200


async def test_a_fraction_of_requests_fails_deterministically(sim: Simulator, client: Client) -> None:
    fault = sim.faults.inject(FaultKind.HTTP_503, fraction=0.5)
    statuses = [(await client.get(USERS)).status for _ in range(40)]
    assert 5 < statuses.count(503) < 35
    assert set(statuses) == {200, 503}
    assert fault.applied == statuses.count(503)
    assert sim.faults.remove(fault.id)
    assert (await client.get(USERS)).status == 200


async def test_latency_delays_the_normal_answer(sim: Simulator, client: Client) -> None:
    sim.faults.inject(FaultKind.LATENCY, count=1, latency=0.3)
    started = time.monotonic()
    reply = await client.get(USERS)
    assert reply.status == 200
    assert time.monotonic() - started >= 0.29  # asyncio may fire a timer up to its clock resolution early


async def test_a_stalled_request_never_answers_until_the_client_gives_up(sim: Simulator, client: Client) -> None:
    sim.faults.inject(FaultKind.STALL, count=1)
    with pytest.raises(asyncio.TimeoutError):
        await client.get(USERS, timeout=0.3)
    assert (await client.get(USERS)).status == 200


async def test_a_stall_ends_when_the_server_stops(sim: Simulator, client: Client, eventually: Eventually) -> None:
    sim.faults.inject(FaultKind.STALL, count=1)
    pending = asyncio.ensure_future(client.get(USERS, timeout=30, check=False))
    await eventually(lambda: not sim.faults.active, message="the stalled request reached the server")
    started = time.monotonic()
    await client.server.stop()
    assert time.monotonic() - started < 5
    await asyncio.wait_for(asyncio.gather(pending, return_exceptions=True), 5)


@pytest.mark.parametrize("kind", [FaultKind.MALFORMED_JSON, FaultKind.TRUNCATED_JSON])
async def test_body_faults_send_json_that_does_not_parse(sim: Simulator, client: Client, kind: FaultKind) -> None:
    sim.faults.inject(kind, count=1)
    reply = await client.get(USERS, check=False)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(reply.text)
    intact = await client.get(USERS)
    if kind is FaultKind.TRUNCATED_JSON:
        assert intact.text.startswith(reply.text)
        assert len(reply.text) < len(intact.text)


async def test_html_502_from_the_load_balancer(sim: Simulator, client: Client) -> None:
    sim.faults.inject(FaultKind.HTML_502, count=1)
    reply = await client.get(USERS)
    assert reply.status == 502
    assert reply.headers["Content-Type"].startswith("text/html")
    assert "<h1>502 Bad Gateway</h1>" in reply.text
    assert "Date" in reply.headers
    assert "ratelimit-limit" not in reply.headers


async def test_faults_leave_the_control_api_alone(sim: Simulator, client: Client) -> None:
    sim.faults.inject(FaultKind.HTTP_503, count=1)
    status, _ = await client.control("GET", "/state")
    assert status == 200
    assert (await client.get(USERS)).status == 503


def test_fault_arguments_are_checked(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="count"):
        sim.faults.inject(FaultKind.HTTP_503, count=0)
    with pytest.raises(ValueError, match="fraction"):
        sim.faults.inject(FaultKind.HTTP_503, fraction=1.5)
    with pytest.raises(ValueError, match="not a valid FaultKind"):
        sim.faults.inject("http_999")
    assert sim.faults.inject("http_503").remaining == 1
    sim.faults.clear()
    assert sim.faults.pick(ACME) is None

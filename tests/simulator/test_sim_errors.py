"""Authentication, integration errors, the rate limit and its headers, the Date header."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import aiohttp
import pytest
from simkit import ACME, GLOBEX, START, USERS, Client

from relay.simulator import ManualClock, Simulator, SimulatorServer

RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic dGVzdC1rZXk6"},
        {"Authorization": "test-key"},
        {"Authorization": "Bearer"},
    ],
)
async def test_a_missing_or_wrong_api_key_is_authentication_invalid(client: Client, headers: dict[str, str]) -> None:
    reply = await client.get(USERS, api_key=None, headers=headers)
    assert reply.failure == (401, "PLATFORM.AUTHENTICATION_INVALID")
    assert reply.json["error"]["log_url"].startswith(client.server.base_url + "/_sim/interactions/")


async def test_the_api_key_can_be_rotated(sim: Simulator, client: Client) -> None:
    sim.api_key = "rotated"
    assert (await client.get(USERS)).status == 401
    assert (await client.get(USERS, api_key="rotated")).status == 200


async def test_integration_header_missing_unknown_removed_pending_inactive(sim: Simulator, client: Client) -> None:
    assert (await client.get(USERS, integration=None)).failure == (400, "PLATFORM.INPUT_INVALID")
    assert (await client.get(USERS, integration="personio:nobody")).failure == (404, "PLATFORM.INTEGRATION_NOT_FOUND")
    sim.set_integration_state(ACME, "setup_pending")
    assert (await client.get(USERS)).failure == (409, "INTEGRATION.SETUP_SYNC_PENDING")
    assert (await client.get(USERS, integration=GLOBEX)).status == 200  # only that integration
    sim.set_integration_state(ACME, "inactive")
    assert (await client.get(USERS)).failure == (403, "INTEGRATION.INACTIVE")
    sim.set_integration_state(ACME, "active")
    assert (await client.get(USERS)).status == 200
    sim.remove_integration(ACME)
    assert (await client.get(USERS)).failure == (404, "PLATFORM.INTEGRATION_NOT_FOUND")
    sim.add_integration(ACME, users=3)
    assert len((await client.get(USERS)).results) == 3


async def test_unknown_paths_and_methods_answer_in_the_error_envelope(client: Client) -> None:
    async with client.session.get(f"{client.server.url}/ats/nothing") as response:
        assert response.status == 404
        body = await response.json()
    assert body["status"] == "error"
    assert set(body["error"]) == {"code", "title", "message", "log_url"}
    async with client.session.post(f"{client.server.url}/ats/users") as response:
        assert response.status == 405
        assert "Date" in response.headers


async def test_every_response_has_the_rate_limit_headers_and_a_date(
    sim: Simulator, clock: ManualClock, client: Client
) -> None:
    sim.rate_limiter.configure(limit=5, window=30)
    replies = [await client.get(USERS) for _ in range(3)]
    replies += [await client.get(USERS, api_key="wrong"), await client.get(USERS, integration="x:y")]
    for reply in replies:
        assert all(name in reply.headers for name in RATE_HEADERS), reply.headers
        assert parsedate_to_datetime(reply.headers["Date"]) == START
    assert [r.headers["ratelimit-remaining"] for r in replies] == ["4", "3", "2", "5", "1"]  # 401s do not count
    assert {r.headers["ratelimit-limit"] for r in replies} == {"5"}
    assert {r.headers["ratelimit-reset"] for r in replies} == {"30"}
    clock.advance(10.2)
    reply = await client.get(USERS)
    assert reply.headers["ratelimit-reset"] == "20"
    assert parsedate_to_datetime(reply.headers["Date"]).timestamp() == START.timestamp() + 10  # whole seconds


async def test_a_spent_budget_is_rate_limit_exceeded_until_the_window_ends(
    sim: Simulator, clock: ManualClock, client: Client
) -> None:
    sim.rate_limiter.configure(limit=2, window=60)
    assert [(await client.get(USERS)).status for _ in range(2)] == [200, 200]
    clock.advance(15)
    refused = await client.get(USERS)
    assert refused.failure == (429, "PLATFORM.RATE_LIMIT_EXCEEDED")
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-reset"] == refused.headers["Retry-After"] == "45"
    assert (await client.get(USERS, api_key="other")).status == 401  # budgets are per API key
    clock.advance(45)
    assert (await client.get(USERS)).status == 200


async def test_retry_after_can_be_left_out(sim: Simulator, client: Client) -> None:
    sim.rate_limiter.configure(limit=1, window=60, retry_after=False)
    await client.get(USERS)
    refused = await client.get(USERS)
    assert refused.status == 429
    assert "Retry-After" not in refused.headers
    assert refused.headers["ratelimit-reset"] == "60"


async def test_the_budget_is_per_api_key() -> None:
    sim = Simulator(api_key="a", integrations=[ACME], users=1, rate_limit=1, clock=ManualClock())
    async with SimulatorServer(sim) as server, aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bearer a", "X-Integration-Id": ACME}
        statuses = []
        for key in ("a", "a", "b"):
            sim.api_key = key
            async with session.get(
                f"{server.url}/ats/users", headers={**headers, "Authorization": f"Bearer {key}"}
            ) as r:
                statuses.append(r.status)
    assert statuses == [200, 429, 200]

"""Kombo's integration webhooks drive the registry on the real broker (RELAY_FOLLOW_INTEGRATIONS=true): signed
webhooks posted to a relay's endpoint become registry records (created adds, state-changed pauses, deleted removes),
and replayed older webhooks change nothing, whatever order they arrive in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from relay.app import Relay
from relay.registry import Registry
from relay.registry_topic import RegistryTopic
from relay.simulator import Simulator, SimulatorServer
from relay.webhooks import SIGNATURE_HEADER, sign
from tests.integration.harness import World

pytestmark = pytest.mark.kafka

ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
SECRET = "registry-webhook-secret-never-print"


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME, GLOBEX], users=3, seed=5)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield World(sim, server, bootstrap_servers, topic_prefix, [ACME])


async def post(relay: Relay, document: dict[str, Any]) -> tuple[int, str]:
    body = orjson.dumps(document)
    url = f"http://127.0.0.1:{relay.http_port}/webhooks/kombo"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={SIGNATURE_HEADER: sign(body, SECRET)}) as response,
    ):
        text = await response.text()
        return response.status, orjson.loads(text)["outcome"] if text else ""


END_USER = {"organization_name": "Globex", "creator_email": None, "origin_id": None}


def created(ident: str) -> dict[str, Any]:
    data = {"id": GLOBEX, "tool": "greenhouse", "category": "HRIS", "end_user": END_USER}
    return {"id": ident, "type": "integration-created", "data": data}


def state_changed(ident: str, state: str, at: str) -> dict[str, Any]:
    data = {
        "integration_tool": "greenhouse",
        "integration_id": GLOBEX,
        "integration_category": "HRIS",
        "end_user": END_USER,
        "qa_status": "PASSED",
        "setup_status": "COMPLETED",
        "state": state,
        "updated_at": at,
    }
    return {"id": ident, "type": "integration-state-changed", "data": data}


def deleted(ident: str, at: str) -> dict[str, Any]:
    data = {"id": GLOBEX, "tool": "greenhouse", "category": "HRIS", "end_user": END_USER, "deleted_at": at}
    return {"id": ident, "type": "integration-deleted", "data": data}


async def registry_of(relay: Relay) -> Registry:
    async with RegistryTopic(relay.config, timeout_seconds=20) as topic:
        return await topic.read()


async def test_integration_webhooks_write_the_registry_and_older_replays_change_nothing(world: World) -> None:
    async with world.relay(kombo_webhook_secret=SECRET, follow_integrations="true") as relay:
        assert await post(relay, created("c-1")) == (200, "accepted")
        entry = (await registry_of(relay))[GLOBEX]
        assert (entry.category, entry.state, entry.added_by) == ("hris", "active", "kombo integration-created c-1")

        assert await post(relay, state_changed("s-2", "INACTIVE", "2030-01-01T10:00:00Z")) == (200, "accepted")
        paused = (await registry_of(relay))[GLOBEX]
        assert (paused.state, paused.updated_at) == ("paused", "2030-01-01T10:00:00.000Z")

        # Replays, each with an id of its own (not the in-memory deduplication): older than the entry, or a creation.
        assert await post(relay, state_changed("s-1", "ACTIVE", "2030-01-01T09:00:00Z")) == (200, "ignored")
        assert await post(relay, created("c-1-again")) == (200, "ignored")
        assert (await registry_of(relay))[GLOBEX] == paused  # same revision: nothing written

        assert await post(relay, state_changed("s-2", "INACTIVE", "2030-01-01T10:00:00Z")) == (200, "duplicate")
        assert await post(relay, deleted("d-3", "2030-01-01T11:00:00Z")) == (200, "accepted")
        assert await post(relay, state_changed("s-4", "ACTIVE", "2030-01-01T12:00:00Z")) == (200, "ignored")
        assert await post(relay, created("c-1-once-more")) == (200, "ignored")
        final = await registry_of(relay)
        assert final[GLOBEX].state == "removed"
        assert final[GLOBEX].updated_by == "kombo integration-deleted d-3"
        assert final[ACME].state == "active"  # seeded, untouched

        # An integration the registry does not hold: 202, nothing written.
        unknown = state_changed("s-5", "ACTIVE", "2030-01-01T12:00:00Z")
        unknown["data"]["integration_id"] = "personio:nobody"
        assert await post(relay, unknown) == (202, "unknown_integration")
        assert "personio:nobody" not in await registry_of(relay)


async def test_without_the_setting_integration_webhooks_leave_the_registry_alone(world: World) -> None:
    async with world.relay(kombo_webhook_secret=SECRET) as relay:
        assert await post(relay, created("c-1")) == (200, "ignored")
        assert GLOBEX not in await registry_of(relay)

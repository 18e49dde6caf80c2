"""The admin HTTP API on the real broker, end to end: requests to a running replica (a real Relay joined to its
group, a real simulator) with RELAY_ADMIN_TOKEN set.

An integration added over HTTP is in the registry (as `relay integrations list --json` shows it) and polled; a pause
stops its polls until a resume; a resnapshot and a reset are acknowledged by the owner, with the CLI's wording; an
integration the registry does not hold is 404; a command nobody acknowledges is 202; a missing or wrong token is 401,
a bad body 400; a relay without a token answers 404 under /admin."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

import relay.cli
from relay.app import Relay
from relay.config import Config
from relay.errors import KafkaUnavailable
from relay.registry_topic import RegistryTopic
from relay.simulator import Simulator, SimulatorServer
from tests.integration.harness import Collector, World, collect, wait_until

pytestmark = pytest.mark.kafka

USERS = "ats/users"
PARTITIONS = 2
ACME = "personio:acme-admin"
TOKEN = "admin-t0ken-for-tests"


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME], users=6, seed=11)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield World(sim, server, bootstrap_servers, topic_prefix, [])  # the registry starts empty


@asynccontextmanager
async def replica(world: World, **overrides: str) -> AsyncIterator[Relay]:
    """A relay joined to the fleet's group, as `relay run`, with the admin API on unless told otherwise."""
    settings = {
        "state_topic_partitions": str(PARTITIONS),
        "poll_interval_seconds": "600",  # what polls comes from the registry and the commands
        "admin_token": TOKEN,
        **overrides,
    }
    async with world.fleet_replica(**settings) as running:
        await wait_until(lambda: running.readiness()[0] and running.ownership.owned == {0, 1}, 60, "the relay")
        yield running


async def registry_topic_known(config: Config, timeout: float = 30) -> None:
    """Create the registry topic, and wait until Kafka's metadata has it. An operation that creates it itself (the
    first on a new cluster) reads it at once, and answers 503 when the metadata has not caught up yet, as `relay
    integrations` exits 8: a relay that has joined its fleet created it already."""
    deadline = time.monotonic() + timeout
    async with RegistryTopic(config) as topic:
        await topic.ensure_topic()
        while True:
            try:
                await topic.read()
                return
            except KafkaUnavailable:
                assert time.monotonic() < deadline, f"the registry topic is not in Kafka's metadata after {timeout} s"


async def call(
    running: Relay, method: str, path: str, body: dict[str, Any] | None = None, *, token: str | None = TOKEN
) -> tuple[int, dict[str, Any]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    url = f"http://127.0.0.1:{running.http_port}{path}"
    data = None if body is None else orjson.dumps(body)
    async with aiohttp.ClientSession() as http, http.request(method, url, data=data, headers=headers) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


@pytest.fixture
def cli_environ(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI configured like the relays: Kafka, the topic prefix, the partitions, the resources."""
    for name in [name for name in os.environ if name.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP_SERVERS", world.bootstrap_servers)
    monkeypatch.setenv("RELAY_TOPIC_PREFIX", world.topic_prefix)
    monkeypatch.setenv("RELAY_STATE_TOPIC_PARTITIONS", str(PARTITIONS))


async def cli_list() -> Any:
    args = relay.cli.build_parser().parse_args(["integrations", "list", "--json"])
    out = io.StringIO()
    assert await asyncio.to_thread(args.handler, args, out) == 0
    return orjson.loads(out.getvalue())


def live_ids(world: World) -> set[str]:
    return {record["id"] for record in world.sim.records(ACME, USERS, include_deleted=False)}


async def wait_for_events(events: Collector, condition: Any, what: str, timeout: float = 30) -> None:
    async def drained() -> None:
        while not condition():
            await events.drain(timeout_ms=100)

    try:
        await asyncio.wait_for(drained(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def created(events: Collector, reason: str | None) -> list[str]:
    return [e.entity for e in events.events if e.kind == "created" and e.data["reason"] == reason]


async def event_topics(world: World) -> None:
    await Relay(world.config(state_topic_partitions=str(PARTITIONS))).sink.ensure_topics()


async def test_an_integration_added_over_http_is_in_the_registry_and_polled_and_pauses_and_resumes(
    world: World, cli_environ: None
) -> None:
    await event_topics(world)
    async with collect(world.bootstrap_servers, world.topics()) as events, replica(world) as running:
        assert await call(running, "GET", "/admin/integrations") == (
            200,
            {"operation": "list", "outcome": "done", "integrations": []},
        )

        status, added = await call(running, "POST", f"/admin/integrations/{ACME}", {"category": "ats", "by": "alice"})
        assert status == 200, added
        assert (added["outcome"], added["action"], added["changed"]) == ("done", "added", True)
        assert added["message"].startswith(f"added {ACME} in {running.config.integrations_topic} (revision ")
        assert "active, category ats, resources ats/users (default); the owner acknowledged it: " in added["message"]
        assert added["ack"]["outcome"] == "ok", added
        assert (added["entry"]["added_by"], added["entry"]["category"]) == ("alice", "ats")
        # Polled at once by its owner (the poll interval is 10 minutes): its snapshot arrives.
        live = live_ids(world)
        await wait_for_events(events, lambda: set(created(events, None)) >= live, "the snapshot", 60)

        status, listed = await call(running, "GET", "/admin/integrations")
        assert status == 200
        assert listed["integrations"] == await cli_list()  # what `relay integrations list --json` prints
        assert [(e["integration"], e["effective_resources"]) for e in listed["integrations"]] == [(ACME, [USERS])]

        status, again = await call(running, "POST", f"/admin/integrations/{ACME}", {"category": "ats"})
        assert (status, again["action"], again["changed"]) == (200, "none", False)
        assert again["message"] == f"{ACME} is in the registry already, as asked: nothing written"

        status, paused = await call(running, "POST", f"/admin/integrations/{ACME}/pause")
        assert (status, paused["action"], paused["entry"]["paused"]) == (200, "paused", True), paused
        assert paused["entry"]["updated_by"].startswith("admin API (127.0.0.1")
        assert running.scheduler.is_paused(ACME)  # the answer waited for the owner's acknowledgement
        status, refused = await call(running, "POST", f"/admin/integrations/{ACME}/resnapshot", {"timeout": 20})
        assert (status, refused["outcome"]) == (404, "unknown_integration")
        assert refused["error"] == f"{ACME} is paused: resume it first (relay integrations resume)"

        status, resumed = await call(running, "POST", f"/admin/integrations/{ACME}/resume")
        assert (status, resumed["action"], resumed["entry"]["paused"]) == (200, "resumed", False), resumed
        assert not running.scheduler.is_paused(ACME)

        status, removed = await call(running, "POST", f"/admin/integrations/{ACME}/remove", {"wait": False})
        assert (status, removed["action"], removed["ack"]) == (200, "removed", None)
        await wait_until(lambda: not any(i == ACME for i, _ in running.scheduler.status), 30, "the removal")

    labels = {"operation": "add", "outcome": "done"}
    assert running.metrics.registry.get_sample_value("relay_admin_requests_total", labels) == 2


async def test_a_resnapshot_over_http_is_acknowledged_by_the_owner(world: World, cli_environ: None) -> None:
    await event_topics(world)
    async with collect(world.bootstrap_servers, world.topics()) as events, replica(world) as running:
        assert (await call(running, "POST", f"/admin/integrations/{ACME}"))[0] == 200
        live = live_ids(world)
        await wait_for_events(events, lambda: set(created(events, None)) >= live, "the snapshot", 60)
        await wait_until(lambda: not running.scheduler.status[(ACME, USERS)].polling, 30, "the snapshot to end")

        status, done = await call(running, "POST", f"/admin/integrations/{ACME}/resnapshot", {"resource": USERS})
        assert status == 200, done
        assert (done["operation"], done["outcome"], done["resource"], done["ack"]["outcome"]) == (
            "resnapshot",
            "done",
            USERS,
            "ok",
        )
        assert done["message"] == f"resnapshot of {ACME} done: {done['ack']['message']}"
        assert "resnapshot done" in done["ack"]["message"]
        await wait_for_events(events, lambda: len(created(events, "resnapshot")) >= len(live), "the resnapshot")
        assert sorted(created(events, "resnapshot")) == sorted(live)

        status, reset = await call(running, "POST", f"/admin/integrations/{ACME}/reset", {"yes": True})
        assert (status, reset["outcome"]) == (200, "done"), reset
        assert "its next poll is a snapshot" in reset["message"]
        # The snapshot follows at once: every live record announced again, as after the first one.
        await wait_for_events(events, lambda: all(created(events, None).count(e) == 2 for e in live), "the snapshot")

        # Not waited for: 202 once Kafka has it.
        status, sent = await call(running, "POST", f"/admin/integrations/{ACME}/reconcile", {"wait": False})
        assert (status, sent["outcome"], sent["ack"]) == (202, "sent", None), sent
        assert sent["message"].startswith(f"sent reconcile of {ACME} (every resource: {USERS}) as command ")


async def test_refusals_unknown_integrations_bad_bodies_and_tokens(world: World) -> None:
    async with replica(world) as running:
        unknown = "personio:nobody"
        status, answer = await call(running, "POST", f"/admin/integrations/{unknown}/pause")
        assert (status, answer["outcome"]) == (404, "unknown_integration")
        assert answer["error"] == f"integration {unknown!r} is not in the registry"
        status, answer = await call(running, "POST", f"/admin/integrations/{unknown}/resnapshot", {"timeout": 20})
        assert (status, answer["outcome"]) == (404, "unknown_integration")
        assert answer["error"].startswith(f"{unknown} is not in the registry of integrations")

        status, answer = await call(running, "POST", f"/admin/integrations/{ACME}", {"resources": "ats/users"})
        assert (status, answer["outcome"]) == (400, "invalid")
        assert answer["error"] == "field 'resources' must be a list, not a string"
        assert (await call(running, "GET", "/admin/integrations", token=None))[0] == 401
        assert (await call(running, "GET", "/admin/integrations", token=TOKEN + "x"))[0] == 401

    async with replica(world, admin_token="") as without:  # empty: unset
        status, answer = await call(without, "GET", "/admin/integrations")
        assert status == 404
        assert "the admin API is off" in answer["error"]


async def test_a_command_nobody_acknowledges_is_202_no_ack(world: World) -> None:
    """A relay that serves HTTP but has not joined the fleet: the API works (it talks to Kafka itself), and no owner
    answers the command."""
    config = world.config(state_topic_partitions=str(PARTITIONS), admin_token=TOKEN)
    await event_topics(world)  # and the control topic, which a relay of this configuration would have created
    await registry_topic_known(config)
    running = Relay(config)
    await running.start_http()
    try:
        status, added = await call(running, "POST", f"/admin/integrations/{ACME}", {"timeout": 2})
        assert (status, added["outcome"], added["changed"], added["ack"]) == (202, "no_ack", True, None), added
        assert "but no relay acknowledged it within 2 s" in added["message"]
        status, answer = await call(running, "POST", f"/admin/integrations/{ACME}/resnapshot", {"timeout": 3})
        assert (status, answer["outcome"], answer["sent"], answer["ack"]) == (202, "no_ack", True, None), answer
        assert answer["message"].endswith(
            "no owner acknowledged it within 3 s (no relay running, a long poll in "
            "progress, or a handover meanwhile); it is kept: the partition's owner runs it if it comes within "
            "RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS of now"
        )
    finally:
        await running.close()

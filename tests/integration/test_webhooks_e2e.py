"""Webhooks end to end: the simulator sends signed data-changed webhooks to the relay's HTTP server, and the relay,
polling only every 10 minutes, publishes the precise events within seconds. Real simulator, real Kafka, real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry

from relay.app import Relay
from relay.simulator import Simulator, SimulatorServer, WebhookSender
from relay.simulator import webhooks as sim_webhooks
from tests.integration.harness import Collector, World, collect, wait_until

pytestmark = pytest.mark.kafka

ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
USERS = "ats/users"
EMPLOYEES = "hris/employees"
SECRET = "e2e-webhook-secret-never-print"
# Polls on the schedule only every 10 minutes: an event within seconds can only come from a webhook.
SLOW = {"poll_interval_seconds": "600", "poll_jitter_fraction": "0", "kombo_webhook_secret": SECRET}


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME, GLOBEX], users=10, seed=11, sizes={EMPLOYEES: 5})
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield World(sim, server, bootstrap_servers, topic_prefix, [ACME, GLOBEX])


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def webhook_url(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.http_port}/webhooks/kombo"


@asynccontextmanager
async def running(world: World, **overrides: str) -> AsyncIterator[tuple[Relay, Collector]]:
    """A polling relay (snapshots done) and a consumer of its topics."""
    async with (
        world.relay(**{**SLOW, **overrides}) as relay,
        collect(world.bootstrap_servers, world.topics(*relay.config.resources)) as events,
    ):
        polling = asyncio.create_task(relay.scheduler.run(grace_seconds=5))
        try:
            snapshot = sum(world.sim.count(i, r) for i in world.integrations for r in relay.config.resources)
            await events.wait_for(snapshot)
            await wait_until(lambda: not any(s.polling for s in relay.scheduler.status.values()), what="the snapshots")
            events.events.clear()
            yield relay, events
        finally:
            relay.scheduler.stop()
            await polling


def some_id(sim: Simulator, integration: str, resource: str = USERS, n: int = 0) -> str:
    return str(list(sim.records(integration, resource, include_deleted=False))[n]["id"])


async def test_a_change_becomes_an_event_within_seconds_through_a_webhook(world: World) -> None:
    async with running(world, resources=f"{USERS},{EMPLOYEES}") as (relay, events):
        async with WebhookSender(world.sim, webhook_url(relay), SECRET) as sender:
            user = some_id(world.sim, ACME)
            world.sim.update(ACME, USERS, user, {"first_name": "Hooked"})
            [event] = await events.wait_for(1, timeout=15)
            assert (event.entity, event.kind, event.data["record"]["first_name"]) == (user, "updated", "Hooked")
            assert event.data["integration_id"] == ACME
            await wait_until(lambda: sender.sent >= 1, what="the delivery")
            await events.settle()
        registry = relay.metrics.registry
        assert len(events.events) == 1
        assert metric(registry, "relay_webhooks_received_total", type="data-changed", outcome="accepted") >= 1
        assert metric(registry, "relay_polls_triggered_total", resource=USERS, trigger="webhook") >= 1
        # Only the model that changed was polled: ats_users maps to ats/users, not to hris/employees.
        assert metric(registry, "relay_polls_triggered_total", resource=EMPLOYEES, trigger="webhook") == 0
        assert metric(registry, "relay_webhook_to_event_seconds_count", resource=USERS) >= 1
        assert metric(registry, "relay_webhook_to_event_seconds_sum", resource=USERS) < 15


async def test_changes_in_two_integrations_and_resources_each_arrive(world: World) -> None:
    async with running(world, resources=f"{USERS},{EMPLOYEES}") as (relay, events):  # noqa: SIM117
        async with WebhookSender(world.sim, webhook_url(relay), SECRET):
            created = world.sim.create(GLOBEX, USERS)
            employee = some_id(world.sim, ACME, EMPLOYEES)
            world.sim.delete(ACME, EMPLOYEES, employee)
            await events.wait_for(2, timeout=15)
            await events.settle()
    assert {(e.data["integration_id"], e.entity, e.kind) for e in events.events} == {
        (GLOBEX, created["id"], "created"),
        (ACME, employee, "deleted"),
    }


async def test_a_burst_of_changes_gives_few_polls_and_every_event(world: World) -> None:
    async with running(world) as (relay, events):
        before = metric(relay.metrics.registry, "relay_polls_triggered_total", resource=USERS, trigger="webhook")
        async with WebhookSender(world.sim, webhook_url(relay), SECRET):
            ids = [some_id(world.sim, ACME, n=n) for n in range(8)]
            for n, ident in enumerate(ids):
                world.sim.update(ACME, USERS, ident, {"last_name": f"Burst {n}"})
            await events.wait_for(8, timeout=15)
            await events.settle()
        polls = metric(relay.metrics.registry, "relay_polls_triggered_total", resource=USERS, trigger="webhook")
    assert sorted(e.entity for e in events.events) == sorted(ids)
    assert polls - before <= 2  # one webhook for the batch: one poll, perhaps one follow-up


async def test_a_wrong_secret_is_refused_and_triggers_nothing(world: World) -> None:
    async with running(world) as (relay, events):
        async with WebhookSender(world.sim, webhook_url(relay), "not-the-secret", retry_delays=()) as sender:
            world.sim.update(ACME, USERS, some_id(world.sim, ACME))
            await wait_until(lambda: sender.failed == 1, what="the refused delivery")
        await events.settle()
        registry = relay.metrics.registry
        assert events.events == []
        assert [d.status for d in sender.deliveries] == [401]
        assert metric(registry, "relay_webhooks_received_total", type="unknown", outcome="unauthorized") == 1
        assert metric(registry, "relay_polls_triggered_total", resource=USERS, trigger="webhook") == 0


async def test_redelivery_sync_finished_and_unknown_integrations(world: World) -> None:
    async with running(world) as (relay, events):
        registry = relay.metrics.registry
        async with WebhookSender(world.sim, webhook_url(relay), SECRET, batch_seconds=3600) as sender:
            payload = sim_webhooks.data_changed(ACME, ["ats_users"], ident="same-delivery")
            assert (await sender.send(payload)).status == 200
            assert (await sender.send(payload)).status == 200
            assert metric(registry, "relay_webhooks_received_total", type="data-changed", outcome="duplicate") == 1
            unknown = await sender.send(sim_webhooks.data_changed("workday:unknown", ["ats_users"]))
            assert unknown.status == 202
            world.sim.update(GLOBEX, USERS, some_id(world.sim, GLOBEX), {"first_name": "Synced"})
            assert (await sender.send(sim_webhooks.sync_finished(GLOBEX))).status == 200
            await events.wait_for(1, timeout=15)
            [event] = await events.settle()
            assert (event.data["integration_id"], event.kind) == (GLOBEX, "updated")
    assert metric(registry, "relay_webhooks_received_total", type="data-changed", outcome="unknown_integration") == 1
    assert metric(registry, "relay_webhooks_received_total", type="sync-finished", outcome="accepted") == 1


async def test_integration_state_webhooks_pause_and_resume_polling(world: World) -> None:
    async with running(world, follow_integration_state="true") as (relay, events):
        registry = relay.metrics.registry
        async with WebhookSender(world.sim, webhook_url(relay), SECRET, batch_seconds=0) as sender:
            assert (await sender.send(sim_webhooks.integration_state_changed(ACME, "INACTIVE"))).ok
            assert relay.scheduler.is_paused(ACME)
            user = some_id(world.sim, ACME)
            world.sim.update(ACME, USERS, user, {"first_name": "While paused"})
            await wait_until(
                lambda: metric(registry, "relay_webhooks_received_total", type="data-changed", outcome="paused") == 1,
                what="the data-changed for the paused integration",
            )
            await events.settle()
            assert events.events == []
            status = paused_in_status(relay)
            assert status[ACME] is True
            assert status[GLOBEX] is False
            assert (await sender.send(sim_webhooks.integration_state_changed(ACME, "ACTIVE"))).ok
            [event] = await events.wait_for(1, timeout=15)  # the resume polls at once
            assert (event.entity, event.data["record"]["first_name"]) == (user, "While paused")
            assert (await sender.send(sim_webhooks.integration_deleted(GLOBEX))).ok
            assert relay.scheduler.is_paused(GLOBEX)


def paused_in_status(relay: Relay) -> dict[str, bool]:
    """Whether each integration is paused, as ``/status`` reports it."""
    return {pair["integration"]: pair["paused"] for pair in relay.status()["pairs"]}

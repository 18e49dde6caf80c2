"""The simulator's webhooks out: signed data-changed webhooks after mutations, batched per integration, in the
spec's shape, retried when the receiver fails; received by a hand-written server on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from simkit import ACME, API_KEY, GLOBEX, SPEC_URI, USERS, Spec

from relay.simulator import Simulator, SimulatorServer, cli
from relay.simulator import webhooks as sim_webhooks
from relay.simulator.webhooks import WebhookSender
from relay.webhooks import SIGNATURE_HEADER, verify_signature

SECRET = "sim-webhook-secret"
EMPLOYEES = "hris/employees"
CANDIDATES = "ats/candidates"


@dataclass
class Received:
    body: bytes
    signature: str | None
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = orjson.loads(self.body)
        return payload

    @property
    def integration(self) -> str:
        return str(self.payload["data"]["integration_id"])

    @property
    def models(self) -> list[str]:
        return [model["name"] for model in self.payload["data"]["changed_models"]]


@dataclass
class Receiver:
    """A webhook endpoint that records what it gets and answers with the next of ``statuses`` (then 200)."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(await request.read(), request.headers.get(SIGNATURE_HEADER), time.monotonic()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recorder = Receiver()
    app = web.Application()
    app.router.add_post("/webhooks/kombo", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recorder.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/kombo"
    yield recorder
    await runner.cleanup()


@pytest.fixture
def world() -> Simulator:
    return Simulator(api_key=API_KEY, integrations=[ACME, GLOBEX], users=10, seed=5, sizes={EMPLOYEES: 5})


def webhook_validator(spec: Spec, kind: str) -> Draft202012Validator:
    pointer = f"#/webhooks/{kind}/post/requestBody/content/application~1json/schema"
    return Draft202012Validator({"$ref": SPEC_URI + pointer}, registry=spec.registry)


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def some_id(sim: Simulator, integration: str, resource: str = USERS, n: int = 0) -> str:
    return str(list(sim.records(integration, resource))[n]["id"])


async def test_a_mutation_sends_a_signed_data_changed_in_the_specs_shape(
    world: Simulator, receiver: Receiver, spec: Spec
) -> None:
    async with WebhookSender(world, receiver.url, SECRET) as sender:
        world.update(ACME, USERS, some_id(world, ACME))
        await wait_for(lambda: len(receiver.received) == 1, "the webhook")
        await wait_for(lambda: sender.sent == 1, "the delivery to be counted")
    [webhook] = receiver.received
    assert verify_signature(webhook.body, webhook.signature, SECRET)
    assert not verify_signature(webhook.body, webhook.signature, "another-secret")
    errors = list(webhook_validator(spec, "data-changed").iter_errors(webhook.payload))
    assert not errors, errors
    assert webhook.payload["type"] == "data-changed"
    assert webhook.payload["data"]["integration_tool"] == "personio"
    assert webhook.payload["data"]["integration_category"] == "ATS"
    assert (webhook.integration, webhook.models) == (ACME, ["ats_users"])
    [delivery] = sender.deliveries
    assert (delivery.ok, delivery.attempts, delivery.integration, delivery.models) == (True, 1, ACME, ("ats_users",))


async def test_changes_are_batched_per_integration_and_category(world: Simulator, receiver: Receiver) -> None:
    sender = WebhookSender(world, receiver.url, SECRET, batch_seconds=60)
    await sender.start()
    try:
        # The first batch goes out at once; everything after waits for the 60 s period: nothing more is sent.
        world.update(ACME, USERS, some_id(world, ACME))
        await wait_for(lambda: sender.sent == 1, "the first webhook")
        for n in range(3):
            world.update(ACME, USERS, some_id(world, ACME, n=n))
        world.change_nested(ACME, USERS, some_id(world, ACME, n=4))
        world.create(ACME, CANDIDATES)
        await wait_for(lambda: len(sender.pending.get((ACME, "ATS"), {})) == 2, "the batch to be collected")
        assert len(receiver.received) == 1
        assert list(sender.pending[(ACME, "ATS")]) == ["ats_users", "ats_candidates"]
    finally:
        await sender.stop()


def test_due_batches_leave_at_most_one_per_period() -> None:
    sim = Simulator(api_key=API_KEY, integrations=[ACME, GLOBEX], users=5, seed=1, sizes={EMPLOYEES: 3})
    sender = WebhookSender(sim, "http://127.0.0.1:9/unused", SECRET, batch_seconds=1.0)
    assert sender.due(100.0) == []
    sim.update(ACME, USERS, some_id(sim, ACME))
    sim.update(ACME, EMPLOYEES, some_id(sim, ACME, EMPLOYEES))
    sim.update(GLOBEX, USERS, some_id(sim, GLOBEX))
    sim.update(ACME, USERS, some_id(sim, ACME, n=1))
    sender.collect()
    assert sorted(sender.due(100.0)) == sorted(
        [(ACME, "ATS", ("ats_users",)), (ACME, "HRIS", ("hris_employees",)), (GLOBEX, "ATS", ("ats_users",))]
    )
    sim.create(ACME, CANDIDATES)
    sim.update(ACME, USERS, some_id(sim, ACME, n=2))
    sender.collect()
    assert sender.due(100.5) == []  # within the period: kept
    assert sender.due(101.0) == [(ACME, "ATS", ("ats_candidates", "ats_users"))]
    assert sender.due(105.0) == []


async def test_changes_before_the_start_are_not_announced(world: Simulator, receiver: Receiver) -> None:
    world.update(ACME, USERS, some_id(world, ACME))
    async with WebhookSender(world, receiver.url, SECRET) as sender:
        world.update(GLOBEX, USERS, some_id(world, GLOBEX))
        await wait_for(lambda: sender.sent == 1, "the webhook")
        assert sender.pending == {}
    assert [w.integration for w in receiver.received] == [GLOBEX]


async def test_a_failed_delivery_is_retried(world: Simulator, receiver: Receiver) -> None:
    receiver.statuses = [500, 401]
    async with WebhookSender(world, receiver.url, SECRET, retry_delays=(0.01, 0.01, 0.01)) as sender:
        world.delete(ACME, USERS, some_id(world, ACME))
        await wait_for(lambda: sender.sent == 1, "the delivery")
    assert len(receiver.received) == 3
    assert len({w.payload["id"] for w in receiver.received}) == 1  # the same webhook, delivered again
    assert [(d.attempts, d.status) for d in sender.deliveries] == [(3, 200)]
    assert sender.failed == 0


async def test_an_unreachable_receiver_is_counted_as_failed(world: Simulator) -> None:
    async with WebhookSender(world, "http://127.0.0.1:9/webhooks/kombo", SECRET, retry_delays=(0.01,)) as sender:
        world.hard_delete(ACME, USERS, some_id(world, ACME))
        await wait_for(lambda: sender.failed == 1, "the failure")
    [delivery] = sender.deliveries
    assert (delivery.ok, delivery.status, delivery.attempts) == (False, None, 2)
    assert delivery.error is not None
    assert SECRET not in repr(sender)


async def test_send_posts_any_payload(world: Simulator, receiver: Receiver, spec: Spec) -> None:
    payloads = {
        "sync-finished": sim_webhooks.sync_finished(ACME),
        "integration-state-changed": sim_webhooks.integration_state_changed(ACME, "INACTIVE"),
        "integration-deleted": sim_webhooks.integration_deleted(ACME),
        "data-changed": sim_webhooks.data_changed(ACME, ["hris_employees"], cat="HRIS"),
    }
    async with WebhookSender(world, receiver.url, SECRET) as sender:
        for kind, payload in payloads.items():
            assert not list(webhook_validator(spec, kind).iter_errors(payload)), kind
            delivery = await sender.send(payload)
            assert delivery.ok
            assert delivery.type == kind
    assert [w.payload["type"] for w in receiver.received] == list(payloads)
    assert all(verify_signature(w.body, w.signature, SECRET) for w in receiver.received)


def test_model_names_and_categories() -> None:
    assert sim_webhooks.model_name("ats/users") == "ats_users"
    assert sim_webhooks.model_name("ats/application-stages") == "ats_application_stages"
    assert sim_webhooks.category("hris/employees") == "HRIS"
    ident = sim_webhooks.webhook_id()
    assert len(ident) == 24
    assert ident.isalnum()


async def test_the_server_runs_the_sender_when_asked(world: Simulator, receiver: Receiver) -> None:
    async with SimulatorServer(world, webhook_url=receiver.url, webhook_secret=SECRET) as server:
        assert server.webhooks is not None
        assert server.webhooks.running
        world.update(GLOBEX, USERS, some_id(world, GLOBEX))
        await wait_for(lambda: len(receiver.received) == 1, "the webhook")
    assert not server.webhooks.running
    async with SimulatorServer(world) as plain:
        assert plain.webhooks is None
    with pytest.raises(ValueError, match="go together"):
        SimulatorServer(world, webhook_url=receiver.url)


def test_the_cli_flags() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.webhook_url, args.webhook_batch_seconds) == (None, 1.0)
    args = parser.parse_args(["--webhook-url", "http://127.0.0.1:8080/webhooks/kombo", "--webhook-secret", "s"])
    assert (args.webhook_url, args.webhook_secret) == ("http://127.0.0.1:8080/webhooks/kombo", "s")
    assert "--webhook-url" in parser.format_help()


def test_the_cli_refuses_a_url_without_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SIM_WEBHOOK_SECRET", raising=False)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--webhook-url", "http://127.0.0.1:1/x", "--users", "1"])
    assert cli.main(args) == 2
    assert "--webhook-secret" in capsys.readouterr().err

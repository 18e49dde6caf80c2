"""relay.control without a broker: the record encoding, the per-partition de-duplication window, the forwarding
target's collecting and the owner's applying of actions, the clocks, and a webhook answered 503 (and not remembered
as seen) when Kafka cannot be reached. Fakes are hand-written; nothing is patched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from relay.control import (
    ControlAction,
    ControlChannel,
    ForwardingTarget,
    PartitionWindow,
    UnreadableAction,
    apply_action,
    monotonic_of,
    wall_ms_of,
)
from relay.errors import KafkaUnavailable
from relay.metrics import Metrics
from relay.partitioning import partition_for_key
from relay.simulator import webhooks as sim_webhooks
from relay.web import Heartbeat, build_app
from relay.webhooks import SIGNATURE_HEADER, WebhookReceiver, WebhookSettings, make_handler, sign
from tests.unit.support import config_without_kafka

ACME = "personio:acme"
USERS = "ats/users"
JOBS = "ats/jobs"
SECRET = "whsec_control-unit-never-print"


def action(**changes: Any) -> ControlAction:
    return ControlAction("trigger", ACME, (USERS, JOBS), "wh-1", 1_700_000_000_123)._replace(**changes)


# --- Encoding -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "original",
    [
        action(),
        action(kind="pause", resources=(), webhook_id=None),
        action(kind="resume", resources=(), integration="greenhouse:é-ünï"),
    ],
)
def test_an_action_survives_its_record(original: ControlAction) -> None:
    assert ControlAction.decode(original.encode()) == original


def test_the_record_is_compact_json_with_a_version() -> None:
    assert orjson.loads(action().encode()) == {
        "v": 1,
        "kind": "trigger",
        "integration": ACME,
        "resources": [USERS, JOBS],
        "webhook_id": "wh-1",
        "received_at_ms": 1_700_000_000_123,
    }
    assert b" " not in action().encode()


def test_a_record_with_fields_it_does_not_know_is_still_read() -> None:
    document = {**orjson.loads(action().encode()), "added_later": 1}
    assert ControlAction.decode(orjson.dumps(document)) == action()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "no value"),
        (b"{oops", "not JSON"),
        (b"[1]", "not a JSON object"),
        (orjson.dumps({**orjson.loads(action().encode()), "v": 2}), "version"),
        (orjson.dumps({**orjson.loads(action().encode()), "kind": "explode"}), "kind"),
        (orjson.dumps({**orjson.loads(action().encode()), "integration": ""}), "integration"),
        (orjson.dumps({**orjson.loads(action().encode()), "resources": "ats/users"}), "resources"),
        (orjson.dumps({**orjson.loads(action().encode()), "resources": [1]}), "resources"),
        (orjson.dumps({**orjson.loads(action().encode()), "webhook_id": 7}), "webhook_id"),
        (orjson.dumps({**orjson.loads(action().encode()), "received_at_ms": "soon"}), "received_at_ms"),
        (orjson.dumps({**orjson.loads(action().encode()), "received_at_ms": True}), "received_at_ms"),
    ],
)
def test_an_unreadable_record_says_why(value: bytes | None, why: str) -> None:
    with pytest.raises(UnreadableAction, match=why):
        ControlAction.decode(value)


# --- De-duplication -------------------------------------------------------------------------------------------------


def test_the_window_delivers_the_first_record_of_an_id_within_the_window_only() -> None:
    window = PartitionWindow(window_ms=1000)
    assert not window.seen("a", 10_000)
    assert window.seen("a", 10_999)
    assert not window.seen("b", 11_000)
    assert not window.seen("a", 11_001)  # a's first sighting left the window: a new delivery
    assert window.seen("a", 11_500)


def test_a_window_of_zero_remembers_nothing_and_a_full_window_forgets_the_oldest() -> None:
    off = PartitionWindow(window_ms=0)
    assert [off.seen("a", 1), off.seen("a", 2), len(off)] == [False, False, 0]
    small = PartitionWindow(window_ms=10_000, max_entries=2)
    for ident in ("a", "b", "c"):
        assert not small.seen(ident, 5)
    assert len(small) == 2
    assert not small.seen("a", 6)  # forgotten to keep memory bounded


# --- Clocks ---------------------------------------------------------------------------------------------------------


def test_arrival_times_cross_processes_as_wall_clock_milliseconds() -> None:
    assert wall_ms_of(98.5, now=100.0, wall_now=1_700_000_000.0) == 1_699_999_998_500
    assert monotonic_of(1_699_999_998_500, now=100.0, wall_now=1_700_000_000.0) == pytest.approx(98.5)
    # Another replica's clock a little ahead never puts an arrival in the future.
    assert monotonic_of(1_700_000_000_200, now=100.0, wall_now=1_700_000_000.0) == 100.0


# --- Forwarding and applying ----------------------------------------------------------------------------------------


class FakePoller:
    def __init__(self, resources: tuple[str, ...] = (USERS, JOBS), paused: bool = False) -> None:
        self.resources = resources
        self.paused = paused
        self.calls: list[tuple[str, str, str | None]] = []

    def resources_of(self, integration: str) -> tuple[str, ...]:
        return self.resources if integration == ACME else ()

    def trigger(self, integration: str, resource: str, *, received_at: float | None = None) -> bool:
        self.calls.append(("trigger", integration, resource))
        return True

    def is_paused(self, integration: str) -> bool:
        return self.paused

    def pause(self, integration: str) -> bool:
        self.calls.append(("pause", integration, None))
        return True

    def resume(self, integration: str) -> bool:
        self.calls.append(("resume", integration, None))
        return True


def channel(**environ: str) -> ControlChannel:
    config = config_without_kafka(RELAY_INTEGRATIONS=ACME, RELAY_RESOURCES=f"{USERS},{JOBS}", **environ)
    return ControlChannel(
        config,
        Metrics(),
        partition_of=lambda i: partition_for_key(i.encode(), config.state_topic_partitions),
        send_timeout_seconds=5,
    )


def test_a_webhooks_triggers_become_one_action_per_integration() -> None:
    target = ForwardingTarget(channel(), resources_of=lambda _: (USERS, JOBS), clock=lambda: 50.0)
    target.trigger(ACME, USERS, received_at=40.0)
    target.trigger(ACME, JOBS, received_at=40.0)
    target.pause("other")
    actions = target.take("wh-9")
    assert [(a.kind, a.integration, a.resources, a.webhook_id) for a in actions] == [
        ("trigger", ACME, (USERS, JOBS), "wh-9"),
        ("pause", "other", (), "wh-9"),
    ]
    assert actions[0].received_at_ms < actions[1].received_at_ms  # arrival 10 s before the pause was collected
    assert target.take("next") == []


def test_the_forwarding_target_answers_from_what_it_is_given() -> None:
    # The relay gives it the registry of integrations as it follows it (relay.fleet.Ownership): live, not a list.
    known = {ACME: (USERS, JOBS)}
    target = ForwardingTarget(channel(), resources_of=lambda integration: known.get(integration, ()))
    assert target.resources_of(ACME) == (USERS, JOBS)
    assert target.resources_of("workday:unknown") == ()
    known["workday:unknown"] = (USERS,)
    assert target.resources_of("workday:unknown") == (USERS,)
    assert not target.is_paused(ACME)  # by default the owner decides
    paused = ForwardingTarget(channel(), resources_of=known.get, is_paused=lambda integration: integration == ACME)
    assert paused.is_paused(ACME)


def test_the_owner_applies_an_action_unless_the_integration_is_paused_there() -> None:
    poller = FakePoller(resources=(USERS,))
    apply_action(poller, action())  # ats/jobs is not polled here
    apply_action(poller, action(kind="pause", resources=()))
    apply_action(poller, action(kind="resume", resources=()))
    assert poller.calls == [("trigger", ACME, USERS), ("pause", ACME, None), ("resume", ACME, None)]
    paused = FakePoller(paused=True)
    apply_action(paused, action())
    assert paused.calls == []


# --- The webhook endpoint with a channel that cannot reach Kafka ----------------------------------------------------


@pytest.fixture
async def unreachable() -> AsyncIterator[tuple[str, Metrics]]:
    config = config_without_kafka(
        RELAY_INTEGRATIONS=ACME, RELAY_RESOURCES=USERS, RELAY_KOMBO_WEBHOOK_SECRET=SECRET
    )  # brokers: a closed port
    metrics = Metrics([USERS])
    control = ControlChannel(config, metrics, partition_of=lambda _: 0, send_timeout_seconds=5)
    settings = WebhookSettings.from_config(config)
    assert settings is not None
    receiver = WebhookReceiver(
        settings, ForwardingTarget(control, resources_of=lambda integration: (USERS,) if integration == ACME else ())
    )
    app = build_app(
        metrics, lambda: (True, {}), lambda: {}, Heartbeat(), webhook=(settings.path, make_handler(receiver, metrics))
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{settings.path}", metrics
    finally:
        await control.stop()
        await runner.cleanup()


async def test_a_webhook_that_cannot_be_forwarded_gets_503_and_its_retry_is_not_a_duplicate(
    unreachable: tuple[str, Metrics],
) -> None:
    url, metrics = unreachable
    body = orjson.dumps(sim_webhooks.data_changed(ACME, ["ats_users"], ident="wh-lost"))
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # Kombo's retry: refused again, not taken for a duplicate of the one never forwarded
            async with http.post(url, data=body, headers={SIGNATURE_HEADER: sign(body, SECRET)}) as response:
                assert (response.status, response.headers["Retry-After"], await response.read()) == (503, "1", b"")
    labels = {"type": "data-changed", "outcome": "unavailable"}
    assert metrics.registry.get_sample_value("relay_webhooks_received_total", labels) == 2
    sent = {"kind": "trigger", "outcome": "sent"}
    assert metrics.registry.get_sample_value("relay_control_actions_total", sent) == 0


async def test_send_raises_kafka_unavailable_when_kafka_cannot_be_reached() -> None:
    control = channel()
    try:
        with pytest.raises(KafkaUnavailable):
            await control.send(action())
        with pytest.raises(KafkaUnavailable):
            await control.start()
    finally:
        await control.stop()

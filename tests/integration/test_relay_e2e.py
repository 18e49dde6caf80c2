"""The relay end to end: the real simulator over HTTP, a real Kafka broker, a read_committed consumer.

Most tests drive polls one at a time with ``Pipeline.poll_once`` so that every step is deterministic; the scheduler,
the HTTP endpoints and the CLI are exercised by the tests at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from relay.app import EXIT_AUTHENTICATION, EXIT_STATE, Relay
from relay.errors import AuthenticationError, IntegrationError, InvalidPage
from relay.simulator import FaultKind, Simulator, SimulatorServer
from relay.state import InProgress
from tests.integration.harness import World, collect, wait_until

pytestmark = pytest.mark.kafka

ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
USERS = "ats/users"


@pytest.fixture
async def world(bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[World]:
    sim = Simulator(api_key="test-key", integrations=[ACME, GLOBEX], users=20, seed=7)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield World(sim, server, bootstrap_servers, topic_prefix, [ACME])


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_snapshot_publishes_created_for_every_live_record(world: World) -> None:
    live_ids = [r["id"] for r in world.sim.records(ACME, USERS, include_deleted=False)]
    deleted = world.sim.delete(ACME, USERS, live_ids[0])
    async with world.relay() as relay, collect(world.bootstrap_servers, world.topics()) as events:
        await relay.pipeline.poll_once(ACME, USERS)
        published = await events.wait_for(len(live_ids) - 1)
        await events.settle()

    assert sorted(e.entity for e in published) == sorted(live_ids[1:])
    assert deleted["id"] not in {e.entity for e in published}
    event = published[0]
    record = world.sim.get(ACME, USERS, event.entity)
    assert event.topic == f"{world.topic_prefix}.ats.users"
    assert event.key == f"{ACME}:{event.entity}"
    assert event.headers["content-type"] == b"application/cloudevents+json"
    assert event.headers["ce_type"] == b"ats.users.created"
    assert event.body["specversion"] == "1.0"
    assert event.body["type"] == "ats.users.created"
    assert event.body["time"] == record["changed_at"]
    assert event.data == {
        "integration_id": ACME,
        "resource": USERS,
        "id": record["id"],
        "remote_id": record["remote_id"],
        "record": record,
        "changed_fields": None,
        "snapshot": True,
        "restored": False,
        "reason": None,
    }


async def test_initial_snapshot_skip_remembers_but_announces_only_later_changes(world: World) -> None:
    some_id = next(world.sim.records(ACME, USERS))["id"]
    async with world.relay(initial_snapshot="skip") as relay, collect(world.bootstrap_servers, world.topics()) as ev:
        await relay.pipeline.poll_once(ACME, USERS)
        await ev.settle()
        assert ev.events == []
        live = sum(1 for _ in world.sim.records(ACME, USERS, include_deleted=False))
        skipped = metric(
            relay.metrics.registry, "relay_events_suppressed_total", resource=USERS, reason="snapshot_skipped"
        )
        assert skipped == live
        world.sim.update(ACME, USERS, some_id, {"first_name": "Renamed"})
        await relay.pipeline.poll_once(ACME, USERS)
        await ev.wait_for(1)
        await ev.settle()
    assert [(e.kind, e.entity, e.data["changed_fields"]) for e in ev.events] == [
        ("updated", some_id, ["changed_at", "first_name"])
    ]


async def test_every_lifecycle_rule_end_to_end(world: World) -> None:
    async with world.relay(initial_snapshot="skip") as relay, collect(world.bootstrap_servers, world.topics()) as ev:
        poll = relay.pipeline.poll_once
        await poll(ACME, USERS)

        new = world.sim.create(ACME, USERS)
        await poll(ACME, USERS)
        world.sim.update(ACME, USERS, new["id"], {"email": "new.address@example.com"})
        await poll(ACME, USERS)
        before = world.sim.get(ACME, USERS, new["id"])["changed_at"]
        world.sim.change_nested(ACME, USERS, new["id"])
        assert world.sim.get(ACME, USERS, new["id"])["changed_at"] == before  # Kombo semantics: nested only
        await poll(ACME, USERS)
        await poll(ACME, USERS)  # re-fetch inside the overlap window: nothing new
        world.sim.delete(ACME, USERS, new["id"])
        await poll(ACME, USERS)
        world.sim.update(ACME, USERS, new["id"], {"first_name": "Ghost"})  # change to a deleted record
        await poll(ACME, USERS)
        world.sim.restore(ACME, USERS, new["id"])
        await poll(ACME, USERS)
        await ev.wait_for(5)
        await ev.settle()

    events = ev.of(new["id"])
    assert [e.kind for e in events] == ["created", "updated", "updated", "deleted", "created"]
    assert events[0].data["snapshot"] is False
    assert events[1].data["changed_fields"] == ["changed_at", "email"]
    assert events[2].data["changed_fields"] == ["system_roles"]
    assert events[3].body["time"] == events[3].data["record"]["remote_deleted_at"]
    assert events[4].data["restored"] is True
    assert len({e.body["id"] for e in events}) == 5
    assert ev.events == events  # nothing about any other entity: the overlap re-fetches were all suppressed
    assert metric(relay.metrics.registry, "relay_events_suppressed_total", resource=USERS, reason="noop") > 0


async def test_incremental_polls_resend_filters_with_every_cursor(world: World) -> None:
    async with world.relay(page_size=3, initial_snapshot="skip") as relay:
        await relay.pipeline.poll_once(ACME, USERS)
        registry = relay.metrics.registry
        fetched_before = metric(registry, "relay_records_fetched_total", resource=USERS)
        changed = [r["id"] for r in world.sim.records(ACME, USERS)][:7]
        for entity_id in changed:
            world.sim.update(ACME, USERS, entity_id, {"first_name": f"Name {entity_id[:4]}"})
        outcome = await relay.pipeline.poll_once(ACME, USERS)
    # Seven changed records on pages of three: three pages. Had the cursor been sent without `updated_after`, the
    # source would have returned every one of the 20 users.
    assert outcome.kind == "incremental"
    assert outcome.events == 7
    assert metric(registry, "relay_records_fetched_total", resource=USERS) - fetched_before == 7
    assert outcome.pages == 3


async def test_reconciliation_deletes_vanished_entities_within_the_safety_limit(world: World) -> None:
    async with world.relay(reconcile_interval_seconds=0.001, initial_snapshot="skip") as relay:
        async with collect(world.bootstrap_servers, world.topics()) as ev:
            await relay.pipeline.poll_once(ACME, USERS)  # snapshot
            ids = [r["id"] for r in world.sim.records(ACME, USERS, include_deleted=False)]
            world.sim.hard_delete(ACME, USERS, ids[0])
            await asyncio.sleep(0.01)  # let the (1 ms) reconcile interval pass
            outcome = await relay.pipeline.poll_once(ACME, USERS)
            assert outcome.kind == "reconcile"
            await ev.wait_for(1)
            await ev.settle()
            assert [(e.kind, e.entity, e.data["reason"], e.data["record"]) for e in ev.events] == [
                ("deleted", ids[0], "vanished", None)
            ]

            for entity_id in ids[1:15]:  # 14 of 18 remaining live entities: more than half at once
                world.sim.hard_delete(ACME, USERS, entity_id)
            await asyncio.sleep(0.01)
            await relay.pipeline.poll_once(ACME, USERS)
            await ev.settle()
        assert len(ev.events) == 1
        registry = relay.metrics.registry
        assert metric(registry, "relay_reconcile_vanish_refused_total", resource=USERS, reason="too_many") == 1


async def test_transient_source_errors_are_retried_and_lose_nothing(world: World) -> None:
    for kind in (
        FaultKind.HTTP_503,
        FaultKind.HTTP_429,
        FaultKind.HTML_502,
        FaultKind.TRUNCATED_JSON,
        FaultKind.MALFORMED_JSON,
    ):
        world.sim.faults.inject(kind, count=1)
    async with world.relay(page_size=5) as relay, collect(world.bootstrap_servers, world.topics()) as ev:
        await relay.pipeline.poll_once(ACME, USERS)
        await ev.wait_for(20)
        await ev.settle()
        registry = relay.metrics.registry
        retries = sum(
            metric(registry, "relay_source_retries_total", resource=USERS, code=code)
            for code in (
                "REMOTE.SERVICE_UNAVAILABLE",
                "PLATFORM.RATE_LIMIT_EXCEEDED",
                "RELAY.HTTP_502",
                "RELAY.MALFORMED_BODY",
            )
        )
    assert retries == 5
    assert sorted(e.entity for e in ev.events) == sorted(r["id"] for r in world.sim.records(ACME, USERS))


async def test_a_rejected_cursor_restarts_the_poll_from_the_watermark(world: World) -> None:
    async with world.relay(page_size=5) as relay, collect(world.bootstrap_servers, world.topics()) as ev:
        # As if an earlier run had committed two pages of its snapshot with a cursor the source no longer knows.
        relay.store.set_checkpoint(
            ACME,
            USERS,
            relay.store.pair(ACME, USERS).checkpoint.__class__(
                in_progress=InProgress("snapshot", "bm90LWEtY3Vyc29y", None, 0, 2)
            ),
        )
        await relay.pipeline.poll_once(ACME, USERS)
        await ev.wait_for(20)
        await ev.settle()
        assert (
            metric(
                relay.metrics.registry, "relay_polls_total", resource=USERS, kind="snapshot", outcome="cursor_rejected"
            )
            == 1
        )
    assert len(ev.events) == 20
    assert len({e.entity for e in ev.events}) == 20


async def test_integration_errors_back_off_that_integration_only(world: World) -> None:
    world.integrations = [ACME, GLOBEX]
    world.sim.set_integration_state(GLOBEX, "setup_pending")
    async with world.relay(poll_interval_seconds=0.2, poll_jitter_fraction=0) as relay:
        with pytest.raises(IntegrationError) as raised:
            await relay.pipeline.poll_once(GLOBEX, USERS)
        assert raised.value.code == "INTEGRATION.SETUP_SYNC_PENDING"
        assert raised.value.integration == GLOBEX

        async with collect(world.bootstrap_servers, world.topics()) as ev:
            runner = asyncio.create_task(relay.scheduler.run(grace_seconds=5))
            await ev.wait_for(20)  # acme's snapshot
            new = world.sim.create(ACME, USERS)
            await ev.wait_for(21)  # picked up by a scheduled poll
            assert ev.events[20].entity == new["id"]
            status = {s.integration: s for s in relay.scheduler.status.values()}
            assert status[GLOBEX].healthy is False
            assert status[GLOBEX].last_error_code == "INTEGRATION.SETUP_SYNC_PENDING"
            assert status[ACME].healthy is True
            relay.scheduler.stop()
            await runner
        assert {e.data["integration_id"] for e in ev.events} == {ACME}
        assert metric(relay.metrics.registry, "relay_integrations", health="unhealthy") == 1


async def test_restart_neither_loses_nor_reannounces(world: World) -> None:
    async with world.relay() as first:
        await first.pipeline.poll_once(ACME, USERS)
    changed = world.sim.create(ACME, USERS)
    ids = [r["id"] for r in world.sim.records(ACME, USERS)]
    world.sim.update(ACME, USERS, ids[3], {"last_name": "Changed while down"})
    async with world.relay() as second, collect(world.bootstrap_servers, world.topics()) as ev:
        assert second.store.pair(ACME, USERS).checkpoint.snapshot_done
        assert len(second.store.pair(ACME, USERS).entities) == 20
        await ev.wait_for(20)  # the first run's snapshot, already in the topic
        outcome = await second.pipeline.poll_once(ACME, USERS)
        assert outcome.kind == "incremental"
        await ev.wait_for(22)
        await ev.settle()
    assert len(ev.events) == 22
    assert {(e.kind, e.entity) for e in ev.events[20:]} == {("created", changed["id"]), ("updated", ids[3])}


async def test_authentication_error_is_loud(world: World) -> None:
    async with world.relay(api_key="a-revoked-key") as relay:
        with pytest.raises(AuthenticationError):
            await relay.pipeline.poll_once(ACME, USERS)
        # The scheduler stops by itself on an authentication error: nothing else could succeed.
        await asyncio.wait_for(relay.scheduler.run(grace_seconds=1), 30)
        assert isinstance(relay.scheduler.fatal, AuthenticationError)


async def test_a_fatal_error_is_served_until_the_exit(world: World) -> None:
    """After a fatal error the relay stays up, not ready, with the cause on /status and /metrics, until SIGTERM (here
    request_stop) or RELAY_FATAL_EXIT_DELAY_SECONDS; then it exits with the error's code."""
    relay = Relay(world.config(api_key="a-revoked-key", fatal_exit_delay_seconds=600, poll_interval_seconds=0.2))
    running = asyncio.create_task(relay.run())
    try:
        await wait_until(lambda: relay.fatal_error is not None, 60, "the fatal error")
        assert relay.http_port is not None
        async with aiohttp.ClientSession(f"http://127.0.0.1:{relay.http_port}") as http:
            async with http.get("/readyz") as response:
                assert response.status == 503
                assert (await response.json())["checks"]["no_fatal_error"] is False
            async with http.get("/status") as response:
                assert (await response.json())["fatal_error"].startswith("PLATFORM.AUTHENTICATION_INVALID")
            async with http.get("/metrics") as response:
                assert 'relay_polls_total{kind="snapshot",outcome="source_error",resource="ats/users"} 1.0' in (
                    await response.text()
                )
        assert not running.done()
        relay.request_stop()
        assert await asyncio.wait_for(running, 10) == EXIT_AUTHENTICATION
    finally:
        running.cancel()


async def test_without_a_fatal_exit_delay_the_relay_exits_at_once(world: World) -> None:
    relay = Relay(world.config(api_key="a-revoked-key", fatal_exit_delay_seconds=0))
    assert await asyncio.wait_for(relay.run(), 60) == EXIT_AUTHENTICATION


async def test_state_placed_by_another_partition_count_stops_the_relay(world: World) -> None:
    """RELAY_STATE_TOPIC_PARTITIONS decides which partition of the state topic holds an integration's state. A relay
    whose setting differs from the one the state was written with must not start: records of one integration in two
    partitions would restore in no defined order."""
    async with world.relay() as relay:  # the harness's 2 state partitions: ACME's state goes to partition 1 of 2
        await relay.pipeline.poll_once(ACME, USERS)
        assert relay.store.partition_of(ACME) == 1
    fewer = Relay(world.config(state_topic_partitions=1, fatal_exit_delay_seconds=0))
    assert await asyncio.wait_for(fewer.run(), 60) == EXIT_STATE
    assert fewer.fatal_error is not None
    assert "is in partition 1 of the state topic" in fewer.fatal_error
    assert "RELAY_STATE_TOPIC_PARTITIONS=1 places it in partition 0" in fewer.fatal_error
    more = Relay(world.config(state_topic_partitions=4, fatal_exit_delay_seconds=0))
    assert await asyncio.wait_for(more.run(), 60) == EXIT_STATE
    assert more.fatal_error is not None
    assert "has 2 partition(s), fewer than RELAY_STATE_TOPIC_PARTITIONS=4" in more.fatal_error
    async with world.relay() as relay:  # the setting it was written with still restores it
        assert relay.store.pair(ACME, USERS).checkpoint.snapshot_done


async def test_a_bad_page_fails_the_poll_and_publishes_nothing(
    bootstrap_servers: str, topic_prefix: str, world: World, aiohttp_bad_source: str
) -> None:
    config = world.config(source_url=aiohttp_bad_source)
    relay = Relay(config)
    await relay.start_http()
    try:
        assert await relay.connect_kafka()
        async with collect(bootstrap_servers, world.topics()) as ev:
            with pytest.raises(InvalidPage) as raised:
                await relay.pipeline.poll_once(ACME, USERS)
            await ev.settle()
        assert ev.events == []
        message = str(raised.value)
        assert "page 0, record 1" in message
        assert "changed_at" in message
        assert ACME in message
        assert relay.store.pair(ACME, USERS).checkpoint.watermark_ms is None
    finally:
        await relay.close()


@pytest.fixture
async def aiohttp_bad_source() -> AsyncIterator[str]:
    """A hand-written source whose only page has a record with a garbled ``changed_at``."""
    from aiohttp import web

    async def users(request: web.Request) -> web.Response:
        good = {"id": "A" * 24, "remote_id": "1", "changed_at": "2024-01-01T00:00:00.000Z", "remote_deleted_at": None}
        bad = {**good, "id": "B" * 24, "changed_at": "yesterday-ish"}
        return web.json_response({"status": "success", "data": {"next": None, "results": [good, bad]}})

    app = web.Application()
    app.router.add_get("/v1/ats/users", users)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_relay_run_serves_health_and_stops_cleanly_on_sigterm(world: World) -> None:
    config = world.config()
    env = {
        **os.environ,
        "RELAY_SOURCE_URL": world.server.url,
        "RELAY_API_KEY": world.sim.api_key,
        "RELAY_INTEGRATIONS": ACME,
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": world.bootstrap_servers,
        "RELAY_TOPIC_PREFIX": world.topic_prefix,
        "RELAY_HTTP_HOST": "127.0.0.1",
        "RELAY_HTTP_PORT": str(_free_port()),
        "RELAY_POLL_INTERVAL_SECONDS": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "run", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{env['RELAY_HTTP_PORT']}"
    try:
        async with aiohttp.ClientSession() as http, collect(world.bootstrap_servers, world.topics()) as ev:
            await _wait_for_status(http, f"{base}/readyz", 200)
            await ev.wait_for(20)
            async with http.get(f"{base}/livez") as response:
                assert response.status == 200
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
                assert 'relay_events_published_total{resource="ats/users",type="created"} 20.0' in text
                assert world.sim.api_key not in text
            async with http.get(f"{base}/status") as response:
                status = await response.json()
                assert status["pairs"][0]["integration"] == ACME
                assert status["pairs"][0]["entities"] == 20
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), config.shutdown_grace_seconds + 5)
        output = (await process.stdout.read()).decode() if process.stdout else ""
        assert code == 0, output
        assert world.sim.api_key not in output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_invalid_configuration_stops_start_up_naming_each_key() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_PAGE_SIZE": "500", "RELAY_INITIAL_SNAPSHOT": "sometimes"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "run", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    text = stderr.decode()
    assert process.returncode == 2
    for key in ("RELAY_PAGE_SIZE", "RELAY_INITIAL_SNAPSHOT", "RELAY_API_KEY"):  # RELAY_INTEGRATIONS is optional
        assert key in text


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_for_status(http: aiohttp.ClientSession, url: str, status: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            async with http.get(url) as response:
                if response.status == status:
                    return
        except aiohttp.ClientConnectionError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{url} did not answer {status} within {timeout}s")
        await asyncio.sleep(0.1)


async def test_many_integrations_poll_concurrently_through_one_transactional_producer(
    bootstrap_servers: str, topic_prefix: str
) -> None:
    integrations = [f"personio:tenant{i}" for i in range(6)]
    sim = Simulator(api_key="test-key", integrations=integrations, users=30, seed=11)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        world = World(sim, server, bootstrap_servers, topic_prefix, integrations)
        async with world.relay(page_size=7, poll_interval_seconds=0.5, max_concurrent_polls=6) as relay:
            async with collect(bootstrap_servers, world.topics()) as ev:
                runner = asyncio.create_task(relay.scheduler.run(grace_seconds=5))
                await ev.wait_for(6 * 30, timeout=60)
                for integration in integrations:
                    sim.update(integration, USERS, next(sim.records(integration, USERS))["id"], {"first_name": "X"})
                await ev.wait_for(6 * 30 + 6, timeout=60)
                relay.scheduler.stop()
                await runner
                await ev.settle()
            failures = metric(relay.metrics.registry, "relay_kafka_transaction_errors_total", error="KafkaUnavailable")
    assert failures == 0
    assert len(ev.events) == 6 * 31
    assert len({e.body["id"] for e in ev.events}) == 6 * 31
    assert {e.data["integration_id"] for e in ev.events if e.kind == "updated"} == set(integrations)


async def test_topic_template_by_event_and_tombstones_after_deletes(world: World) -> None:
    template = "{prefix}.{resource}.{event}"
    topics = [f"{world.topic_prefix}.ats.users.{event}" for event in ("created", "updated", "deleted")]
    async with world.relay(topic_template=template, emit_tombstones="true", initial_snapshot="skip") as relay:
        await relay.pipeline.poll_once(ACME, USERS)
        async with collect(world.bootstrap_servers, topics) as ev:
            user = world.sim.create(ACME, USERS)
            await relay.pipeline.poll_once(ACME, USERS)
            world.sim.update(ACME, USERS, user["id"], {"first_name": "Changed"})
            await relay.pipeline.poll_once(ACME, USERS)
            world.sim.delete(ACME, USERS, user["id"])
            await relay.pipeline.poll_once(ACME, USERS)
            await ev.wait_for(3)
            await ev.settle()
    # One topic per event type: the consumer gets no order across them (the documented caveat), so compare sets.
    assert sorted((e.topic.rsplit(".", 1)[1], e.kind) for e in ev.events) == [
        ("created", "created"),
        ("deleted", "deleted"),
        ("updated", "updated"),
    ]
    assert ev.tombstones == [f"{ACME}:{user['id']}"]

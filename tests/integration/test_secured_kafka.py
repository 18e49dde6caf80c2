"""The relay against a secured broker, for real: one broker (``secured_kafka``, started once by the first of these
tests) with a TLS, a mutual TLS and a SASL_SSL (SCRAM-SHA-512 and PLAIN) listener and the StandardAuthorizer.

On each listener the relay publishes a snapshot and an update, exactly once, read back by a ``read_committed``
consumer connecting as the read-only ``consumer`` principal, and ``relay tail`` reads them over the same settings.
Each way of being refused is tried with a real ``relay run`` process: it must exit with the documented code, say
what to fix (never a password), and say the same on ``/status`` while it waits to exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from local_kafka import Acl, SecuredKafka, free_port, relay_acls

from relay.app import EXIT_KAFKA_AUTHENTICATION, EXIT_KAFKA_AUTHORIZATION
from relay.simulator import Simulator, SimulatorServer
from tests.integration.harness import World, collect, relay_config

pytestmark = pytest.mark.kafka

ACME = "personio:acme"
USERS = "ats/users"
LISTENERS = ("ssl", "mtls", "scram", "plain")


def kafka_kwargs(settings: dict[str, str]) -> dict[str, object]:
    """aiokafka's keyword arguments (security only) for ``RELAY_KAFKA_*`` settings, through the relay's own config."""
    config = relay_config(
        source_url="http://127.0.0.1:1",
        api_key="unused-key",
        integrations=[ACME],
        bootstrap_servers=settings["RELAY_KAFKA_BOOTSTRAP_SERVERS"],
        topic_prefix="unused",
        **{name.removeprefix("RELAY_").lower(): value for name, value in settings.items() if "BOOTSTRAP" not in name},
    )
    return config.kafka_security.aiokafka_kwargs()


@pytest.fixture
async def sim_server() -> AsyncIterator[tuple[Simulator, SimulatorServer]]:
    sim = Simulator(api_key="test-key", integrations=[ACME], users=12, seed=5)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        yield sim, server


@pytest.mark.parametrize("listener", LISTENERS)
async def test_snapshot_and_update_exactly_once_then_tail_over_each_listener(
    secured_kafka: SecuredKafka, sim_server: tuple[Simulator, SimulatorServer], listener: str
) -> None:
    sim, server = sim_server
    # Under the prefix the broker's ACLs give User:relay (and the consumer), as an operator would set them.
    prefix = f"{secured_kafka.topic_prefix}-{uuid.uuid4().hex[:8]}"
    settings = secured_kafka.client_settings(listener, "relay")
    world = World(sim, server, settings["RELAY_KAFKA_BOOTSTRAP_SERVERS"], prefix, [ACME], kafka_settings=settings)
    consumer = secured_kafka.client_settings(listener, "consumer")
    live = [r["id"] for r in sim.records(ACME, USERS, include_deleted=False)]
    async with (
        world.relay() as relay,
        collect(consumer["RELAY_KAFKA_BOOTSTRAP_SERVERS"], world.topics(), **kafka_kwargs(consumer)) as events,
    ):
        assert relay.config.transactional_id.startswith(secured_kafka.transactional_id_prefix)
        await relay.pipeline.poll_once(ACME, USERS)
        sim.update(ACME, USERS, live[0], {"first_name": "Secured"})
        await relay.pipeline.poll_once(ACME, USERS)
        await events.wait_for(len(live) + 1)
        await events.settle()
    assert sorted(e.entity for e in events.events if e.kind == "created") == sorted(live)
    assert [(e.kind, e.entity) for e in events.events if e.kind != "created"] == [("updated", live[0])]

    env = {**os.environ, **consumer}
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "tail", "--topic", world.topics()[0], "--from-beginning",
        "--max-events", str(len(live) + 1), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(tail.communicate(), 60)
    assert tail.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == len(live) + 1
    assert sum("ats.users.updated" in line for line in lines) == 1


async def run_until_fatal(environ: dict[str, str], timeout: float = 60.0) -> tuple[int, str, dict[str, Any]]:
    """Run ``relay run`` until ``/status`` reports a fatal error, stop its wait before exiting with SIGTERM, and
    return its exit code, its log and the ``/status`` it served while waiting."""
    port = free_port()
    env = {
        **os.environ,
        "RELAY_HTTP_HOST": "127.0.0.1",
        "RELAY_HTTP_PORT": str(port),
        "RELAY_LOG_FORMAT": "console",
        "RELAY_FATAL_EXIT_DELAY_SECONDS": "120",
        "RELAY_POLL_INTERVAL_SECONDS": "1",
        **environ,
    }
    with tempfile.TemporaryFile() as log:
        relay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "run", env=env, stdout=log, stderr=log
        )
        status: dict[str, Any] = {}
        try:
            deadline = time.monotonic() + timeout
            async with aiohttp.ClientSession() as http:
                while not status.get("fatal_error"):
                    if relay.returncode is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise AssertionError(f"no fatal error on /status: {log.read().decode()[-3000:]}")
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/status") as response:
                            status = await response.json()
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)  # polling an endpoint, not synchronising on time
            relay.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(relay.wait(), 30)
        finally:
            if relay.returncode is None:
                relay.kill()
                await relay.wait()
        log.seek(0)
        return code, log.read().decode(), status


def relay_environ(server: SimulatorServer, sim: Simulator, prefix: str, settings: dict[str, str]) -> dict[str, str]:
    return {
        "RELAY_SOURCE_URL": server.url,
        "RELAY_API_KEY": sim.api_key,
        "RELAY_INTEGRATIONS": ACME,
        "RELAY_TOPIC_PREFIX": prefix,
        "RELAY_TOPIC_PARTITIONS": "2",
        "RELAY_STATE_TOPIC_PARTITIONS": "2",
        **settings,
    }


def refused(broker: SecuredKafka, listener: str, user: str = "relay", **changes: str | None) -> dict[str, str]:
    settings = broker.client_settings(listener, user)
    for name, value in changes.items():
        if value is None:
            settings.pop(name, None)
        else:
            settings[name] = value
    return settings


@pytest.mark.parametrize(
    "case",
    ["scram_password", "plain_password", "untrusted_ca", "hostname", "no_client_certificate", "rogue_certificate"],
)
async def test_a_refused_connection_exits_7_saying_what_to_fix(
    secured_kafka: SecuredKafka, sim_server: tuple[Simulator, SimulatorServer], case: str, tmp_path: Path
) -> None:
    sim, server = sim_server
    tls = secured_kafka.tls_dir
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password-4711")
    settings, says = {
        "scram_password": (
            refused(secured_kafka, "scram", RELAY_KAFKA_SASL_PASSWORD_FILE=str(wrong)),
            ["SASL SCRAM-SHA-512 credentials of user 'relay'", "RELAY_KAFKA_SASL_PASSWORD"],
        ),
        "plain_password": (
            refused(secured_kafka, "plain", RELAY_KAFKA_SASL_PASSWORD_FILE=str(wrong)),
            ["SASL PLAIN credentials of user 'relay'", "RELAY_KAFKA_SASL_PASSWORD"],
        ),
        "untrusted_ca": (
            refused(secured_kafka, "ssl", RELAY_KAFKA_SSL_CAFILE=str(tls / "rogue-ca.pem")),
            ["RELAY_KAFKA_SSL_CAFILE", "does not trust", "rogue-ca.pem"],
        ),
        "hostname": (
            refused(secured_kafka, "ssl", RELAY_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{secured_kafka.ssl_port}"),
            ["is not for the name '127.0.0.1'", "RELAY_KAFKA_BOOTSTRAP_SERVERS"],
        ),
        "no_client_certificate": (
            refused(secured_kafka, "mtls", RELAY_KAFKA_SSL_CERTFILE=None, RELAY_KAFKA_SSL_KEYFILE=None),
            ["refused the TLS connection's client certificate", "set RELAY_KAFKA_SSL_CERTFILE"],
        ),
        "rogue_certificate": (
            refused(
                secured_kafka,
                "mtls",
                RELAY_KAFKA_SSL_CERTFILE=str(tls / "rogue-relay.pem"),
                RELAY_KAFKA_SSL_KEYFILE=str(tls / "rogue-relay.key"),
            ),
            ["refused the TLS connection's client certificate", "not signed by a CA the broker trusts"],
        ),
    }[case]
    code, log, status = await run_until_fatal(relay_environ(server, sim, f"t{uuid.uuid4().hex[:10]}", settings))
    assert code == EXIT_KAFKA_AUTHENTICATION, log
    for words in says:
        assert words in log, log
        assert words in status["fatal_error"]
    assert status["ready"] is False
    assert "not-the-password-4711" not in log
    assert secured_kafka.users["relay"] not in log


async def create_state_topic_with_a_record(broker: SecuredKafka, topic: str) -> None:
    """Through the super user's PLAINTEXT listener: a state topic that holds a record, so reading it needs Read."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=b"anything", value=b"{}", partition=0)
    finally:
        await producer.stop()


@pytest.mark.parametrize(
    ("missing", "says"),
    [
        (("topic", "create"), "Create on the topic"),
        (("transactional_id", "write"), "Write on the transactional id"),
        (("topic", "write"), "Write on the topic(s)"),
        (("topic", "read"), "Read on the topic(s)"),
    ],
)
async def test_each_missing_acl_exits_6_naming_the_resource_and_operation(
    secured_kafka: SecuredKafka, sim_server: tuple[Simulator, SimulatorServer], missing: tuple[str, str], says: str
) -> None:
    sim, server = sim_server
    prefix = f"t{uuid.uuid4().hex[:10]}"
    transactional_id = f"{prefix}-txn"
    # User:limited gets every ACL a relay needs but one, under this test's own prefix and transactional id.
    acls = [
        acl
        for acl in relay_acls("User:limited", prefix, transactional_id)
        if (acl.resource_type, acl.operation) != missing
    ]
    if missing == ("topic", "write"):  # Describe stays: the producer sees the topic but may not write it
        assert Acl("User:limited", "topic", prefix, "prefixed", "describe") in acls
    secured_kafka.grant(acls)
    if missing == ("topic", "read"):
        await create_state_topic_with_a_record(secured_kafka, f"{prefix}.relay-state")
    settings = secured_kafka.client_settings("scram", "limited")
    environ = relay_environ(server, sim, prefix, settings) | {"RELAY_TRANSACTIONAL_ID": transactional_id}
    code, log, status = await run_until_fatal(environ)
    assert code == EXIT_KAFKA_AUTHORIZATION, log
    assert f"Kafka refused User:limited {says}" in status["fatal_error"], status
    assert f"Kafka refused User:limited {says}" in log
    resource = transactional_id if missing[0] == "transactional_id" else prefix
    assert resource in status["fatal_error"]

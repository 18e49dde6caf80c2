"""Fixtures shared by the whole suite.

One real Kafka broker per test session (``deploy/local-kafka/local_kafka.py``), started lazily by the first test that
asks for it, so pure unit tests run without Java. Each test gets its own topic names.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "deploy" / "local-kafka"))

from local_kafka import LocalKafka, SecuredKafka  # noqa: E402


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A single-node KRaft broker on 127.0.0.1, shared by the session.

    Set ``RELAY_TEST_KAFKA`` to ``host:port`` to run against a broker you started yourself (``make kafka``).
    """
    external = os.environ.get("RELAY_TEST_KAFKA")
    if external:
        port = external.rpartition(":")[2]
        broker = LocalKafka(port=int(port))
        yield broker
        return
    log_file = tmp_path_factory.mktemp("kafka") / "broker.log"
    broker = LocalKafka(log_file=log_file)
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture(scope="session")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    """One broker with every secured listener (TLS, mutual TLS, SASL_SSL with SCRAM-SHA-512 and PLAIN) and ACLs,
    shared by the tests of secured Kafka and started by the first of them (``deploy/local-kafka``, SecuredKafka)."""
    broker = SecuredKafka(log_file=tmp_path_factory.mktemp("secured-kafka") / "broker.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture
def bootstrap_servers(kafka_broker: LocalKafka) -> str:
    return kafka_broker.bootstrap_servers


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, so every test has its own topics on the shared broker."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def kombo_spec_path() -> Path:
    return SHARED / "kombo-openapi.json"

"""`relay integrations` without a broker: what it refuses before talking to Kafka (exit 2), and a Kafka that cannot be
reached or does not answer, which ends the command within its --timeout (exit 8). The round trips through a real
broker are in tests/integration/test_registry_topic.py."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

import relay.cli
from relay.registry_cli import EXIT_INVALID, EXIT_KAFKA_UNAVAILABLE
from tests.unit.support import NO_KAFKA


@pytest.fixture(autouse=True)
def no_relay_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP_SERVERS", NO_KAFKA)


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """host:port of a socket that accepts connections (the kernel does, from its backlog) and never answers."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield f"127.0.0.1:{listening.getsockname()[1]}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add", "personio:a b"], "'personio:a b' is not an integration id (printable, no spaces or commas)"),
        (["pause", "a,b"], "'a,b' is not an integration id"),
        (["add", "x:1", "--resources", "ats/users,,ats/jobs"], "--resources has an empty item"),
        (["add", "x:1", "--resources", "ATS/users"], "--resources has 'ATS/users', which must be a path like"),
        (["add", "x:1", "--category", "ats", "--resources", "hris/employees"], "not a resource of an ATS integration"),
        (["remove", "x:1", "--by", "ops\n"], "--by must be printable text of 1 to 256 characters"),
    ],
)
def test_an_invalid_argument_is_refused_before_kafka_is_asked(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    started = time.monotonic()
    assert relay.cli.main(["integrations", *argv]) == EXIT_INVALID
    assert message in capsys.readouterr().err
    assert time.monotonic() - started < 2  # no connection was tried (NO_KAFKA would refuse it at once anyway)


def test_an_invalid_configuration_is_exit_2_and_no_api_key_or_integrations_are_needed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_INTEGRATIONS_TOPIC", "a topic")
    assert relay.cli.main(["integrations", "list"]) == EXIT_INVALID
    assert capsys.readouterr().err.splitlines() == [
        "relay: invalid configuration",
        "  RELAY_INTEGRATIONS_TOPIC: must be a Kafka topic name (a-z, A-Z, 0-9, '.', '_', '-'; at most 249 "
        "characters), got 'a topic'",
    ]


def test_a_timeout_that_is_no_number_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        relay.cli.main(["integrations", "list", "--timeout", "-1"])
    assert exited.value.code == 2
    assert "--timeout: must be a number of seconds > 0, got '-1'" in capsys.readouterr().err


def test_kafka_refusing_connections_is_exit_8(capsys: pytest.CaptureFixture[str]) -> None:
    assert relay.cli.main(["integrations", "pause", "personio:acme"]) == EXIT_KAFKA_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith("relay integrations pause: no Kafka bootstrap server could be reached (127.0.0.1:9: ")


def test_kafka_that_never_answers_is_exit_8_within_the_timeout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, silent_broker: str
) -> None:
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP_SERVERS", silent_broker)
    started = time.monotonic()
    assert relay.cli.main(["integrations", "list", "--timeout", "1"]) == EXIT_KAFKA_UNAVAILABLE
    assert time.monotonic() - started < 5
    assert capsys.readouterr().err == f"relay integrations list: Kafka at {silent_broker} did not answer within 1 s\n"

"""deploy/docker-compose.yml's webhooks: the simulator signs data-changed webhooks for the relay's endpoint with the
secret the relay checks them with, and the relay's environment is a configuration it accepts."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from relay.cli import build_parser
from relay.config import load_config
from tests.deploy.chart import REPO

COMPOSE = REPO / "deploy" / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return compose["services"]


def test_the_relay_serves_the_webhook_endpoint_with_the_simulators_secret(services: dict[str, Any]) -> None:
    relay_env = services["relay"]["environment"]
    sim_env = services["simulator"]["environment"]
    assert relay_env["RELAY_KOMBO_WEBHOOK_SECRET"] == sim_env["SIM_WEBHOOK_SECRET"]
    assert relay_env["RELAY_POLL_INTERVAL_SECONDS"] == "60"
    config = load_config(environ={name: str(value) for name, value in relay_env.items()})
    assert config.kombo_webhook_secret is not None
    assert config.kombo_webhook_secret.reveal() == sim_env["SIM_WEBHOOK_SECRET"]
    assert config.poll_interval_seconds == 60


def test_the_simulator_sends_signed_webhooks_to_the_relay(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator's command, parsed as `relay simulate` would with the container's environment."""
    sim_env = services["simulator"]["environment"]
    monkeypatch.setenv("SIM_WEBHOOK_SECRET", sim_env["SIM_WEBHOOK_SECRET"])  # read when the parser is built
    args = build_parser().parse_args(services["simulator"]["command"])
    assert args.command == "simulate"
    assert args.webhook_url == "http://relay:8080/webhooks/kombo"
    assert args.webhook_secret == sim_env["SIM_WEBHOOK_SECRET"]
    url = urlsplit(args.webhook_url)
    relay_config = load_config(environ={name: str(value) for name, value in services["relay"]["environment"].items()})
    assert url.hostname == "relay"
    assert url.port == relay_config.http_port
    assert url.path == relay_config.kombo_webhook_path
    # The webhooks name integrations the relay polls (others would be answered 202 and ignored).
    assert set(args.integrations.split(",")) == set(relay_config.integrations)

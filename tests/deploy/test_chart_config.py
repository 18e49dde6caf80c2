"""The chart's configuration against the relay's: the RELAY_* names it renders are settings of relay/config.py, its
defaults are the relay's, and what it renders for each ci/ values file is a configuration the relay accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay.config import REQUIRED, SETTINGS, ConfigError, Derived, load_config
from tests.deploy.chart import CHART, CI_VALUES, Helm, Rendered

SECRETS_DIR = "/var/run/secrets/change-relay/"
KNOWN_NAMES = {name for setting in SETTINGS for name in setting.env_names}
BY_NAME = {name: setting for setting in SETTINGS for name in setting.env_names}

# The settings the chart is asked to cover (the list): each must be rendered by some values.
CONTRACT = {
    "RELAY_SOURCE_URL",
    "RELAY_API_KEY_FILE",
    "RELAY_INTEGRATIONS",
    "RELAY_RESOURCES",
    "RELAY_KAFKA_BOOTSTRAP_SERVERS",
    "RELAY_TOPIC_PREFIX",
    "RELAY_POLL_INTERVAL_SECONDS",
    "RELAY_PAGE_SIZE",
    "RELAY_OVERLAP_SECONDS",
    "RELAY_INITIAL_SNAPSHOT",
    "RELAY_HTTP_PORT",
    "RELAY_TRANSACTIONAL_ID",
    "RELAY_RECONCILE_INTERVAL_SECONDS",
    "RELAY_RECONCILE_MAX_VANISH_FRACTION",
    "RELAY_MAX_CONCURRENT_POLLS",
    "RELAY_LOG_FORMAT",
    "RELAY_LOG_LEVEL",
    "RELAY_SHUTDOWN_GRACE_SECONDS",
    "RELAY_KAFKA_SECURITY_PROTOCOL",
    "RELAY_KAFKA_SASL_MECHANISM",
    "RELAY_KAFKA_SASL_USERNAME",
    "RELAY_KAFKA_SASL_PASSWORD_FILE",
    "RELAY_KAFKA_SSL_CAFILE",
    "RELAY_KAFKA_SSL_CERTFILE",
    "RELAY_KAFKA_SSL_KEYFILE",
    "RELAY_KAFKA_SSL_KEY_PASSWORD_FILE",
    "RELAY_KAFKA_SSL_CHECK_HOSTNAME",
    "RELAY_TOPIC_PARTITIONS",
    "RELAY_TOPIC_REPLICATION_FACTOR",
    "RELAY_STATE_TOPIC",
    # The fleet (issue 15): the consumer group, the control topic, the partitions a replica owns
    "RELAY_STATE_TOPIC_PARTITIONS",
    "RELAY_CONTROL_TOPIC",
    "RELAY_GROUP_ID",
    "RELAY_GROUP_SESSION_TIMEOUT_SECONDS",
    # The registry of integrations
    "RELAY_INTEGRATIONS_TOPIC",
    "RELAY_RESOURCES_ATS",
    "RELAY_RESOURCES_HRIS",
    # Kombo webhooks (webhooks.*)
    "RELAY_KOMBO_WEBHOOK_SECRET_FILE",
    "RELAY_KOMBO_WEBHOOK_PATH",
    "RELAY_KOMBO_WEBHOOK_MAX_BODY_BYTES",
    "RELAY_KOMBO_WEBHOOK_MODEL_MAP",
    "RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS",
    "RELAY_FOLLOW_INTEGRATION_STATE",
    "RELAY_FOLLOW_INTEGRATIONS",
    # The admin HTTP API (admin.*)
    "RELAY_ADMIN_TOKEN_FILE",
}
# Secrets the relay could also take as plain values: the chart must only ever render their *_FILE variants.
DIRECT_SECRETS = (
    "RELAY_API_KEY",
    "RELAY_KAFKA_SASL_PASSWORD",
    "RELAY_KAFKA_SSL_KEY_PASSWORD",
    "RELAY_KOMBO_WEBHOOK_SECRET",
    "RELAY_ADMIN_TOKEN",
)
VALUES_SETS = [pytest.param((), id="default"), *(pytest.param((path,), id=path.stem) for path in CI_VALUES)]


def relay_environment(rendered: Rendered) -> dict[str, str]:
    """What the relay container's environment gets: the ConfigMap (envFrom), then the env entries (they win)."""
    environment = dict(rendered.one("ConfigMap")["data"])
    [container] = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    for entry in container.get("env", []):
        assert "value" in entry, f"{entry['name']}: only plain values are expected in the ci/ values"
        environment[entry["name"]] = entry["value"]
    return environment


def test_the_contract_names_are_all_settings() -> None:
    assert sorted(CONTRACT - KNOWN_NAMES) == []


def test_every_contract_setting_is_rendered_by_some_values(helm: Helm) -> None:
    rendered: set[str] = set()
    for values_files in [(), *((path,) for path in CI_VALUES)]:
        rendered |= set(relay_environment(helm.template(values_files)))
    registry = ["kafka.integrationsTopic=r", "relay.resourcesAts={ats/users}", "relay.resourcesHris={hris/employees}"]
    rendered |= set(
        relay_environment(helm.template(sets=['relay.integrations={"a:b"}', "kafka.stateTopic=s", *registry]))
    )
    assert sorted(CONTRACT - rendered) == []


@pytest.mark.parametrize("values_files", VALUES_SETS)
def test_every_rendered_relay_variable_is_a_setting(helm: Helm, values_files: tuple[Path, ...]) -> None:
    environment = relay_environment(helm.template(values_files))
    unknown = sorted(name for name in environment if name.startswith("RELAY_") and name not in KNOWN_NAMES)
    assert unknown == []
    secrets_given_directly = sorted(name for name in environment if name in DIRECT_SECRETS)
    assert secrets_given_directly == [], "secrets are files (the *_FILE settings), never values in the environment"


def test_chart_defaults_are_the_relays_defaults(helm: Helm) -> None:
    environment = relay_environment(helm.template())
    compared = []
    for name, text in environment.items():
        setting = BY_NAME[name]
        if setting.default is REQUIRED or setting.default is None or isinstance(setting.default, Derived):
            continue
        assert setting.kind.parse(text) == setting.default, name
        compared.append(name)
    assert len(compared) >= 15, compared


def secret_files_materialised(environment: dict[str, str], folder: Path) -> dict[str, str]:
    """The environment with the mounted secret files replaced by stand-ins under ``folder``."""
    result = {}
    for name, value in environment.items():
        if value.startswith(SECRETS_DIR):
            stand_in = folder / value.removeprefix(SECRETS_DIR)
            stand_in.write_text(f"stand-in for {name}\n")
            value = str(stand_in)
        result[name] = value
    return result


@pytest.mark.parametrize("values_file", CI_VALUES, ids=[path.stem for path in CI_VALUES])
def test_the_relay_accepts_what_the_chart_renders(helm: Helm, values_file: Path, tmp_path: Path) -> None:
    environment = secret_files_materialised(relay_environment(helm.template([values_file])), tmp_path)
    config = load_config(environ=environment)
    assert config.integrations
    assert config.api_key.reveal() == "stand-in for RELAY_API_KEY_FILE"
    assert config.http_port == 8080
    if "RELAY_KOMBO_WEBHOOK_SECRET_FILE" in environment:
        assert config.kombo_webhook_secret is not None
        assert config.kombo_webhook_secret.reveal() == "stand-in for RELAY_KOMBO_WEBHOOK_SECRET_FILE"
    else:
        assert config.kombo_webhook_secret is None, "webhooks are off unless the values turn them on"
    if "RELAY_ADMIN_TOKEN_FILE" in environment:
        assert config.admin_token is not None
        assert config.admin_token.reveal() == "stand-in for RELAY_ADMIN_TOKEN_FILE"
    else:
        assert config.admin_token is None, "the admin API is off unless the values turn it on"


def test_with_the_defaults_the_relay_names_the_missing_settings(helm: Helm) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ=relay_environment(helm.template()))
    # RELAY_INTEGRATIONS is optional since the registry of integrations: it only seeds the registry.
    assert sorted(caught.value.problems) == ["RELAY_API_KEY or RELAY_API_KEY_FILE: required"]


def test_large_numbers_are_rendered_as_the_relay_reads_them(helm: Helm, tmp_path: Path) -> None:
    """Helm reads values as floats: a large number must not come out as 1e+06."""
    values = tmp_path / "numbers-values.yaml"
    values.write_text(
        "relay: {reconcileIntervalSeconds: 1000000, pollIntervalSeconds: 0.5}\nkafka: {topicPartitions: 1000000}\n"
    )
    environment = relay_environment(helm.template([values]))
    assert environment["RELAY_RECONCILE_INTERVAL_SECONDS"] == "1000000"
    assert environment["RELAY_TOPIC_PARTITIONS"] == "1000000"
    assert environment["RELAY_POLL_INTERVAL_SECONDS"] == "0.5"


def test_the_chart_values_name_the_settings_they_set() -> None:
    """Each relay.* / kafka.* value's comment in values.yaml names its RELAY_* variable, and that name exists."""
    text = (CHART / "values.yaml").read_text()
    named = set(re.findall(r"\bRELAY_[A-Z_]*[A-Z]\b", text))
    assert sorted(named - KNOWN_NAMES) == []
    assert sorted(CONTRACT - named) == []

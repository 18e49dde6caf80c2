"""relay.config: defaults, overrides, files, validation problems, secrets, derived values and `relay check-config`."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

import relay.cli
from relay.config import (
    MASK,
    SETTINGS,
    Config,
    ConfigError,
    KafkaSecurity,
    Secret,
    environment_warnings,
    load_config,
    settings_help,
    settings_markdown,
)
from relay.config_kinds import Integer, SecretValue
from relay.settings import Setting, setting, settings_class, settings_of

API_KEY = "sk_live_never-print-me-7f3a91"
SASL_PASSWORD = "sasl-never-print-me-02be"
INTEGRATION = "personio:8d1hpPsDu6Q5K1UnBDMXiUeGV"
MINIMAL = {"RELAY_API_KEY": API_KEY, "RELAY_INTEGRATIONS": INTEGRATION}
EXISTING_FILE = __file__
SASL = {
    "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    "RELAY_KAFKA_SASL_USERNAME": "relay",
    "RELAY_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
}
SSL = {"RELAY_KAFKA_SECURITY_PROTOCOL": "SSL"}
SSL_WITH_CERT = {**SSL, "RELAY_KAFKA_SSL_CERTFILE": EXISTING_FILE}


def load(**env: str) -> Config:
    return load_config(environ={**MINIMAL, **env})


def problems_of(environ: Mapping[str, str], path: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ)
    return caught.value.problems


def problems_with(**env: str) -> list[str]:
    return problems_of({**MINIMAL, **env})


def field_value(config: object, field: str) -> object:
    for name in field.split("."):
        config = getattr(config, name)
    return config


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_relay_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own RELAY_* variables must not leak into the tests that read os.environ."""
    for name in [name for name in os.environ if name.startswith("RELAY_")]:
        monkeypatch.delenv(name)


# --- Defaults -------------------------------------------------------------------------------------------------------

EXPECTED_DEFAULTS: dict[str, object] = {
    "source_url": "https://api.kombo.dev/v1",
    "resources": ["ats/users"],
    "resources_ats": None,
    "resources_hris": None,
    "page_size": 250,
    "source_connect_timeout_seconds": 10.0,
    "source_read_timeout_seconds": 60.0,
    "source_request_timeout_seconds": 120.0,
    "source_max_retries": 6,
    "source_backoff_initial_seconds": 0.5,
    "source_backoff_max_seconds": 60.0,
    "source_ratelimit_min_remaining": 5,
    "source_max_response_bytes": 33554432,
    "integration_backoff_max_seconds": 900.0,
    "poll_interval_seconds": 60.0,
    "poll_jitter_fraction": 0.1,
    "overlap_seconds": 30.0,
    "initial_snapshot": "emit",
    "reconcile_interval_seconds": 86400.0,
    "reconcile_max_vanish_fraction": 0.5,
    "max_concurrent_polls": 8,
    "max_pages_per_poll": 100_000,
    "kafka_bootstrap_servers": "localhost:9092",
    "kafka_security": {
        "security_protocol": "PLAINTEXT",
        "sasl_mechanism": None,
        "sasl_username": None,
        "sasl_password": None,
        "ssl_cafile": None,
        "ssl_certfile": None,
        "ssl_keyfile": None,
        "ssl_key_password": None,
        "ssl_check_hostname": True,
        "allow_plaintext_password": False,
    },
    "topic_prefix": "kombo",
    "topic_template": "{prefix}.{resource}",
    "state_topic": "kombo.relay-state",
    "control_topic": "kombo.relay-control",
    "integrations_topic": "kombo.relay-integrations",
    "removed_state_retention": None,
    "topic_partitions": 6,
    "topic_replication_factor": -1,
    "state_topic_partitions": 6,
    "emit_tombstones": False,
    "group_session_timeout_seconds": 10.0,
    "kafka_commit_timeout_seconds": 60.0,
    "kafka_max_record_bytes": 1_000_000,
    "http_host": "0.0.0.0",
    "http_port": 8080,
    "shutdown_grace_seconds": 20.0,
    "fatal_exit_delay_seconds": 60.0,
    "log_format": "json",
    "log_level": "INFO",
    "kombo_webhook_secret": None,
    "kombo_webhook_path": "/webhooks/kombo",
    "kombo_webhook_max_body_bytes": 1048576,
    "kombo_webhook_model_map": None,
    "kombo_webhook_dedup_seconds": 3600.0,
    "follow_integration_state": False,
    "follow_integrations": False,
    "admin_token": None,
}


def test_every_default() -> None:
    masked = load().masked()
    assert re.fullmatch(r"change-relay-[0-9a-f]{16}", str(masked.pop("transactional_id")))
    assert re.fullmatch(r"change-relay-[0-9a-f]{16}", str(masked.pop("group_id")))
    assert masked == {**EXPECTED_DEFAULTS, "api_key": MASK, "integrations": [INTEGRATION]}


def assert_field_types(config: Config | KafkaSecurity) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.type in ("int", "float", "bool", "str"):
            assert type(value).__name__ == field.type, field.name
        elif isinstance(value, KafkaSecurity):
            assert_field_types(value)


def test_values_have_the_types_the_fields_declare() -> None:
    assert_field_types(load())
    assert_field_types(load(RELAY_POLL_INTERVAL_SECONDS="5", RELAY_PAGE_SIZE="10", RELAY_EMIT_TOMBSTONES="1"))


def test_a_field_that_declares_no_setting_is_refused() -> None:
    @settings_class
    class Partial:
        declared: int = setting(Integer(1), 1, "A setting")
        undeclared: int = dataclasses.field()

    with pytest.raises(TypeError, match=r"Partial\.undeclared is neither a setting\(\) nor a group\(\)"):
        settings_of(Partial)


def test_settings_are_the_fields_in_order_named_after_them() -> None:
    assert [setting.field for setting in SETTINGS][:3] == ["source_url", "api_key", "integrations"]
    assert [setting.env for setting in SETTINGS if setting.field.startswith("kafka_security.")][:2] == [
        "RELAY_KAFKA_SECURITY_PROTOCOL",
        "RELAY_KAFKA_SASL_MECHANISM",
    ]
    assert all(setting.env == "RELAY_" + setting.key.upper() for setting in SETTINGS)


# --- Environment overrides ------------------------------------------------------------------------------------------

# (variable, value, field, expected, other variables it needs to be valid)
OVERRIDES: list[tuple[str, str, str, object, dict[str, str]]] = [
    ("RELAY_SOURCE_URL", "http://localhost:8000/v1/", "source_url", "http://localhost:8000/v1", {}),
    ("RELAY_API_KEY", "other-key", "api_key", Secret("other-key"), {}),
    ("RELAY_INTEGRATIONS", "personio:a, bamboohr:b", "integrations", ("personio:a", "bamboohr:b"), {}),
    ("RELAY_RESOURCES", "hris/employees,ats/job_postings", "resources", ("hris/employees", "ats/job_postings"), {}),
    ("RELAY_RESOURCES_ATS", "ats/users, ats/jobs", "resources_ats", ("ats/users", "ats/jobs"), {}),
    ("RELAY_RESOURCES_HRIS", "hris/employees", "resources_hris", ("hris/employees",), {}),
    ("RELAY_PAGE_SIZE", "100", "page_size", 100, {}),
    ("RELAY_SOURCE_CONNECT_TIMEOUT_SECONDS", "2.5", "source_connect_timeout_seconds", 2.5, {}),
    ("RELAY_SOURCE_READ_TIMEOUT_SECONDS", "30", "source_read_timeout_seconds", 30.0, {}),
    ("RELAY_SOURCE_REQUEST_TIMEOUT_SECONDS", "300", "source_request_timeout_seconds", 300.0, {}),
    ("RELAY_SOURCE_MAX_RETRIES", "0", "source_max_retries", 0, {}),
    ("RELAY_SOURCE_BACKOFF_INITIAL_SECONDS", "1", "source_backoff_initial_seconds", 1.0, {}),
    ("RELAY_SOURCE_BACKOFF_MAX_SECONDS", "120", "source_backoff_max_seconds", 120.0, {}),
    ("RELAY_SOURCE_RATELIMIT_MIN_REMAINING", "0", "source_ratelimit_min_remaining", 0, {}),
    ("RELAY_SOURCE_MAX_RESPONSE_BYTES", "1048576", "source_max_response_bytes", 1048576, {}),
    ("RELAY_INTEGRATION_BACKOFF_MAX_SECONDS", "60", "integration_backoff_max_seconds", 60.0, {}),
    ("RELAY_POLL_INTERVAL_SECONDS", "5", "poll_interval_seconds", 5.0, {}),
    ("RELAY_POLL_JITTER_FRACTION", "0", "poll_jitter_fraction", 0.0, {}),
    ("RELAY_OVERLAP_SECONDS", "0", "overlap_seconds", 0.0, {}),
    ("RELAY_INITIAL_SNAPSHOT", "SKIP", "initial_snapshot", "skip", {}),
    ("RELAY_RECONCILE_INTERVAL_SECONDS", "0", "reconcile_interval_seconds", 0.0, {}),
    ("RELAY_RECONCILE_MAX_VANISH_FRACTION", "1", "reconcile_max_vanish_fraction", 1.0, {}),
    ("RELAY_MAX_CONCURRENT_POLLS", "1", "max_concurrent_polls", 1, {}),
    ("RELAY_MAX_PAGES_PER_POLL", "50", "max_pages_per_poll", 50, {}),
    ("RELAY_KAFKA_BOOTSTRAP_SERVERS", "k1:9092, [::1]:9093", "kafka_bootstrap_servers", "k1:9092,[::1]:9093", {}),
    ("RELAY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl", "kafka_security.security_protocol", "SASL_SSL", SASL),
    ("RELAY_KAFKA_SASL_MECHANISM", "scram-sha-512", "kafka_security.sasl_mechanism", "SCRAM-SHA-512", SASL),
    ("RELAY_KAFKA_SASL_USERNAME", "bob", "kafka_security.sasl_username", "bob", SASL),
    ("RELAY_KAFKA_SASL_PASSWORD", "pw", "kafka_security.sasl_password", Secret("pw"), SASL),
    ("RELAY_KAFKA_SSL_CAFILE", EXISTING_FILE, "kafka_security.ssl_cafile", EXISTING_FILE, SSL),
    ("RELAY_KAFKA_SSL_CERTFILE", EXISTING_FILE, "kafka_security.ssl_certfile", EXISTING_FILE, SSL),
    ("RELAY_KAFKA_SSL_KEYFILE", EXISTING_FILE, "kafka_security.ssl_keyfile", EXISTING_FILE, SSL_WITH_CERT),
    ("RELAY_KAFKA_SSL_KEY_PASSWORD", "kp", "kafka_security.ssl_key_password", Secret("kp"), SSL_WITH_CERT),
    ("RELAY_KAFKA_SSL_CHECK_HOSTNAME", "off", "kafka_security.ssl_check_hostname", False, {}),
    ("RELAY_KAFKA_ALLOW_PLAINTEXT_PASSWORD", "yes", "kafka_security.allow_plaintext_password", True, {}),
    ("RELAY_TOPIC_PREFIX", "acme", "topic_prefix", "acme", {}),
    ("RELAY_TOPIC_TEMPLATE", "{prefix}.{resource}.{event}", "topic_template", "{prefix}.{resource}.{event}", {}),
    ("RELAY_STATE_TOPIC", "relay.state", "state_topic", "relay.state", {}),
    ("RELAY_CONTROL_TOPIC", "relay.control", "control_topic", "relay.control", {}),
    ("RELAY_INTEGRATIONS_TOPIC", "relay.integrations", "integrations_topic", "relay.integrations", {}),
    ("RELAY_REMOVED_STATE_RETENTION", "7d", "removed_state_retention", 7 * 86400.0, {}),
    ("RELAY_TOPIC_PARTITIONS", "12", "topic_partitions", 12, {}),
    ("RELAY_TOPIC_REPLICATION_FACTOR", "3", "topic_replication_factor", 3, {}),
    ("RELAY_STATE_TOPIC_PARTITIONS", "1", "state_topic_partitions", 1, {}),
    ("RELAY_EMIT_TOMBSTONES", "yes", "emit_tombstones", True, {}),
    ("RELAY_TRANSACTIONAL_ID", "relay-eu-1", "transactional_id", "relay-eu-1", {}),
    ("RELAY_GROUP_ID", "relay-eu", "group_id", "relay-eu", {}),
    ("RELAY_GROUP_SESSION_TIMEOUT_SECONDS", "30", "group_session_timeout_seconds", 30.0, {}),
    ("RELAY_KAFKA_COMMIT_TIMEOUT_SECONDS", "5", "kafka_commit_timeout_seconds", 5.0, {}),
    ("RELAY_KAFKA_MAX_RECORD_BYTES", "2048", "kafka_max_record_bytes", 2048, {}),
    ("RELAY_HTTP_HOST", "127.0.0.1", "http_host", "127.0.0.1", {}),
    ("RELAY_HTTP_PORT", "0", "http_port", 0, {}),
    ("RELAY_SHUTDOWN_GRACE_SECONDS", "0", "shutdown_grace_seconds", 0.0, {}),
    ("RELAY_FATAL_EXIT_DELAY_SECONDS", "0", "fatal_exit_delay_seconds", 0.0, {}),
    ("RELAY_LOG_FORMAT", "console", "log_format", "console", {}),
    ("RELAY_LOG_LEVEL", "debug", "log_level", "DEBUG", {}),
    ("RELAY_KOMBO_WEBHOOK_SECRET", "whsec", "kombo_webhook_secret", Secret("whsec"), {}),
    ("RELAY_KOMBO_WEBHOOK_PATH", "/hooks/kombo-eu", "kombo_webhook_path", "/hooks/kombo-eu", {}),
    ("RELAY_KOMBO_WEBHOOK_MAX_BODY_BYTES", "65536", "kombo_webhook_max_body_bytes", 65536, {}),
    (
        "RELAY_KOMBO_WEBHOOK_MODEL_MAP",
        "ats_application_stages=ats/applications; ats_tags=",
        "kombo_webhook_model_map",
        (("ats_application_stages", ("ats/applications",)), ("ats_tags", ())),
        {},
    ),
    ("RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS", "0", "kombo_webhook_dedup_seconds", 0.0, {}),
    ("RELAY_FOLLOW_INTEGRATION_STATE", "on", "follow_integration_state", True, {}),
    ("RELAY_FOLLOW_INTEGRATIONS", "yes", "follow_integrations", True, {}),
    ("RELAY_ADMIN_TOKEN", " adm1n-t0ken\n", "admin_token", Secret("adm1n-t0ken"), {}),
]


@pytest.mark.parametrize(("name", "value", "field", "expected", "needs"), OVERRIDES, ids=[c[0] for c in OVERRIDES])
def test_every_setting_can_be_overridden_by_its_environment_variable(
    name: str, value: str, field: str, expected: object, needs: dict[str, str]
) -> None:
    config = load(**{**needs, name: value})
    assert field_value(config, field) == expected


def test_the_override_cases_cover_every_setting() -> None:
    assert {case[0] for case in OVERRIDES} == {setting.env for setting in SETTINGS}


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        (" 12 H ", 43200.0),
        ("7d", 604800.0),
        ("0.5d", 43200.0),
        ("0", 0.0),
    ],
)
def test_the_retention_of_removed_state_is_a_duration(given: str, seconds: float) -> None:
    assert load(RELAY_REMOVED_STATE_RETENTION=given).removed_state_retention == seconds


def test_removed_state_is_kept_for_ever_by_default() -> None:
    assert load().removed_state_retention is None


@pytest.mark.parametrize("given", ["-1", "7w", "d", "1.d", "nan", "inf", "7 days"])
def test_a_retention_that_is_not_a_duration_is_refused_naming_the_setting(given: str) -> None:
    assert problems_with(RELAY_REMOVED_STATE_RETENTION=given) == [
        f"RELAY_REMOVED_STATE_RETENTION: must be a duration like 90s, 30m, 12h or 7d (a bare number is seconds), got "
        f"{given!r}"
    ]


def test_a_retention_in_a_file_may_be_a_number_of_seconds(tmp_path: Path) -> None:
    path = write(tmp_path / "relay.toml", f'api_key = "{API_KEY}"\nremoved_state_retention = 3600\n')
    assert load_config(path, environ={}).removed_state_retention == 3600.0


@pytest.mark.parametrize(
    ("word", "expected"),
    [(w, True) for w in ("true", "1", "YES", "On")] + [(w, False) for w in ("False", "0", "no", "OFF")],
)
def test_flags_accept_the_usual_words(word: str, expected: bool) -> None:
    assert load(RELAY_EMIT_TOMBSTONES=word).emit_tombstones is expected


def test_an_empty_variable_counts_as_unset() -> None:
    assert load(RELAY_PAGE_SIZE="", RELAY_TOPIC_PREFIX="  ").page_size == 250
    assert problems_of({"RELAY_INTEGRATIONS": "", "RELAY_API_KEY": " "}) == [
        "RELAY_API_KEY or RELAY_API_KEY_FILE: required"
    ]
    assert load_config(environ={"RELAY_API_KEY": API_KEY, "RELAY_INTEGRATIONS": ""}).integrations == ()


def test_integrations_are_optional_since_the_registry_says_what_is_polled() -> None:
    assert load_config(environ={"RELAY_API_KEY": API_KEY}).integrations == ()
    assert "| `RELAY_INTEGRATIONS` | unset |" in settings_markdown()


def test_unknown_variables_are_ignored_and_typos_warned_about() -> None:
    assert load(RELAY_PAGESIZE="3", RELAY_SOMETHING_ELSE="x").page_size == 250
    warnings = environment_warnings({**MINIMAL, "RELAY_PAGESIZE": "3", "RELAY_SOMETHING_ELSE": "x"})
    assert warnings == ["RELAY_PAGESIZE is not a setting and is ignored (did you mean RELAY_PAGE_SIZE?)"]


# --- Files ----------------------------------------------------------------------------------------------------------

TOML = f"""
api_key = "{API_KEY}"
integrations = ["personio:a", "bamboohr:b"]
resources = "hris/employees, ats/users"
page_size = 50
poll_interval_seconds = 5
emit_tombstones = true
kafka_security_protocol = "SASL_SSL"
kafka_sasl_mechanism = "SCRAM-SHA-256"
kafka_sasl_username = "relay"
kafka_sasl_password = "{SASL_PASSWORD}"
"""

YAML = f"""
api_key: {API_KEY}
integrations: [personio:a, bamboohr:b]
resources: hris/employees, ats/users
page_size: 50
poll_interval_seconds: 5
emit_tombstones: yes
kafka_security_protocol: SASL_SSL
kafka_sasl_mechanism: SCRAM-SHA-256
kafka_sasl_username: relay
kafka_sasl_password: {SASL_PASSWORD}
"""


@pytest.mark.parametrize(("name", "text"), [("relay.toml", TOML), ("relay.yaml", YAML), ("relay.YML", YAML)])
def test_file(tmp_path: Path, name: str, text: str) -> None:
    config = load_config(write(tmp_path / name, text), environ={})
    assert config.api_key == Secret(API_KEY)
    assert config.integrations == ("personio:a", "bamboohr:b")
    assert config.resources == ("hris/employees", "ats/users")
    assert (config.page_size, config.poll_interval_seconds, config.emit_tombstones) == (50, 5.0, True)
    assert config.kafka_security.sasl_password == Secret(SASL_PASSWORD)


def test_the_file_is_named_by_relay_config_file(tmp_path: Path) -> None:
    path = write(tmp_path / "relay.toml", TOML)
    assert load_config(environ={"RELAY_CONFIG_FILE": str(path)}).page_size == 50


def test_environment_overrides_file_overrides_default(tmp_path: Path) -> None:
    path = write(tmp_path / "relay.toml", TOML)
    config = load_config(path, environ={"RELAY_PAGE_SIZE": "7", "RELAY_INTEGRATIONS": "x:1"})
    assert (config.page_size, config.integrations, config.poll_interval_seconds) == (7, ("x:1",), 5.0)
    assert config.topic_prefix == "kombo"


def test_a_secret_from_the_environment_overrides_the_files_secret_file(tmp_path: Path) -> None:
    path = write(tmp_path / "relay.toml", 'api_key_file = "/does/not/exist"\nintegrations = "a:1"\n')
    assert load_config(path, environ={"RELAY_API_KEY": "from-env"}).api_key == Secret("from-env")


def test_yaml_null_leaves_the_default(tmp_path: Path) -> None:
    path = write(tmp_path / "relay.yaml", f"api_key: k\nintegrations: {INTEGRATION}\npage_size:\n")
    assert load_config(path, environ={}).page_size == 250


def test_unknown_file_key_is_a_problem_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "relay.toml", "pagesize = 10\nRELAY_TOPIC_PREFIX = 'x'\n")
    assert problems_of(MINIMAL, path) == [
        f"pagesize (in {path}): unknown key (did you mean page_size?)",
        f"RELAY_TOPIC_PREFIX (in {path}): unknown key (did you mean topic_prefix?)",
    ]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("relay.toml", "page_size = 'abc'", "page_size (in {path}): must be an integer, got 'abc'"),
        ("relay.toml", "page_size = true", "page_size (in {path}): must be an integer, got True"),
        ("relay.toml", "topic_prefix = 5", "topic_prefix (in {path}): must be a string, not int"),
        ("relay.toml", "resources = {a = 1}", "resources (in {path}): must be a list or a comma-separated string"),
        ("relay.toml", "page_size = \n", "configuration file {path}: cannot parse it: Invalid value (at line 1"),
        ("relay.yaml", "- a\n- b\n", "configuration file {path}: must hold a mapping of keys to values, not list"),
        ("relay.json", "{}", "configuration file {path}: must be TOML (.toml) or YAML (.yaml, .yml)"),
    ],
)
def test_file_problems_name_the_key_and_the_file(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = write(tmp_path / name, text)
    [problem] = problems_of(MINIMAL, path)
    assert problem.startswith(expected.format(path=path))


def test_a_missing_file_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert problems_of(MINIMAL, path) == [f"configuration file {path}: cannot read it: No such file or directory"]


def test_a_yaml_syntax_error_does_not_quote_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "relay.yaml", f"api_key: {API_KEY}: oops\n")
    [problem] = problems_of(MINIMAL, path)
    where = f"line 1, column {len(f'api_key: {API_KEY}') + 1}"
    assert problem == f"configuration file {path}: cannot parse it: mapping values are not allowed here ({where})"
    assert API_KEY not in problem


# --- Invalid values -------------------------------------------------------------------------------------------------

INVALID: list[tuple[str, str, str]] = [
    ("RELAY_SOURCE_URL", "ftp://example.com", "must be an http:// or https:// URL, got 'ftp://example.com'"),
    ("RELAY_SOURCE_URL", "example.com/v1", "must be an http:// or https:// URL"),
    ("RELAY_SOURCE_URL", "https://example.com:port", "must be an http:// or https:// URL"),
    ("RELAY_INTEGRATIONS", "a:1,,b:2", "has an empty item"),
    ("RELAY_INTEGRATIONS", "a:1,", "has an empty item"),
    ("RELAY_INTEGRATIONS", "a:1,b:2,a:1", "lists 'a:1' more than once"),
    ("RELAY_INTEGRATIONS", "personio:a b", "has 'personio:a b', which must be an integration id"),
    ("RELAY_RESOURCES", "ATS/users", "has 'ATS/users', which must be a path like hris/employees"),
    ("RELAY_RESOURCES", "/ats/users", "has '/ats/users', which must be a path like hris/employees"),
    ("RELAY_RESOURCES", "ats/users/", "has 'ats/users/', which must be a path like hris/employees"),
    ("RELAY_RESOURCES", "ats//users", "has 'ats//users', which must be a path like hris/employees"),
    ("RELAY_RESOURCES_ATS", "hris/employees", "has 'hris/employees', which must be a path like ats/..."),
    ("RELAY_RESOURCES_ATS", "ats", "has 'ats', which must be a path like ats/..."),
    ("RELAY_RESOURCES_HRIS", "ats/users,hris/employees", "has 'ats/users', which must be a path like hris/..."),
    ("RELAY_PAGE_SIZE", "0", "must be an integer from 1 to 250, got 0"),
    ("RELAY_PAGE_SIZE", "251", "must be an integer from 1 to 250, got 251"),
    ("RELAY_PAGE_SIZE", "ten", "must be an integer, got 'ten'"),
    ("RELAY_PAGE_SIZE", "2.5", "must be an integer, got '2.5'"),
    ("RELAY_SOURCE_MAX_RETRIES", "-1", "must be an integer >= 0, got -1"),
    ("RELAY_POLL_INTERVAL_SECONDS", "0", "must be a number > 0, got 0"),
    ("RELAY_POLL_INTERVAL_SECONDS", "soon", "must be a number, got 'soon'"),
    ("RELAY_POLL_INTERVAL_SECONDS", "inf", "must be a number, got 'inf'"),
    ("RELAY_POLL_JITTER_FRACTION", "1.5", "must be a number from 0 to 1, got 1.5"),
    ("RELAY_OVERLAP_SECONDS", "-1", "must be a number >= 0, got -1"),
    ("RELAY_RECONCILE_INTERVAL_SECONDS", "-5", "must be a number >= 0, got -5"),
    ("RELAY_RECONCILE_MAX_VANISH_FRACTION", "2", "must be a number from 0 to 1, got 2"),
    ("RELAY_INITIAL_SNAPSHOT", "all", "must be one of emit, skip, got 'all'"),
    ("RELAY_EMIT_TOMBSTONES", "maybe", "must be true or false (also 1/0, yes/no, on/off), got 'maybe'"),
    ("RELAY_MAX_CONCURRENT_POLLS", "0", "must be an integer >= 1, got 0"),
    ("RELAY_KAFKA_BOOTSTRAP_SERVERS", "localhost", "has 'localhost', which must be host:port"),
    ("RELAY_KAFKA_BOOTSTRAP_SERVERS", "localhost:99999", "has 'localhost:99999', which must be host:port"),
    ("RELAY_KAFKA_SECURITY_PROTOCOL", "TLS", "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, got 'TLS'"),
    ("RELAY_KAFKA_SASL_MECHANISM", "GSSAPI", "must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, got 'GSSAPI'"),
    ("RELAY_KAFKA_SSL_CAFILE", "/no/such/ca.pem", "no such file: '/no/such/ca.pem'"),
    ("RELAY_KAFKA_SSL_CHECK_HOSTNAME", "sometimes", "must be true or false"),
    ("RELAY_TOPIC_PREFIX", "kombo/prod", "must be a Kafka topic name"),
    (
        "RELAY_TOPIC_TEMPLATE",
        "{prefix}.{tenant}",
        "has unknown placeholder {tenant}; use {prefix}, {resource}, {event}",
    ),
    ("RELAY_TOPIC_TEMPLATE", "{resource!r}.{prefix:>9}", "has unknown placeholder {resource!r}, {prefix:>9}"),
    ("RELAY_TOPIC_TEMPLATE", "{prefix", "has unbalanced braces: '{prefix'"),
    ("RELAY_STATE_TOPIC", "relay state", "must be a Kafka topic name"),
    ("RELAY_INTEGRATIONS_TOPIC", "relay/integrations", "must be a Kafka topic name"),
    ("RELAY_TOPIC_PARTITIONS", "0", "must be an integer >= 1, got 0"),
    ("RELAY_TOPIC_REPLICATION_FACTOR", "0", "must be -1 or an integer >= 1, got 0"),
    ("RELAY_STATE_TOPIC_PARTITIONS", "-1", "must be an integer >= 1, got -1"),
    ("RELAY_TRANSACTIONAL_ID", "relay\x07", "must be a Kafka transactional id"),
    ("RELAY_HTTP_PORT", "65536", "must be an integer from 0 to 65535, got 65536"),
    ("RELAY_SHUTDOWN_GRACE_SECONDS", "-1", "must be a number >= 0, got -1"),
    ("RELAY_FATAL_EXIT_DELAY_SECONDS", "3601", "must be a number from 0 to 3600, got 3601"),
    ("RELAY_LOG_FORMAT", "xml", "must be one of json, console, got 'xml'"),
    ("RELAY_LOG_LEVEL", "TRACE", "must be one of DEBUG, INFO, WARNING, ERROR, got 'TRACE'"),
]


@pytest.mark.parametrize(("name", "value", "message"), INVALID, ids=[f"{c[0]}={c[1]!r}" for c in INVALID])
def test_an_invalid_value_is_one_problem_naming_the_variable(name: str, value: str, message: str) -> None:
    [problem] = problems_with(**{name: value})
    assert problem.startswith(f"{name}: {message}")


def test_required_settings() -> None:
    assert problems_of({}) == ["RELAY_API_KEY or RELAY_API_KEY_FILE: required"]


def test_several_problems_give_one_line_each() -> None:
    problems = problems_of({"RELAY_PAGE_SIZE": "0", "RELAY_LOG_LEVEL": "LOUD", "RELAY_SOURCE_URL": "nope"})
    assert [problem.split(":")[0] for problem in problems] == [
        "RELAY_SOURCE_URL",
        "RELAY_API_KEY or RELAY_API_KEY_FILE",
        "RELAY_PAGE_SIZE",
        "RELAY_LOG_LEVEL",
    ]
    assert all("\n" not in problem for problem in problems)


RELATIONS: list[tuple[dict[str, str], list[str]]] = [
    (
        {"RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
        [
            "RELAY_KAFKA_SASL_MECHANISM: required because RELAY_KAFKA_SECURITY_PROTOCOL is SASL_SSL",
            "RELAY_KAFKA_SASL_USERNAME: required because RELAY_KAFKA_SECURITY_PROTOCOL is SASL_SSL",
            "RELAY_KAFKA_SASL_PASSWORD: required because RELAY_KAFKA_SECURITY_PROTOCOL is SASL_SSL",
        ],
    ),
    (
        {"RELAY_KAFKA_SASL_USERNAME": "relay"},
        ["RELAY_KAFKA_SASL_USERNAME: set, but RELAY_KAFKA_SECURITY_PROTOCOL is PLAINTEXT, without SASL"],
    ),
    (
        {"RELAY_KAFKA_SSL_CAFILE": EXISTING_FILE, "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", **SASL},
        ["RELAY_KAFKA_SSL_CAFILE: set, but RELAY_KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT, without SSL"],
    ),
    ({**SSL, "RELAY_KAFKA_SSL_KEYFILE": EXISTING_FILE}, ["RELAY_KAFKA_SSL_KEYFILE: needs RELAY_KAFKA_SSL_CERTFILE"]),
    (
        {"RELAY_SOURCE_BACKOFF_INITIAL_SECONDS": "10", "RELAY_SOURCE_BACKOFF_MAX_SECONDS": "5"},
        ["RELAY_SOURCE_BACKOFF_INITIAL_SECONDS: must not exceed RELAY_SOURCE_BACKOFF_MAX_SECONDS"],
    ),
    (
        {"RELAY_SOURCE_READ_TIMEOUT_SECONDS": "90", "RELAY_SOURCE_REQUEST_TIMEOUT_SECONDS": "30"},
        ["RELAY_SOURCE_REQUEST_TIMEOUT_SECONDS: must not be less than RELAY_SOURCE_READ_TIMEOUT_SECONDS"],
    ),
    (
        {"RELAY_TOPIC_TEMPLATE": "{prefix}/{resource}"},
        [
            "RELAY_TOPIC_TEMPLATE: makes 'kombo/ats.users', which is not a Kafka topic name "
            "(a-z, A-Z, 0-9, '.', '_', '-'; at most 249 characters)"
        ],
    ),
    (
        {"RELAY_STATE_TOPIC": "kombo.ats.users"},
        ["RELAY_STATE_TOPIC: kombo.ats.users is also an event topic; the state needs a topic of its own"],
    ),
    *(
        (
            {"RELAY_CONTROL_TOPIC": topic},
            [
                f"RELAY_CONTROL_TOPIC: {topic} is also an event or state topic; the control channel needs a topic "
                "of its own"
            ],
        )
        for topic in ("kombo.ats.users", "kombo.relay-state")
    ),
    *(
        (
            {"RELAY_INTEGRATIONS_TOPIC": topic},
            [
                f"RELAY_INTEGRATIONS_TOPIC: {topic} is also an event, state or control topic; the registry of "
                "integrations needs a topic of its own"
            ],
        )
        for topic in ("kombo.ats.users", "kombo.relay-state", "kombo.relay-control")
    ),
]


@pytest.mark.parametrize(("env", "expected"), RELATIONS)
def test_relations_between_settings(env: dict[str, str], expected: list[str]) -> None:
    assert problems_with(**env) == expected


PLAIN_OVER_PLAINTEXT = (
    "RELAY_KAFKA_SASL_MECHANISM: PLAIN with RELAY_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT sends the password in "
    "clear; use SASL_SSL or a SCRAM mechanism, or set RELAY_KAFKA_ALLOW_PLAINTEXT_PASSWORD=true (a local test broker "
    "only)"
)


def test_sasl_plain_over_plaintext_is_refused_unless_allowed() -> None:
    plain_over_plaintext = {
        **SASL,
        "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RELAY_KAFKA_SASL_MECHANISM": "PLAIN",
    }
    assert problems_with(**plain_over_plaintext) == [PLAIN_OVER_PLAINTEXT]
    allowed = load(**plain_over_plaintext, RELAY_KAFKA_ALLOW_PLAINTEXT_PASSWORD="true")
    assert allowed.kafka_client_kwargs()["sasl_plain_password"] == SASL_PASSWORD


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_SSL", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_PLAINTEXT", "SCRAM-SHA-512")],
)
def test_sasl_that_does_not_send_the_password_in_clear_needs_no_allowing(protocol: str, mechanism: str) -> None:
    config = load(**{**SASL, "RELAY_KAFKA_SECURITY_PROTOCOL": protocol, "RELAY_KAFKA_SASL_MECHANISM": mechanism})
    assert config.kafka_security.allow_plaintext_password is False


def test_a_derived_state_topic_is_checked_too() -> None:
    problems = problems_with(RELAY_TOPIC_PREFIX="p" * 240)
    assert any(problem.startswith("RELAY_STATE_TOPIC: 'ppp") for problem in problems)
    assert any(problem.startswith("RELAY_INTEGRATIONS_TOPIC: 'ppp") for problem in problems)


def test_a_command_that_talks_only_to_kafka_needs_no_api_key_and_no_integrations(tmp_path: Path) -> None:
    config = load_config(environ={}, kafka_only=True)
    assert (config.integrations, config.api_key.reveal()) == ((), "")
    assert config.secret_values() == ("",)  # too short for the log filter to mask anything with it
    # Given, they are still read, and still checked: from the file as from the environment.
    given = load_config(write(tmp_path / "relay.toml", 'integrations = ["a:1"]\n'), {}, kafka_only=True)
    assert given.integrations == ("a:1",)
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"RELAY_INTEGRATIONS": "a:1,a:1"}, kafka_only=True)
    assert caught.value.problems == ["RELAY_INTEGRATIONS: lists 'a:1' more than once"]


def test_the_resources_of_each_category_have_their_event_topics() -> None:
    config = load(RELAY_RESOURCES_ATS="ats/users,ats/jobs", RELAY_RESOURCES_HRIS="hris/employees")
    assert config.all_resources() == ("ats/users", "ats/jobs", "hris/employees")
    assert "kombo.hris.employees" in config.event_topics()
    assert load().all_resources() == ("ats/users",)


# --- Secrets --------------------------------------------------------------------------------------------------------


def test_secret_hides_its_value() -> None:
    secret = Secret(API_KEY)
    assert repr(secret) == str(secret) == f"{secret}" == MASK
    assert secret.reveal() == API_KEY
    assert secret == Secret(API_KEY) != Secret("other")
    assert hash(secret) == hash(Secret(API_KEY))
    assert copy.deepcopy(secret) == secret
    with pytest.raises(AttributeError):
        secret._value = "x"


def test_api_key_file_is_read_and_stripped(tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", f"  {API_KEY}\n")
    config = load_config(environ={"RELAY_API_KEY_FILE": str(key_file), "RELAY_INTEGRATIONS": INTEGRATION})
    assert config.api_key.reveal() == API_KEY


def test_an_unreadable_api_key_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    problems = problems_of({"RELAY_API_KEY_FILE": str(missing), "RELAY_INTEGRATIONS": INTEGRATION})
    assert problems == [f"RELAY_API_KEY_FILE: cannot read {missing}: No such file or directory"]


def test_an_empty_or_binary_api_key_file_is_a_problem_that_quotes_nothing(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty", "\n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + API_KEY.encode())
    assert problems_of({"RELAY_API_KEY_FILE": str(empty), "RELAY_INTEGRATIONS": "a:1"}) == [
        f"RELAY_API_KEY_FILE: {empty} is empty"
    ]
    [problem] = problems_of({"RELAY_API_KEY_FILE": str(binary), "RELAY_INTEGRATIONS": "a:1"})
    assert problem == f"RELAY_API_KEY_FILE: {binary} is not UTF-8 text"


def test_api_key_and_api_key_file_together_is_a_problem(tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", "k")
    problems = problems_with(RELAY_API_KEY_FILE=str(key_file))
    assert problems == ["RELAY_API_KEY and RELAY_API_KEY_FILE: set only one of them"]


def secretive_config() -> Config:
    return load(**{**SASL, "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})


def test_secrets_are_masked_in_repr_masked_and_asdict() -> None:
    config = secretive_config()
    masked = config.masked()
    assert masked["api_key"] == MASK
    assert masked["kafka_security"]["sasl_password"] == MASK  # type: ignore[index]
    for text in (repr(config), str(config), orjson.dumps(masked).decode(), str(dataclasses.asdict(config))):
        assert API_KEY not in text
        assert SASL_PASSWORD not in text


def test_secret_values_lists_every_secret_for_the_log_filter() -> None:
    assert set(secretive_config().secret_values()) == {API_KEY, SASL_PASSWORD}


def test_secrets_never_appear_in_problems(tmp_path: Path) -> None:
    yaml_file = write(tmp_path / "relay.yaml", "api_key: 123456789123\nkafka_sasl_password: [a, b]\n")
    cases = [
        problems_with(**SASL, RELAY_PAGE_SIZE="0", RELAY_SOURCE_URL=f"https://user:{API_KEY}@example.com"),
        problems_with(RELAY_API_KEY_FILE=str(write(tmp_path / "key", API_KEY))),
        problems_of({"RELAY_INTEGRATIONS": "a:1"}, yaml_file),
    ]
    for problems in cases:
        text = "\n".join(problems)
        assert problems
        assert API_KEY not in text
        assert SASL_PASSWORD not in text
        assert "123456789123" not in text


SECRET_SETTINGS = [each for each in SETTINGS if isinstance(each.kind, SecretValue)]


@pytest.mark.parametrize("each", SECRET_SETTINGS, ids=[each.env for each in SECRET_SETTINGS])
@pytest.mark.parametrize("padding", ["\n", "\r\n", " \t", "\u00a0"])
def test_every_secret_is_stripped_of_surrounding_whitespace(each: Setting, padding: str) -> None:
    # A key pasted with its newline made aiohttp refuse every request ("Forbidden control character").
    needs = {**SASL, **SSL_WITH_CERT, "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    config = load(**{**needs, each.env: f"{padding}{SASL_PASSWORD}{padding}"})
    secret = field_value(config, each.field)
    assert isinstance(secret, Secret)
    assert secret.reveal() == SASL_PASSWORD


@pytest.mark.parametrize("each", SECRET_SETTINGS, ids=[each.env for each in SECRET_SETTINGS])
@pytest.mark.parametrize("control", ["\n", "\x00", "\x1b", "\x7f", "\x85"])
def test_a_secret_holding_a_control_character_is_refused_without_showing_it(each: Setting, control: str) -> None:
    needs = {**SASL, **SSL_WITH_CERT, "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    value = f"{API_KEY}{control}{SASL_PASSWORD}"
    problems = problems_with(**{**needs, each.env: value})
    assert problems == [f"{each.env}: must not contain control characters (a line break, a tab, ...)"]
    assert API_KEY not in repr(problems)
    assert SASL_PASSWORD not in repr(problems)


def test_a_secret_from_the_configuration_file_is_stripped_and_checked_too(tmp_path: Path) -> None:
    stripped = write(tmp_path / "stripped.toml", f'api_key = "{API_KEY}\\n"\nintegrations = "a:1"\n')
    assert load_config(stripped, environ={}).api_key.reveal() == API_KEY
    controlled = write(tmp_path / "controlled.toml", f'api_key = "{API_KEY}\\ttail"\nintegrations = "a:1"\n')
    assert problems_of({}, controlled) == [
        f"api_key (in {controlled}): must not contain control characters (a line break, a tab, ...)"
    ]


def test_a_secret_file_holding_a_control_character_is_refused(tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", f"{API_KEY}\n{API_KEY}\n")
    assert problems_of({"RELAY_API_KEY_FILE": str(key_file), "RELAY_INTEGRATIONS": "a:1"}) == [
        "RELAY_API_KEY_FILE: must not contain control characters (a line break, a tab, ...)"
    ]


def warnings_of(environ: Mapping[str, str], path: Path | None = None) -> list[str]:
    warnings: list[str] = []
    load_config(path, environ=environ, warnings=warnings)
    return warnings


SHORT_SECRET_WARNING = (
    "a secret of fewer than 4 characters is neither safe nor masked in the logs; use a long random one"
)


@pytest.mark.parametrize("each", SECRET_SETTINGS, ids=[each.env for each in SECRET_SETTINGS])
def test_a_secret_too_short_to_mask_is_warned_about_naming_the_key_not_the_value(each: Setting) -> None:
    needs = {**MINIMAL, **SASL, **SSL_WITH_CERT, "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    warnings = warnings_of({**needs, each.env: " x7q\n"})
    assert warnings == [f"{each.env}: {SHORT_SECRET_WARNING}"]
    assert "x7q" not in repr(warnings)
    assert warnings_of({**needs, each.env: "x7qz"}) == []


def test_a_short_secret_from_a_file_or_the_configuration_file_is_warned_about(tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", "abc\n")
    key_file.chmod(0o600)
    assert warnings_of({"RELAY_API_KEY_FILE": str(key_file), "RELAY_INTEGRATIONS": "a:1"}) == [
        f"RELAY_API_KEY_FILE: {SHORT_SECRET_WARNING}"
    ]
    toml = write(tmp_path / "relay.toml", 'api_key = "abc"\nintegrations = "a:1"\n')
    assert warnings_of({}, toml) == [f"api_key (in {toml}): {SHORT_SECRET_WARNING}"]


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o777])
def test_a_secret_file_every_user_may_read_is_warned_about(tmp_path: Path, mode: int) -> None:
    key_file = write(tmp_path / "key", API_KEY)
    key_file.chmod(mode)
    warnings = warnings_of({"RELAY_API_KEY_FILE": str(key_file), "RELAY_INTEGRATIONS": "a:1"})
    assert warnings == [
        f"RELAY_API_KEY_FILE: {key_file} is readable by every user (mode {mode:04o}); make it readable by the relay "
        "only (chmod 0400, or defaultMode: 0400 on a Kubernetes Secret volume)"
    ]
    assert API_KEY not in repr(warnings)


@pytest.mark.parametrize("mode", [0o400, 0o600, 0o640, 0o440])
def test_a_secret_file_others_may_not_read_is_not_warned_about(tmp_path: Path, mode: int) -> None:
    key_file = write(tmp_path / "key", API_KEY)
    key_file.chmod(mode)
    assert warnings_of({"RELAY_API_KEY_FILE": str(key_file), "RELAY_INTEGRATIONS": "a:1"}) == []


def test_the_mode_warned_about_is_the_files_not_its_symlinks(tmp_path: Path) -> None:
    # A Kubernetes Secret volume's files are symlinks (0777 themselves) into a ..data directory.
    key_file = write(tmp_path / "key", API_KEY)
    key_file.chmod(0o400)
    link = tmp_path / "link"
    link.symlink_to(key_file)
    assert warnings_of({"RELAY_API_KEY_FILE": str(link), "RELAY_INTEGRATIONS": "a:1"}) == []


# --- Derived values -------------------------------------------------------------------------------------------------


def test_transactional_id_and_group_id_are_stable() -> None:
    # Pinned, recipe and value: a release that changed them would neither fence the previous release's producers nor
    # join its replicas' group during a rolling update. (Since the fleet, they no longer hash the integrations and
    # resources, which change at run time: the one change of value, made on purpose and documented.)
    config = load(RELAY_INTEGRATIONS="personio:a,bamboohr:b", RELAY_RESOURCES="ats/users,hris/employees")
    identity = ["https://api.kombo.dev/v1", "kombo", "kombo.relay-state"]
    digest = hashlib.sha256(json.dumps(identity, separators=(",", ":")).encode()).hexdigest()
    assert config.transactional_id == f"change-relay-{digest[:16]}" == "change-relay-243e2d9d495b65e0"
    assert config.group_id == config.transactional_id
    assert load().transactional_id == load().transactional_id


def test_transactional_id_does_not_depend_on_the_integrations_or_resources() -> None:
    one = load(RELAY_INTEGRATIONS="personio:a,bamboohr:b", RELAY_RESOURCES="ats/users,hris/employees")
    other = load(RELAY_INTEGRATIONS="personio:other", RELAY_RESOURCES="hris/employees")
    assert one.transactional_id == other.transactional_id
    assert one.group_id == other.group_id


@pytest.mark.parametrize(
    "change",
    [
        {"RELAY_SOURCE_URL": "https://eu.example.com"},
        {"RELAY_TOPIC_PREFIX": "acme"},
        {"RELAY_STATE_TOPIC": "kombo.state"},
    ],
)
def test_transactional_id_differs_for_relays_publishing_different_data(change: dict[str, str]) -> None:
    assert load(**change).transactional_id != load().transactional_id
    assert load(**change).group_id != load().group_id


def test_integrations_topic_default_follows_the_prefix() -> None:
    assert load(RELAY_TOPIC_PREFIX="acme").integrations_topic == "acme.relay-integrations"


def test_control_topic_default_follows_the_prefix() -> None:
    assert load(RELAY_TOPIC_PREFIX="acme").control_topic == "acme.relay-control"


def test_state_topic_default_follows_the_prefix() -> None:
    assert load(RELAY_TOPIC_PREFIX="acme").state_topic == "acme.relay-state"


def test_topic_for_without_event() -> None:
    config = load(RELAY_RESOURCES="hris/employees,ats/users")
    assert config.topic_for("hris/employees", "created") == "kombo.hris.employees"
    assert config.topic_for("hris/employees", "deleted") == "kombo.hris.employees"
    assert config.event_topics() == ("kombo.hris.employees", "kombo.ats.users")


def test_topic_for_with_event() -> None:
    config = load(RELAY_TOPIC_TEMPLATE="{prefix}-{event}.{resource}", RELAY_TOPIC_PREFIX="acme")
    assert config.topic_for("ats/users", "updated") == "acme-updated.ats.users"
    assert config.event_topics() == ("acme-created.ats.users", "acme-updated.ats.users", "acme-deleted.ats.users")


def test_topic_for_refuses_an_unknown_event() -> None:
    with pytest.raises(ValueError, match="unknown event type 'moved'"):
        load().topic_for("ats/users", "moved")


# --- Kafka client arguments -----------------------------------------------------------------------------------------


def test_kafka_client_kwargs_plaintext() -> None:
    kwargs = load(RELAY_KAFKA_BOOTSTRAP_SERVERS="k1:9092,k2:9092").kafka_client_kwargs()
    assert kwargs == {"bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}


def test_kafka_client_kwargs_sasl_reveal_the_password() -> None:
    kwargs = load(**SASL).kafka_client_kwargs()
    assert kwargs == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "relay",
        "sasl_plain_password": SASL_PASSWORD,
    }


def test_kafka_client_kwargs_ssl_build_a_context() -> None:
    kwargs = load(**SSL, RELAY_KAFKA_SSL_CHECK_HOSTNAME="false").kafka_client_kwargs()
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is False
    assert kwargs["security_protocol"] == "SSL"


def test_the_kafka_tls_context_refuses_tls_older_than_1_2() -> None:
    context = load(**SSL).kafka_security.ssl_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


# --- Documentation --------------------------------------------------------------------------------------------------


def test_settings_markdown_has_a_row_per_setting() -> None:
    lines = settings_markdown().splitlines()
    assert lines[:2] == ["| Name | Default | Meaning |", "| --- | --- | --- |"]
    assert len(lines) == 2 + len(SETTINGS)
    assert "| `RELAY_API_KEY` / `RELAY_API_KEY_FILE` | required |" in settings_markdown()
    assert "| `RELAY_PAGE_SIZE` | `250` |" in settings_markdown()


def test_the_readme_settings_table_is_the_generated_one() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Configuration") :]
    start = section.index("| Name | Default | Meaning |")
    table = section[start : section.index("\n\n", start) + 1]
    assert table == settings_markdown(), "README.md's settings table is out of date: paste settings_markdown() in"


def test_settings_help_names_every_variable() -> None:
    text = settings_help()
    assert all(name in text for setting in SETTINGS for name in setting.env_names)


# --- relay check-config ---------------------------------------------------------------------------------------------


def set_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_check_config_prints_the_masked_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_env(monkeypatch, {**MINIMAL, **SASL})
    assert relay.cli.main(["check-config"]) == 0
    out, err = capsys.readouterr()
    printed = orjson.loads(out)
    assert printed["api_key"] == MASK
    assert printed["integrations"] == [INTEGRATION]
    assert printed == load(**SASL).masked()
    assert API_KEY not in out + err
    assert SASL_PASSWORD not in out + err


def test_check_config_reads_the_config_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "relay.toml", TOML)
    assert relay.cli.main(["check-config", "--config", str(path)]) == 0
    assert orjson.loads(capsys.readouterr().out)["page_size"] == 50


def test_check_config_reports_every_problem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_env(monkeypatch, {"RELAY_API_KEY": API_KEY, "RELAY_PAGE_SIZE": "0", "RELAY_PAGESIZE": "3"})
    assert relay.cli.main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "relay: warning: RELAY_PAGESIZE is not a setting and is ignored (did you mean RELAY_PAGE_SIZE?)",
        "relay: invalid configuration",
        "  RELAY_PAGE_SIZE: must be an integer from 1 to 250, got 0",
    ]
    assert API_KEY not in err


def test_check_config_prints_the_warnings_of_an_accepted_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key_file = write(tmp_path / "key", API_KEY)
    key_file.chmod(0o644)
    set_env(monkeypatch, {"RELAY_API_KEY_FILE": str(key_file), "RELAY_INTEGRATIONS": "a:1"})
    set_env(monkeypatch, {"RELAY_KOMBO_WEBHOOK_SECRET": "abc"})
    assert relay.cli.main(["check-config"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"relay: warning: RELAY_API_KEY_FILE: {key_file} is readable by every user (mode 0644); make it readable by "
        "the relay only (chmod 0400, or defaultMode: 0400 on a Kubernetes Secret volume)",
        f"relay: warning: RELAY_KOMBO_WEBHOOK_SECRET: {SHORT_SECRET_WARNING}",
    ]


def test_check_config_help_explains_the_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        relay.cli.main(["check-config", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--config PATH" in out
    assert "Where settings come from" in out
    assert "RELAY_KAFKA_SSL_KEY_PASSWORD / RELAY_KAFKA_SSL_KEY_PASSWORD_FILE" in out

"""The relay's configuration: the frozen ``Config`` (with ``KafkaSecurity``) whose fields declare every setting once
(parser, default, meaning), ``load_config()`` that builds it, and the relations between settings checked after each
is valid on its own. The parser kinds are in ``relay.config_kinds``, the declaring and reading machinery in
``relay.settings``, the rendering for people in ``relay.config_docs``, the ``check-config`` command in
``relay.check_config``."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

import orjson

from relay.config_docs import add_config_argument, help_text, markdown_table, print_problems
from relay.config_kinds import (
    Choice,
    Duration,
    ExistingFile,
    Flag,
    HttpUrl,
    Integer,
    Items,
    Joined,
    ModelMapEntries,
    ModelMapOverrides,
    Number,
    SecretValue,
    Text,
    TopicTemplate,
    is_integration_id,
    is_resource_path,
    shown,
)
from relay.errors import ConfigError
from relay.kinds import CHANGE_KINDS, ChangeKind
from relay.secret import MASK, Secret
from relay.settings import (
    ENV_PREFIX,
    REQUIRED,
    Derived,
    Setting,
    assemble,
    did_you_mean,
    group,
    read_settings,
    setting,
    settings_class,
    settings_of,
)

if TYPE_CHECKING:
    import ssl

__all__ = [
    "EVENT_TYPES",
    "MASK",
    "REQUIRED",
    "SETTINGS",
    "Config",
    "ConfigError",
    "Derived",
    "KafkaSecurity",
    "Secret",
    "Setting",
    "add_config_argument",
    "environment_warnings",
    "load_config",
    "print_problems",
    "settings_help",
    "settings_markdown",
]

InitialSnapshot = Literal["emit", "skip"]
LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
EventType = ChangeKind
EVENT_TYPES: Final[tuple[EventType, ...]] = CHANGE_KINDS
CONFIG_FILE_ENV: Final = "RELAY_CONFIG_FILE"


# --- What the settings accept and derive -------------------------------------------------------------------------


def _derive_state_topic(values: Mapping[str, Any]) -> str:
    return f"{values['topic_prefix']}.relay-state"


def _derive_control_topic(values: Mapping[str, Any]) -> str:
    return f"{values['topic_prefix']}.relay-control"


def _derive_integrations_topic(values: Mapping[str, Any]) -> str:
    return f"{values['topic_prefix']}.relay-integrations"


def relay_identity(source_url: str, topic_prefix: str, state_topic: str) -> str:
    """The default transactional id and group id of the relay publishing from ``source_url`` to these topics."""
    identity = [source_url, topic_prefix, state_topic]
    return "change-relay-" + hashlib.sha256(orjson.dumps(identity)).hexdigest()[:16]


def _relay_identity(values: Mapping[str, Any]) -> str:
    # Kafka fences a producer when another one starts with the same transactional id, which is what stops a zombie
    # (an old instance still running after its replacement started) from writing; and replicas of one relay find
    # each other by their consumer group. So both must be the same on every restart and on every replica, with no
    # operator remembering to set them, and different for two relays that publish different data (another source,
    # other topics). They do not depend on the integrations polled, which change at run time; JSON, so that no two
    # different identities encode alike.
    return relay_identity(values["source_url"], values["topic_prefix"], values["state_topic"])


def _derive_transactional_id(values: Mapping[str, Any]) -> str:
    return _relay_identity(values)


def _derive_group_id(values: Mapping[str, Any]) -> str:
    return _relay_identity(values)


_RESERVED_PATHS: Final = ("/metrics", "/livez", "/readyz", "/status")


def _is_webhook_path(text: str) -> bool:
    # /admin and below are the admin HTTP API's (relay.admin), whether it is on or not, so that turning it on never
    # shadows the webhook endpoint.
    reserved = text in _RESERVED_PATHS or text == "/admin" or text.startswith("/admin/")
    return re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", text) is not None and not reserved


def _is_host_port(text: str) -> bool:
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})", text)
    return match is not None and 1 <= int(match[2]) <= 65535


def _is_topic_name(text: str) -> bool:
    return re.fullmatch(r"[a-zA-Z0-9._-]{1,249}", text) is not None and text not in (".", "..")


def _category_resource(category: str) -> Text:
    # An ATS integration has no HRIS endpoints: a resource of another category would only ever fail its polls.
    def accepts(text: str) -> bool:
        return is_resource_path(text) and text.startswith(f"{category}/")

    return Text(f"a path like {category}/... (a-z, 0-9, _, - between slashes)", accepts)


_TOPIC_NAME: Final = Text("a Kafka topic name (a-z, A-Z, 0-9, '.', '_', '-'; at most 249 characters)", _is_topic_name)
_SECONDS: Final = Number(0, exclusive=True)
_FRACTION: Final = Number(0, 1)


# --- The configuration ----------------------------------------------------------------------------------------------


@settings_class
class KafkaSecurity:
    """How the relay authenticates to Kafka and encrypts the connection. Each field declares its setting (keys
    ``kafka_*``): its parser, default and meaning."""

    security_protocol: SecurityProtocol = setting(
        Choice(get_args(SecurityProtocol)), "PLAINTEXT", "How to connect to Kafka"
    )
    sasl_mechanism: SaslMechanism | None = setting(
        Choice(get_args(SaslMechanism)), None, "SASL mechanism; required with SASL_*"
    )
    sasl_username: str | None = setting(Text("a user name"), None, "SASL user name; required with SASL_*")
    sasl_password: Secret | None = setting(SecretValue(), None, "SASL password; required with SASL_*")
    ssl_cafile: str | None = setting(
        ExistingFile(), None, "CA certificates to verify the brokers with (default: the system's)"
    )
    ssl_certfile: str | None = setting(ExistingFile(), None, "Client certificate, for brokers that require one")
    ssl_keyfile: str | None = setting(
        ExistingFile(), None, "Private key of the client certificate, if not in the certificate file"
    )
    ssl_key_password: Secret | None = setting(SecretValue(), None, "Password of the client certificate's private key")
    ssl_check_hostname: bool = setting(Flag(), True, "Check that each broker's certificate is for its host name")
    allow_plaintext_password: bool = setting(
        Flag(),
        False,
        "Lets SASL PLAIN send its password over a plaintext listener (SASL_PLAINTEXT); for a local test broker only",
    )

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def aiokafka_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer``, secrets revealed."""
        kwargs: dict[str, object] = {"security_protocol": self.security_protocol}
        if self.uses_sasl:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = _revealed(self.sasl_password)
        if self.uses_ssl:
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        # Imported here so that `relay check-config` and the unit tests of everything else need no Kafka client.
        import ssl

        from aiokafka.helpers import create_ssl_context

        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            password=_revealed(self.ssl_key_password),
        )
        context.check_hostname = self.ssl_check_hostname
        # Said here, not left to the defaults of Python, OpenSSL and aiokafka, which have allowed TLS 1.0 and 1.1.
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@settings_class
class Config:
    """The whole configuration of one relay, validated. Build it with ``load_config()``.

    Each field declares its setting, once: the parser of its value, its default and what it means. The variable is
    the field's name uppercased with ``RELAY_`` (``page_size``: ``RELAY_PAGE_SIZE``), the file key the name itself.
    ``SETTINGS`` lists them, ``relay check-config --help`` prints them all and the README's table is made from them.
    """

    # The source
    source_url: str = setting(HttpUrl(), "https://api.kombo.dev/v1", "Base URL of the Kombo-style API")
    api_key: Secret = setting(SecretValue(), REQUIRED, "API key for the source, sent as a Bearer token")
    integrations: tuple[str, ...] = setting(
        Items(Text("an integration id (no spaces or commas)", is_integration_id)),
        (),
        "Integrations relay run adds to the registry of integrations (RELAY_INTEGRATIONS_TOPIC) at start if it has "
        "never heard of them, by id, like personio:8d1hpPsDu6Q5K1UnBDMXiUeGV; the registry, not this list, says what "
        "is polled (relay integrations add, remove, pause, resume change it while the relay runs), and one removed "
        "there is not added back",
    )
    resources: tuple[str, ...] = setting(
        Items(Text("a path like hris/employees (a-z, 0-9, _, - between slashes)", is_resource_path)),
        ("ats/users",),
        "List endpoints polled for every integration",
    )
    resources_ats: tuple[str, ...] | None = setting(
        Items(_category_resource("ats")),
        None,
        "List endpoints polled for an ATS integration of the registry that names none of its own; unset: "
        "RELAY_RESOURCES",
    )
    resources_hris: tuple[str, ...] | None = setting(
        Items(_category_resource("hris")),
        None,
        "List endpoints polled for an HRIS integration of the registry that names none of its own; unset: "
        "RELAY_RESOURCES",
    )
    page_size: int = setting(Integer(1, 250), 250, "Records asked for per page")
    source_connect_timeout_seconds: float = setting(_SECONDS, 10.0, "Timeout for connecting to the source")
    source_read_timeout_seconds: float = setting(_SECONDS, 60.0, "Timeout for reading a response from the source")
    source_request_timeout_seconds: float = setting(
        _SECONDS,
        120.0,
        "Deadline of a whole request to the source (connecting, headers and the whole body), so that a body that "
        "trickles in still ends; at least RELAY_SOURCE_READ_TIMEOUT_SECONDS",
    )
    source_max_retries: int = setting(Integer(0), 6, "Retries of a failing request (rate limit, 5xx, timeout)")
    source_backoff_initial_seconds: float = setting(_SECONDS, 0.5, "First delay before retrying a failed request")
    source_backoff_max_seconds: float = setting(_SECONDS, 60.0, "Longest delay between two retries of a request")
    source_ratelimit_min_remaining: int = setting(
        Integer(0), 5, "Slow down when the source's remaining request budget is at or below this"
    )
    source_max_response_bytes: int = setting(
        Integer(1),
        33554432,
        "A larger response from the source fails its poll (RELAY.RESPONSE_TOO_LARGE); 32 MiB is far above a page "
        "of 250 large records",
    )
    integration_backoff_max_seconds: float = setting(
        _SECONDS, 900.0, "Longest pause of an integration the source cannot serve (the others keep going)"
    )
    # Polling
    poll_interval_seconds: float = setting(_SECONDS, 60.0, "Time between two polls of an integration's resource")
    poll_jitter_fraction: float = setting(
        _FRACTION, 0.1, "Random spread of the poll interval, so that polls do not align"
    )
    overlap_seconds: float = setting(
        Number(0),
        30.0,
        "Each poll starts this long before the last watermark, to catch changes that became visible late",
    )
    initial_snapshot: InitialSnapshot = setting(
        Choice(get_args(InitialSnapshot)),
        "emit",
        "First poll of an integration: emit a created event per existing record, or skip them",
    )
    reconcile_interval_seconds: float = setting(
        Number(0), 86400.0, "How often a full listing finds deleted records; 0 disables it"
    )
    reconcile_max_vanish_fraction: float = setting(
        _FRACTION, 0.5, "A reconciliation that would delete more than this fraction of the records is refused"
    )
    max_concurrent_polls: int = setting(Integer(1), 8, "Polls running at once, over all integrations")
    max_pages_per_poll: int = setting(
        Integer(1),
        100_000,
        "Pages one poll may fetch before it stops with an error (a source whose cursor never ends)",
    )
    # Kafka
    kafka_bootstrap_servers: str = setting(
        Joined(Items(Text("host:port", _is_host_port))), "localhost:9092", "Kafka brokers to connect to"
    )
    kafka_security: KafkaSecurity = group("kafka_")
    topic_prefix: str = setting(_TOPIC_NAME, "kombo", "Prefix of the topic names")
    topic_template: str = setting(
        TopicTemplate(),
        "{prefix}.{resource}",
        "Topic of an event; {resource} has / replaced by ., {event} is created, updated or deleted",
    )
    state_topic: str = setting(
        _TOPIC_NAME,
        Derived("{topic_prefix}.relay-state", _derive_state_topic),
        "Compacted topic where the relay keeps its own progress",
    )
    control_topic: str = setting(
        _TOPIC_NAME,
        Derived("{topic_prefix}.relay-control", _derive_control_topic),
        "Topic that carries webhook triggers to the replica owning the integration; partitioned like the state topic",
    )
    integrations_topic: str = setting(
        _TOPIC_NAME,
        Derived("{topic_prefix}.relay-integrations", _derive_integrations_topic),
        "Compacted topic of the registry of integrations (relay integrations), keyed by integration id; created "
        "with the partitions of the state topic",
    )
    removed_state_retention: float | None = setting(
        Duration(),
        None,
        "How long the state of an integration removed from the registry is kept; then the owner of its state "
        "partition writes tombstones for it, and adding it again takes a new snapshot (RELAY_INITIAL_SNAPSHOT). "
        "Unset: kept for ever, so adding it again resumes where it was",
    )
    topic_partitions: int = setting(Integer(1), 6, "Partitions of the event topics the relay creates")
    topic_replication_factor: int = setting(
        Integer(1, also=(-1,)), -1, "Replication factor of the topics the relay creates; -1 is the broker's default"
    )
    state_topic_partitions: int = setting(
        Integer(1),
        6,
        "Partitions of the state topic, if the relay creates it, and the number it places state over (by "
        "integration); keep it once state is written (checked at start)",
    )
    emit_tombstones: bool = setting(
        Flag(),
        False,
        "After a deleted event, also publish a null value for the key, so that compaction can drop the record",
    )
    transactional_id: str = setting(
        Text("a Kafka transactional id", str.isprintable),
        Derived("change-relay-<hash of source, topic prefix, state topic>", _derive_transactional_id),
        "Kafka transactional id: stable across restarts, different for relays publishing different data",
    )
    group_id: str = setting(
        Text("a Kafka consumer group id", str.isprintable),
        Derived("change-relay-<hash of source, topic prefix, state topic>", _derive_group_id),
        "Consumer group the replicas of one relay join; Kafka assigns each the state-topic partitions it polls",
    )
    group_session_timeout_seconds: float = setting(
        Number(6, 1800),
        10.0,
        "A replica not heard from for this long loses its partitions to the others",
    )
    kafka_commit_timeout_seconds: float = setting(
        Number(0, 600, exclusive=True),
        60.0,
        "Longest wait for Kafka to commit a page's transaction; then it is aborted and retried",
    )
    kafka_max_record_bytes: int = setting(
        Integer(1024),
        1_000_000,
        "Largest record (key and value) the relay writes; a larger one fails its pair's poll. At most the topics' "
        "max.message.bytes",
    )
    # The process
    http_host: str = setting(
        Text("a host name or address"),
        "0.0.0.0",  # noqa: S104 -- in a container, health and metrics must be reachable from outside it
        "Address of the health and metrics HTTP server",
    )
    http_port: int = setting(Integer(0, 65535), 8080, "Port of the health and metrics server; 0 picks a free one")
    shutdown_grace_seconds: float = setting(
        Number(0),
        20.0,
        "On SIGTERM (and when a replica hands a partition over), time left to the pages being committed before the "
        "relay exits; a poll with none, waiting on the source, is cancelled at once",
    )
    fatal_exit_delay_seconds: float = setting(
        Number(0, 3600),
        60.0,
        "After an error only an operator can fix (API key refused, fenced, Kafka authorization), how long the relay "
        "keeps serving /metrics and /status, not ready, before it exits, so that Prometheus records why; "
        "SIGTERM ends the wait",
    )
    log_format: LogFormat = setting(Choice(get_args(LogFormat)), "json", "json for log collectors, console for people")
    log_level: LogLevel = setting(Choice(get_args(LogLevel)), "INFO", "Least severe level of the messages logged")
    # Kombo webhooks
    kombo_webhook_secret: Secret | None = setting(
        SecretValue(),
        None,
        "Secret Kombo signs its webhooks with (X-Kombo-Signature); unset turns the webhook endpoint off",
    )
    kombo_webhook_path: str = setting(
        Text(
            "a URL path like /webhooks/kombo (not /metrics, /livez, /readyz, /status, nor under /admin)",
            _is_webhook_path,
        ),
        "/webhooks/kombo",
        "Path of the webhook endpoint, on the HTTP server of RELAY_HTTP_PORT",
    )
    kombo_webhook_max_body_bytes: int = setting(Integer(1), 1048576, "Larger webhook bodies are refused with 413")
    kombo_webhook_model_map: ModelMapEntries | None = setting(
        ModelMapOverrides(),
        None,
        "Replaces entries of the map from Kombo's changed models to the resources they affect (README: Webhooks)",
    )
    kombo_webhook_dedup_seconds: float = setting(
        Number(0), 3600.0, "A webhook whose id was seen within this time is acted on once; 0 turns this off"
    )
    follow_integration_state: bool = setting(
        Flag(),
        False,
        "Pause polling an integration on Kombo's integration-state-changed (INACTIVE, INVALID) and "
        "integration-deleted webhooks; resume on ACTIVE",
    )
    follow_integrations: bool = setting(
        Flag(),
        False,
        "Kombo's integration webhooks change the registry of integrations (RELAY_INTEGRATIONS_TOPIC): "
        "integration-created adds (ATS, HRIS), integration-deleted removes, integration-state-changed pauses "
        "(INACTIVE, INVALID) and resumes (ACTIVE); a webhook older than the entry's last change changes nothing "
        "(README: Webhooks)",
    )
    # The admin HTTP API
    admin_token: Secret | None = setting(
        SecretValue(),
        None,
        "Bearer token of the admin HTTP API (POST /admin/..., README: Admin HTTP API) on the server of "
        "RELAY_HTTP_PORT; unset turns the API off (its paths answer 404)",
    )

    def topic_for(self, resource: str, event: str) -> str:
        """The topic an ``event`` (created, updated, deleted) about a record of ``resource`` is published to."""
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event!r}, expected one of {', '.join(EVENT_TYPES)}")
        return self.topic_template.format(prefix=self.topic_prefix, resource=resource.replace("/", "."), event=event)

    def all_resources(self) -> tuple[str, ...]:
        """Every resource an integration is polled for unless it names its own: RELAY_RESOURCES and those of each
        category, each once, in order."""
        by_category = (*(self.resources_ats or ()), *(self.resources_hris or ()))
        return tuple(dict.fromkeys((*self.resources, *by_category)))

    def event_topics(self) -> tuple[str, ...]:
        """Every topic an event can be published to, each once, in order (not the state topic)."""
        return tuple(dict.fromkeys(self.topic_for(r, e) for r in self.all_resources() for e in EVENT_TYPES))

    def kafka_client_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer``: brokers and security."""
        return {"bootstrap_servers": self.kafka_bootstrap_servers, **self.kafka_security.aiokafka_kwargs()}

    def masked(self) -> dict[str, object]:
        """Every field, JSON-serializable, secrets replaced by ``**********``: safe to print and to log."""
        return _masked_fields(self)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret set, revealed, so that the log filter can mask one that slipped into a message anyway."""
        return tuple(secret.reveal() for secret in _secrets_in(self))


def _masked_fields(obj: Config | KafkaSecurity) -> dict[str, object]:
    return {field.name: _masked_value(getattr(obj, field.name)) for field in dataclasses.fields(obj)}


def _masked_value(value: object) -> object:
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, KafkaSecurity):
        return _masked_fields(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _secrets_in(obj: Config | KafkaSecurity) -> Iterator[Secret]:
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if isinstance(value, Secret):
            yield value
        elif isinstance(value, KafkaSecurity):
            yield from _secrets_in(value)


def _revealed(secret: Secret | None) -> str | None:
    return None if secret is None else secret.reveal()


SETTINGS: Final[tuple[Setting, ...]] = settings_of(Config)


# --- Loading ------------------------------------------------------------------------------------------------------


# What a command that talks only to Kafka (``relay tail``, ``relay integrations``, ...) has when these are not set: it
# never calls the source. (RELAY_INTEGRATIONS is optional for every command: the registry says what is polled.)
_UNNEEDED_BY_KAFKA_COMMANDS: Final[Mapping[str, object]] = {"api_key": Secret("")}


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    warnings: list[str] | None = None,
    kafka_only: bool = False,
) -> Config:
    """Load the configuration from ``path`` (default: ``$RELAY_CONFIG_FILE``, if set) and ``RELAY_*`` variables.

    Raises ``ConfigError`` with every problem found, one line each, naming the setting. ``warnings``, if given,
    receives a line for each setting accepted but unwise (a secret too short to be masked in the logs, a secret file
    every user may read); the relay logs them at start-up, ``check-config`` prints them. ``kafka_only``: for a command
    that talks only to Kafka, which does not need RELAY_API_KEY (then an empty secret); it is still validated when
    set.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get(CONFIG_FILE_ENV) or None
    optional = _UNNEEDED_BY_KAFKA_COMMANDS if kafka_only else {}
    values = read_settings(SETTINGS, None if path is None else Path(path), environ, warnings, optional=optional)
    # Relations between settings are checked once each setting is valid on its own.
    config = assemble(Config, values)
    if problems := list(_relation_problems(config)):
        raise ConfigError(problems)
    return config


# --- Relations between settings -----------------------------------------------------------------------------------


def _relation_problems(config: Config) -> Iterator[str]:
    yield from _topic_problems(config)
    yield from _backoff_problems(config)
    yield from _timeout_problems(config)
    yield from _kafka_security_problems(config.kafka_security)


def _topic_problems(config: Config) -> Iterator[str]:
    for topic in config.event_topics():
        if not _is_topic_name(topic):
            yield f"RELAY_TOPIC_TEMPLATE: makes {shown(topic)}, which is not {_TOPIC_NAME.description}"
    if not _is_topic_name(config.state_topic):
        yield f"RELAY_STATE_TOPIC: {shown(config.state_topic)} is not {_TOPIC_NAME.description}"
    if config.state_topic in config.event_topics():
        yield f"RELAY_STATE_TOPIC: {config.state_topic} is also an event topic; the state needs a topic of its own"
    if config.control_topic in {*config.event_topics(), config.state_topic}:
        yield (
            f"RELAY_CONTROL_TOPIC: {config.control_topic} is also an event or state topic; the control channel needs "
            "a topic of its own"
        )
    others = {*config.event_topics(), config.state_topic, config.control_topic}
    if not _is_topic_name(config.integrations_topic):  # derived from the prefix, so not checked by its kind
        yield f"RELAY_INTEGRATIONS_TOPIC: {shown(config.integrations_topic)} is not {_TOPIC_NAME.description}"
    elif config.integrations_topic in others:
        yield (
            f"RELAY_INTEGRATIONS_TOPIC: {config.integrations_topic} is also an event, state or control topic; the "
            "registry of integrations needs a topic of its own"
        )


def _backoff_problems(config: Config) -> Iterator[str]:
    if config.source_backoff_initial_seconds > config.source_backoff_max_seconds:
        yield "RELAY_SOURCE_BACKOFF_INITIAL_SECONDS: must not exceed RELAY_SOURCE_BACKOFF_MAX_SECONDS"


def _timeout_problems(config: Config) -> Iterator[str]:
    if config.source_request_timeout_seconds < config.source_read_timeout_seconds:
        yield "RELAY_SOURCE_REQUEST_TIMEOUT_SECONDS: must not be less than RELAY_SOURCE_READ_TIMEOUT_SECONDS"


def _kafka_security_problems(security: KafkaSecurity) -> Iterator[str]:
    protocol = f"RELAY_KAFKA_SECURITY_PROTOCOL is {security.security_protocol}"
    sasl = {
        "RELAY_KAFKA_SASL_MECHANISM": security.sasl_mechanism,
        "RELAY_KAFKA_SASL_USERNAME": security.sasl_username,
        "RELAY_KAFKA_SASL_PASSWORD": security.sasl_password,
    }
    ssl_files = {
        "RELAY_KAFKA_SSL_CAFILE": security.ssl_cafile,
        "RELAY_KAFKA_SSL_CERTFILE": security.ssl_certfile,
        "RELAY_KAFKA_SSL_KEYFILE": security.ssl_keyfile,
        "RELAY_KAFKA_SSL_KEY_PASSWORD": security.ssl_key_password,
    }
    if security.uses_sasl:
        yield from (f"{name}: required because {protocol}" for name, value in sasl.items() if value is None)
        # SCRAM never sends the password, PLAIN sends it as is: over SASL_PLAINTEXT, anyone on the path reads it.
        plain_in_clear = security.security_protocol == "SASL_PLAINTEXT" and security.sasl_mechanism == "PLAIN"
        if plain_in_clear and not security.allow_plaintext_password:
            yield (
                "RELAY_KAFKA_SASL_MECHANISM: PLAIN with RELAY_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT sends the "
                "password in clear; use SASL_SSL or a SCRAM mechanism, or set "
                "RELAY_KAFKA_ALLOW_PLAINTEXT_PASSWORD=true (a local test broker only)"
            )
    else:
        # A credential that is silently not used means a connection less secure than the operator believes.
        yield from (f"{name}: set, but {protocol}, without SASL" for name, value in sasl.items() if value is not None)
    if not security.uses_ssl:
        yield from (
            f"{name}: set, but {protocol}, without SSL" for name, value in ssl_files.items() if value is not None
        )
    elif security.ssl_certfile is None:
        yield from (
            f"{name}: needs RELAY_KAFKA_SSL_CERTFILE"
            for name in ("RELAY_KAFKA_SSL_KEYFILE", "RELAY_KAFKA_SSL_KEY_PASSWORD")
            if ssl_files[name] is not None
        )


def environment_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warnings about ``RELAY_*`` variables that are not settings but look like a typo of one."""
    environ = os.environ if environ is None else environ
    known = [name for setting in SETTINGS for name in setting.env_names] + [CONFIG_FILE_ENV]
    return [
        f"{name} is not a setting and is ignored{hint}"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name not in known and (hint := did_you_mean(name, known, cutoff=0.85))
    ]


# --- Documentation ------------------------------------------------------------------------------------------------


def settings_markdown() -> str:
    """The settings as a Markdown table (Name | Default | Meaning), for the README."""
    return markdown_table(SETTINGS)


def settings_help() -> str:
    """The settings as plain text, for ``--help``."""
    return help_text(SETTINGS)

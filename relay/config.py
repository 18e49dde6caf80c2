"""Validate the configuration and print it as the relay would use it, secrets masked.

Where settings come from, later sources winning:

  1. the defaults listed below;
  2. a configuration file, if --config PATH or RELAY_CONFIG_FILE names one: TOML (.toml) or
     YAML (.yaml, .yml) with flat keys named like the environment variables, lowercased and
     without RELAY_ (RELAY_PAGE_SIZE is page_size);
  3. RELAY_* environment variables. An empty variable counts as unset.

Lists are TOML/YAML lists or comma-separated strings. A secret (the API key, Kafka passwords)
can be given directly or, better, as the path of a file holding it, in the matching *_FILE
setting (RELAY_API_KEY_FILE); secrets are never printed. Relative paths are relative to the
working directory. For example, relay.toml:

    integrations = ["personio:8d1hpPsDu6Q5K1UnBDMXiUeGV"]
    resources = "ats/users,hris/employees"
    api_key_file = "/run/secrets/kombo-api-key"

The relay checks everything when it starts and, if anything is wrong, stops with one line per
problem, each naming the setting. Unknown keys in the file are problems (a typo must not pass
for a default); unknown RELAY_* variables are ignored, with a warning if they look like a typo.

This command loads the configuration exactly as `relay run` does, then prints the effective
values as JSON (exit status 0) or the problems (exit status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import hmac
import math
import os
import re
import string
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, Protocol, get_args
from urllib.parse import SplitResult, urlsplit

import orjson
import yaml

from relay.errors import ConfigError

if TYPE_CHECKING:
    import ssl

__all__ = [
    "EVENT_TYPES",
    "MASK",
    "SETTINGS",
    "Config",
    "ConfigError",
    "KafkaSecurity",
    "Secret",
    "Setting",
    "add_arguments",
    "add_config_argument",
    "environment_warnings",
    "load_config",
    "main",
    "settings_help",
    "settings_markdown",
]

InitialSnapshot = Literal["emit", "skip"]
LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
EventType = Literal["created", "updated", "deleted"]
ModelMapEntries = tuple[tuple[str, tuple[str, ...]], ...]  # Kombo model -> resources, see relay/webhooks.py

EVENT_TYPES: Final[tuple[EventType, ...]] = get_args(EventType)
MASK: Final = "**********"
ENV_PREFIX: Final = "RELAY_"
CONFIG_FILE_ENV: Final = "RELAY_CONFIG_FILE"


# --- Secret -------------------------------------------------------------------------------------------------------


class Secret:
    """A string that must never be shown: ``repr`` and ``str`` give ``**********``, ``reveal()`` gives the value.

    Deliberately not a dataclass: ``dataclasses.asdict(config)`` recurses into dataclasses and would copy the value
    out into a plain dict, where the next log line would print it.
    """

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so that comparing a guess with the secret tells nothing through timing.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # copy, deepcopy and pickle would otherwise restore the slot through __setattr__, which refuses.
        return (Secret, (self._value,))


# --- The configuration ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How the relay authenticates to Kafka and encrypts the connection; see ``SETTINGS`` for each field."""

    security_protocol: SecurityProtocol
    sasl_mechanism: SaslMechanism | None
    sasl_username: str | None
    sasl_password: Secret | None
    ssl_cafile: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_key_password: Secret | None
    ssl_check_hostname: bool

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
        from aiokafka.helpers import create_ssl_context

        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            password=_revealed(self.ssl_key_password),
        )
        context.check_hostname = self.ssl_check_hostname
        return context


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of one relay, validated. Build it with ``load_config()``.

    Each field is documented by its entry in ``SETTINGS`` (``relay check-config --help`` prints them all).
    """

    # The source
    source_url: str
    api_key: Secret
    integrations: tuple[str, ...]
    resources: tuple[str, ...]
    page_size: int
    source_connect_timeout_seconds: float
    source_read_timeout_seconds: float
    source_request_timeout_seconds: float
    source_max_retries: int
    source_backoff_initial_seconds: float
    source_backoff_max_seconds: float
    source_ratelimit_min_remaining: int
    source_max_response_bytes: int
    integration_backoff_max_seconds: float
    # Polling
    poll_interval_seconds: float
    poll_jitter_fraction: float
    overlap_seconds: float
    initial_snapshot: InitialSnapshot
    reconcile_interval_seconds: float
    reconcile_max_vanish_fraction: float
    max_concurrent_polls: int
    # Kafka
    kafka_bootstrap_servers: str
    kafka_security: KafkaSecurity
    topic_prefix: str
    topic_template: str
    state_topic: str
    topic_partitions: int
    topic_replication_factor: int
    state_topic_partitions: int
    emit_tombstones: bool
    transactional_id: str
    kafka_commit_timeout_seconds: float
    # The process
    http_host: str
    http_port: int
    shutdown_grace_seconds: float
    fatal_exit_delay_seconds: float
    log_format: LogFormat
    log_level: LogLevel
    # Kombo webhooks
    kombo_webhook_secret: Secret | None
    kombo_webhook_path: str
    kombo_webhook_max_body_bytes: int
    kombo_webhook_model_map: ModelMapEntries | None
    kombo_webhook_dedup_seconds: float
    follow_integration_state: bool

    def topic_for(self, resource: str, event: str) -> str:
        """The topic an ``event`` (created, updated, deleted) about a record of ``resource`` is published to."""
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event!r}, expected one of {', '.join(EVENT_TYPES)}")
        return self.topic_template.format(prefix=self.topic_prefix, resource=resource.replace("/", "."), event=event)

    def event_topics(self) -> tuple[str, ...]:
        """Every topic an event can be published to, each once, in order (not the state topic)."""
        return tuple(dict.fromkeys(self.topic_for(r, e) for r in self.resources for e in EVENT_TYPES))

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


# --- Kinds of value: one parser per type --------------------------------------------------------------------------


class _Invalid(ValueError):
    """One problem with one value. The message never contains a secret."""


class Kind(Protocol):
    """Turns a raw value (a string from the environment, or whatever TOML/YAML made of it) into a field's value."""

    @property
    def description(self) -> str: ...

    def parse(self, raw: object) -> object: ...


def _string(raw: object) -> str:
    if not isinstance(raw, str):
        # The type only, never the value: the value may be a secret.
        raise _Invalid(f"must be a string, not {type(raw).__name__}")
    return raw


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number_text(number: float) -> str:
    return f"{number:g}"


def _range_text(minimum: float, maximum: float | None, *, exclusive: bool = False) -> str:
    if maximum is not None:
        return f"from {_number_text(minimum)} to {_number_text(maximum)}"
    return f"{'>' if exclusive else '>='} {_number_text(minimum)}"


@dataclass(frozen=True, slots=True)
class Text:
    """Non-empty text, stripped, that ``accepts`` approves of."""

    description: str
    accepts: Callable[[str], object] = bool

    def parse(self, raw: object) -> str:
        text = _string(raw).strip()
        if not text:
            raise _Invalid("must not be empty")
        if not self.accepts(text):
            raise _Invalid(f"must be {self.description}, got {_shown(text)}")
        return text


@dataclass(frozen=True, slots=True)
class HttpUrl:
    description: str = "an http:// or https:// URL"

    def parse(self, raw: object) -> str:
        url = _string(raw).strip().rstrip("/")
        parts = _split_url(url)
        if "@" in (parts.netloc if parts else url):
            # Refused, and not shown: it holds a credential, which check-config and every log line would print.
            raise _Invalid("must not contain credentials; the API key belongs in RELAY_API_KEY or RELAY_API_KEY_FILE")
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Invalid(f"must be {self.description}, got {_shown(url)}")
        return url


def _split_url(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return None
    return parts


@dataclass(frozen=True, slots=True)
class Integer:
    minimum: int
    maximum: int | None = None
    also: tuple[int, ...] = ()  # values outside the range that mean something, like -1 for "the broker's default"

    @property
    def description(self) -> str:
        extra = "".join(f"{value} or " for value in self.also)
        return f"{extra}an integer {_range_text(self.minimum, self.maximum)}"

    def parse(self, raw: object) -> int:
        value = _integer(raw)
        in_range = self.minimum <= value and (self.maximum is None or value <= self.maximum)
        if not (in_range or value in self.also):
            raise _Invalid(f"must be {self.description}, got {value}")
        return value


def _integer(raw: object) -> int:
    # bool is an int to Python, but `page_size = true` is a mistake, not 1.
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise _Invalid(f"must be an integer, got {_shown(raw)}")


@dataclass(frozen=True, slots=True)
class Number:
    minimum: float
    maximum: float | None = None
    exclusive: bool = False  # the minimum itself is not allowed

    @property
    def description(self) -> str:
        return f"a number {_range_text(self.minimum, self.maximum, exclusive=self.exclusive)}"

    def parse(self, raw: object) -> float:
        value = _number(raw)
        above = value > self.minimum if self.exclusive else value >= self.minimum
        if not (above and (self.maximum is None or value <= self.maximum)):
            raise _Invalid(f"must be {self.description}, got {_number_text(value)}")
        return value


def _number(raw: object) -> float:
    value = _finite_float(raw)
    if value is None:
        raise _Invalid(f"must be a number, got {_shown(raw)}")
    return value


def _finite_float(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = float(raw)  # ignores surrounding whitespace
    except ValueError:
        return None
    # "nan" and "inf" parse, but mean nothing as a timeout or a fraction.
    return value if math.isfinite(value) else None


_FLAG_WORDS: Final = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}


@dataclass(frozen=True, slots=True)
class Flag:
    description: str = "true or false (also 1/0, yes/no, on/off)"

    def parse(self, raw: object) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str | int) and (value := _FLAG_WORDS.get(str(raw).strip().lower())) is not None:
            return value
        raise _Invalid(f"must be {self.description}, got {_shown(raw)}")


@dataclass(frozen=True, slots=True)
class Choice:
    """One of ``options``, matched regardless of case and returned as spelled in ``options``."""

    options: tuple[str, ...]

    @property
    def description(self) -> str:
        return f"one of {', '.join(self.options)}"

    def parse(self, raw: object) -> str:
        text = _string(raw).strip()
        for option in self.options:
            if option.lower() == text.lower():
                return option
        raise _Invalid(f"must be {self.description}, got {_shown(text)}")


@dataclass(frozen=True, slots=True)
class Items:
    """A non-empty list without duplicates, given as a list or as one comma-separated string."""

    item: Text

    @property
    def description(self) -> str:
        return f"comma-separated, each {self.item.description}"

    def parse(self, raw: object) -> tuple[str, ...]:
        items = _list_items(raw)
        if not items:
            raise _Invalid("must list at least one item")
        if "" in items:
            raise _Invalid("has an empty item (a doubled or trailing comma?)")
        if bad := [item for item in items if not self.item.accepts(item)]:
            raise _Invalid(f"has {', '.join(map(_shown, bad))}, which must be {self.item.description}")
        if repeated := sorted({item for item in items if items.count(item) > 1}):
            raise _Invalid(f"lists {', '.join(map(_shown, repeated))} more than once")
        return tuple(items)


def _list_items(raw: object) -> list[str]:
    if isinstance(raw, str):
        return [item.strip() for item in raw.split(",")] if raw.strip() else []
    if isinstance(raw, list):
        return [_string(item).strip() for item in raw]
    raise _Invalid(f"must be a list or a comma-separated string, not {type(raw).__name__}")


@dataclass(frozen=True, slots=True)
class Joined:
    """A list kept as one comma-separated string, because that is what its consumer takes."""

    items: Items

    @property
    def description(self) -> str:
        return self.items.description

    def parse(self, raw: object) -> str:
        return ",".join(self.items.parse(raw))


@dataclass(frozen=True, slots=True)
class SecretValue:
    """A secret, given directly or (the setting's ``_FILE`` variant) as the path of a file holding it."""

    description: str = "a secret; or, in the _FILE variant, the path of a file holding it"

    def parse(self, raw: object) -> Secret:
        value = _string(raw)
        if not value.strip():
            raise _Invalid("must not be empty")
        return Secret(value)


@dataclass(frozen=True, slots=True)
class ExistingFile:
    description: str = "the path of an existing file"

    def parse(self, raw: object) -> str:
        path = Text(self.description).parse(raw)
        if not Path(path).is_file():
            raise _Invalid(f"no such file: {_shown(path)}")
        return path


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    placeholders: tuple[str, ...] = ("prefix", "resource", "event")

    @property
    def description(self) -> str:
        return f"a topic name with placeholders {self.placeholders_text}"

    @property
    def placeholders_text(self) -> str:
        return ", ".join(f"{{{name}}}" for name in self.placeholders)

    def parse(self, raw: object) -> str:
        template = Text(self.description).parse(raw)
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
        except ValueError:
            raise _Invalid(f"has unbalanced braces: {_shown(template)}") from None
        # Only bare placeholders: a format spec, conversion or attribute access is never a sensible topic name.
        unknown = [
            "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            for name, spec, conversion in fields
            if name is not None and (name not in self.placeholders or spec or conversion)
        ]
        if unknown:
            raise _Invalid(f"has unknown placeholder {', '.join(unknown)}; use {self.placeholders_text}")
        return template


@dataclass(frozen=True, slots=True)
class ModelMapOverrides:
    """Entries of the Kombo model -> resources map: ``model=resource,resource;model=...`` (``model=`` alone: the model
    triggers nothing), or in a file a table of model -> list of resources."""

    description: str = "model=resource,resource entries separated by ; (model= alone: ignore that model)"

    def parse(self, raw: object) -> ModelMapEntries:
        pairs: list[tuple[str, list[str]]] = []
        if isinstance(raw, str):
            for entry in (e.strip() for e in raw.split(";")):
                model, sep, resources = entry.partition("=")
                if not sep:
                    if entry:
                        raise _Invalid(f"has {_shown(entry)}, which is not model=resource,resource")
                    continue
                pairs.append((model.strip(), [r.strip() for r in resources.split(",") if r.strip()]))
        elif isinstance(raw, dict):
            pairs = [(str(model), _list_items(value) if value else []) for model, value in raw.items()]
        else:
            raise _Invalid(f"must be a string or a table, not {type(raw).__name__}")
        if not pairs:
            raise _Invalid("must map at least one model")
        if bad := [model for model, _ in pairs if re.fullmatch(r"[a-z0-9_]+", model) is None]:
            raise _Invalid(f"has model {', '.join(map(_shown, bad))}, which must be a Kombo model name like ats_users")
        if bad := [r for _, resources in pairs for r in resources if not _is_resource_path(r)]:
            raise _Invalid(f"has {', '.join(map(_shown, bad))}, which must be a path like ats/users")
        models = [model for model, _ in pairs]
        if repeated := sorted({model for model in models if models.count(model) > 1}):
            raise _Invalid(f"maps {', '.join(map(_shown, repeated))} more than once")
        return tuple((model, tuple(dict.fromkeys(resources))) for model, resources in pairs)


# --- The settings -------------------------------------------------------------------------------------------------


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


@dataclass(frozen=True, slots=True)
class Derived:
    """A default computed from other settings, once all of them are valid."""

    description: str
    derive: Callable[[Mapping[str, Any]], object]


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its environment variable, how to parse it, its default and what it means.

    The file key is the variable's name lowercased without ``RELAY_``; ``field`` is the attribute of ``Config`` it
    fills (dotted for ``kafka_security``), the file key unless given.
    """

    env: str
    kind: Kind
    default: object
    doc: str
    field: str = ""

    def __post_init__(self) -> None:
        if not self.field:
            object.__setattr__(self, "field", self.key)

    @property
    def key(self) -> str:
        return self.env.removeprefix(ENV_PREFIX).lower()

    @property
    def keys(self) -> tuple[str, ...]:
        """The file keys that set this setting: a secret also has ``<key>_file``."""
        return (self.key, f"{self.key}_file") if isinstance(self.kind, SecretValue) else (self.key,)

    @property
    def env_names(self) -> tuple[str, ...]:
        return tuple(ENV_PREFIX + key.upper() for key in self.keys)


def _derive_state_topic(values: Mapping[str, Any]) -> str:
    return f"{values['topic_prefix']}.relay-state"


def _derive_transactional_id(values: Mapping[str, Any]) -> str:
    # Kafka fences a producer when another one starts with the same transactional id, which is what stops a zombie
    # (an old instance still running after its replacement started) from writing. So the id must be the same on every
    # restart of one relay, with no operator remembering to set it, and different for two relays that publish
    # different data (say, two sets of integrations), or they would fence each other. Sorted, so that listing the
    # same integrations in another order is the same relay; JSON, so that no two different lists encode alike.
    # Changing the integrations changes the id: set RELAY_TRANSACTIONAL_ID to keep one across such a change.
    identity = [
        values["source_url"],
        values["topic_prefix"],
        values["state_topic"],
        sorted(values["integrations"]),
        sorted(values["resources"]),
    ]
    return "change-relay-" + hashlib.sha256(orjson.dumps(identity)).hexdigest()[:16]


def _is_integration_id(text: str) -> bool:
    # Kombo ids contain a colon (personio:8d1hpPsDu6Q5K1UnBDMXiUeGV); only what would break a list or a header is out.
    return text.isprintable() and not any(char.isspace() or char == "," for char in text)


def _is_resource_path(text: str) -> bool:
    return re.fullmatch(r"[a-z0-9_-]+(/[a-z0-9_-]+)*", text) is not None


_RESERVED_PATHS: Final = ("/metrics", "/livez", "/readyz", "/status")


def _is_webhook_path(text: str) -> bool:
    return re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", text) is not None and text not in _RESERVED_PATHS


def _is_host_port(text: str) -> bool:
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})", text)
    return match is not None and 1 <= int(match[2]) <= 65535


def _is_topic_name(text: str) -> bool:
    return re.fullmatch(r"[a-zA-Z0-9._-]{1,249}", text) is not None and text not in (".", "..")


_TOPIC_NAME: Final = Text("a Kafka topic name (a-z, A-Z, 0-9, '.', '_', '-'; at most 249 characters)", _is_topic_name)
_SECONDS: Final = Number(0, exclusive=True)
_FRACTION: Final = Number(0, 1)

SETTINGS: Final[tuple[Setting, ...]] = (
    # The source
    Setting("RELAY_SOURCE_URL", HttpUrl(), "https://api.kombo.dev/v1", "Base URL of the Kombo-style API"),
    Setting("RELAY_API_KEY", SecretValue(), REQUIRED, "API key for the source, sent as a Bearer token"),
    Setting(
        "RELAY_INTEGRATIONS",
        Items(Text("an integration id (no spaces or commas)", _is_integration_id)),
        REQUIRED,
        "Integrations to poll, by id, like personio:8d1hpPsDu6Q5K1UnBDMXiUeGV",
    ),
    Setting(
        "RELAY_RESOURCES",
        Items(Text("a path like hris/employees (a-z, 0-9, _, - between slashes)", _is_resource_path)),
        ("ats/users",),
        "List endpoints polled for every integration",
    ),
    Setting("RELAY_PAGE_SIZE", Integer(1, 250), 250, "Records asked for per page"),
    Setting("RELAY_SOURCE_CONNECT_TIMEOUT_SECONDS", _SECONDS, 10.0, "Timeout for connecting to the source"),
    Setting("RELAY_SOURCE_READ_TIMEOUT_SECONDS", _SECONDS, 60.0, "Timeout for reading a response from the source"),
    Setting(
        "RELAY_SOURCE_REQUEST_TIMEOUT_SECONDS",
        _SECONDS,
        120.0,
        "Deadline of a whole request to the source (connecting, headers and the whole body), so that a body that "
        "trickles in still ends; at least RELAY_SOURCE_READ_TIMEOUT_SECONDS",
    ),
    Setting("RELAY_SOURCE_MAX_RETRIES", Integer(0), 6, "Retries of a failing request (rate limit, 5xx, timeout)"),
    Setting("RELAY_SOURCE_BACKOFF_INITIAL_SECONDS", _SECONDS, 0.5, "First delay before retrying a failed request"),
    Setting("RELAY_SOURCE_BACKOFF_MAX_SECONDS", _SECONDS, 60.0, "Longest delay between two retries of a request"),
    Setting(
        "RELAY_SOURCE_RATELIMIT_MIN_REMAINING",
        Integer(0),
        5,
        "Slow down when the source's remaining request budget is at or below this",
    ),
    Setting(
        "RELAY_SOURCE_MAX_RESPONSE_BYTES",
        Integer(1),
        33554432,
        "A larger response from the source fails its poll (RELAY.RESPONSE_TOO_LARGE); 32 MiB is far above a page "
        "of 250 large records",
    ),
    Setting(
        "RELAY_INTEGRATION_BACKOFF_MAX_SECONDS",
        _SECONDS,
        900.0,
        "Longest pause of an integration the source cannot serve (the others keep going)",
    ),
    # Polling
    Setting("RELAY_POLL_INTERVAL_SECONDS", _SECONDS, 60.0, "Time between two polls of an integration's resource"),
    Setting(
        "RELAY_POLL_JITTER_FRACTION", _FRACTION, 0.1, "Random spread of the poll interval, so that polls do not align"
    ),
    Setting(
        "RELAY_OVERLAP_SECONDS",
        Number(0),
        30.0,
        "Each poll starts this long before the last watermark, to catch changes that became visible late",
    ),
    Setting(
        "RELAY_INITIAL_SNAPSHOT",
        Choice(get_args(InitialSnapshot)),
        "emit",
        "First poll of an integration: emit a created event per existing record, or skip them",
    ),
    Setting(
        "RELAY_RECONCILE_INTERVAL_SECONDS",
        Number(0),
        86400.0,
        "How often a full listing finds deleted records; 0 disables it",
    ),
    Setting(
        "RELAY_RECONCILE_MAX_VANISH_FRACTION",
        _FRACTION,
        0.5,
        "A reconciliation that would delete more than this fraction of the records is refused",
    ),
    Setting("RELAY_MAX_CONCURRENT_POLLS", Integer(1), 8, "Polls running at once, over all integrations"),
    # Kafka
    Setting(
        "RELAY_KAFKA_BOOTSTRAP_SERVERS",
        Joined(Items(Text("host:port", _is_host_port))),
        "localhost:9092",
        "Kafka brokers to connect to",
    ),
    Setting(
        "RELAY_KAFKA_SECURITY_PROTOCOL",
        Choice(get_args(SecurityProtocol)),
        "PLAINTEXT",
        "How to connect to Kafka",
        field="kafka_security.security_protocol",
    ),
    Setting(
        "RELAY_KAFKA_SASL_MECHANISM",
        Choice(get_args(SaslMechanism)),
        None,
        "SASL mechanism; required with SASL_*",
        field="kafka_security.sasl_mechanism",
    ),
    Setting(
        "RELAY_KAFKA_SASL_USERNAME",
        Text("a user name"),
        None,
        "SASL user name; required with SASL_*",
        field="kafka_security.sasl_username",
    ),
    Setting(
        "RELAY_KAFKA_SASL_PASSWORD",
        SecretValue(),
        None,
        "SASL password; required with SASL_*",
        field="kafka_security.sasl_password",
    ),
    Setting(
        "RELAY_KAFKA_SSL_CAFILE",
        ExistingFile(),
        None,
        "CA certificates to verify the brokers with (default: the system's)",
        field="kafka_security.ssl_cafile",
    ),
    Setting(
        "RELAY_KAFKA_SSL_CERTFILE",
        ExistingFile(),
        None,
        "Client certificate, for brokers that require one",
        field="kafka_security.ssl_certfile",
    ),
    Setting(
        "RELAY_KAFKA_SSL_KEYFILE",
        ExistingFile(),
        None,
        "Private key of the client certificate, if not in the certificate file",
        field="kafka_security.ssl_keyfile",
    ),
    Setting(
        "RELAY_KAFKA_SSL_KEY_PASSWORD",
        SecretValue(),
        None,
        "Password of the client certificate's private key",
        field="kafka_security.ssl_key_password",
    ),
    Setting(
        "RELAY_KAFKA_SSL_CHECK_HOSTNAME",
        Flag(),
        True,
        "Check that each broker's certificate is for its host name",
        field="kafka_security.ssl_check_hostname",
    ),
    Setting("RELAY_TOPIC_PREFIX", _TOPIC_NAME, "kombo", "Prefix of the topic names"),
    Setting(
        "RELAY_TOPIC_TEMPLATE",
        TopicTemplate(),
        "{prefix}.{resource}",
        "Topic of an event; {resource} has / replaced by ., {event} is created, updated or deleted",
    ),
    Setting(
        "RELAY_STATE_TOPIC",
        _TOPIC_NAME,
        Derived("{topic_prefix}.relay-state", _derive_state_topic),
        "Compacted topic where the relay keeps its own progress",
    ),
    Setting("RELAY_TOPIC_PARTITIONS", Integer(1), 6, "Partitions of the event topics the relay creates"),
    Setting(
        "RELAY_TOPIC_REPLICATION_FACTOR",
        Integer(1, also=(-1,)),
        -1,
        "Replication factor of the topics the relay creates; -1 is the broker's default",
    ),
    Setting(
        "RELAY_STATE_TOPIC_PARTITIONS",
        Integer(1),
        6,
        "Partitions of the state topic, if the relay creates it, and the number it places state over (by "
        "integration); keep it once state is written (checked at start)",
    ),
    Setting(
        "RELAY_EMIT_TOMBSTONES",
        Flag(),
        False,
        "After a deleted event, also publish a null value for the key, so that compaction can drop the record",
    ),
    Setting(
        "RELAY_TRANSACTIONAL_ID",
        Text("a Kafka transactional id", str.isprintable),
        Derived("change-relay-<hash of source, topics, integrations, resources>", _derive_transactional_id),
        "Kafka transactional id: stable across restarts, different for relays publishing different data",
    ),
    Setting(
        "RELAY_KAFKA_COMMIT_TIMEOUT_SECONDS",
        Number(0, 600, exclusive=True),
        60.0,
        "Longest wait for Kafka to commit a page's transaction; then it is aborted and retried",
    ),
    # The process
    Setting(
        "RELAY_HTTP_HOST",
        Text("a host name or address"),
        "0.0.0.0",  # noqa: S104 -- in a container, health and metrics must be reachable from outside it
        "Address of the health and metrics HTTP server",
    ),
    Setting("RELAY_HTTP_PORT", Integer(0, 65535), 8080, "Port of the health and metrics server; 0 picks a free one"),
    Setting(
        "RELAY_SHUTDOWN_GRACE_SECONDS",
        Number(0),
        20.0,
        "On SIGTERM, time left to the work in flight before the relay exits",
    ),
    Setting(
        "RELAY_FATAL_EXIT_DELAY_SECONDS",
        Number(0, 3600),
        60.0,
        "After an error only an operator can fix (API key refused, fenced, Kafka authorization), how long the relay "
        "keeps serving /metrics and /status, not ready, before it exits, so that Prometheus records why; "
        "SIGTERM ends the wait",
    ),
    Setting("RELAY_LOG_FORMAT", Choice(get_args(LogFormat)), "json", "json for log collectors, console for people"),
    Setting("RELAY_LOG_LEVEL", Choice(get_args(LogLevel)), "INFO", "Least severe level of the messages logged"),
    # Kombo webhooks
    Setting(
        "RELAY_KOMBO_WEBHOOK_SECRET",
        SecretValue(),
        None,
        "Secret Kombo signs its webhooks with (X-Kombo-Signature); unset turns the webhook endpoint off",
    ),
    Setting(
        "RELAY_KOMBO_WEBHOOK_PATH",
        Text("a URL path like /webhooks/kombo (not /metrics, /livez, /readyz, /status)", _is_webhook_path),
        "/webhooks/kombo",
        "Path of the webhook endpoint, on the HTTP server of RELAY_HTTP_PORT",
    ),
    Setting("RELAY_KOMBO_WEBHOOK_MAX_BODY_BYTES", Integer(1), 1048576, "Larger webhook bodies are refused with 413"),
    Setting(
        "RELAY_KOMBO_WEBHOOK_MODEL_MAP",
        ModelMapOverrides(),
        None,
        "Replaces entries of the map from Kombo's changed models to the resources they affect (README: Webhooks)",
    ),
    Setting(
        "RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS",
        Number(0),
        3600.0,
        "A webhook whose id was seen within this time is acted on once; 0 turns this off",
    ),
    Setting(
        "RELAY_FOLLOW_INTEGRATION_STATE",
        Flag(),
        False,
        "Pause polling an integration on Kombo's integration-state-changed (INACTIVE, INVALID) and "
        "integration-deleted webhooks; resume on ACTIVE",
    ),
)


# --- Loading ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Raw:
    """A value as given, and where, named the way the operator wrote it: ``RELAY_PAGE_SIZE`` or ``page_size (in
    relay.toml)``."""

    value: object
    origin: str


_Layer = Mapping[str, _Raw]  # file key -> the value given for it


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration from ``path`` (default: ``$RELAY_CONFIG_FILE``, if set) and ``RELAY_*`` variables.

    Raises ``ConfigError`` with every problem found, one line each, naming the setting.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get(CONFIG_FILE_ENV) or None
    file_layer: _Layer = {}
    problems: list[str] = []
    if path is not None:
        file_layer, problems = _read_file_layer(Path(path))
    layers = (_env_layer(environ), file_layer)
    values: dict[str, object] = {}
    for setting in SETTINGS:
        try:
            values[setting.field] = _resolve(setting, _given(setting, layers))
        except _Invalid as problem:
            problems.append(str(problem))
    if problems:
        raise ConfigError(problems)
    # Relations between settings are checked once each setting is valid on its own.
    config = _assemble(_with_derived_defaults(values))
    if problems := list(_relation_problems(config)):
        raise ConfigError(problems)
    return config


def _env_layer(environ: Mapping[str, str]) -> _Layer:
    # An empty variable counts as unset: deployment templates render "not set" as "set to nothing".
    return {
        key: _Raw(environ[name], name)
        for setting in SETTINGS
        for key, name in zip(setting.keys, setting.env_names, strict=True)
        if environ.get(name, "").strip()
    }


def _read_file_layer(path: Path) -> tuple[_Layer, list[str]]:
    try:
        document = _read_document(path)
    except _Invalid as problem:
        return {}, [f"configuration file {path}: {problem}"]
    layer: dict[str, _Raw] = {}
    problems: list[str] = []
    known = _file_keys()
    for key, value in document.items():
        origin = f"{key} (in {path})"
        if not isinstance(key, str) or key not in known:
            problems.append(f"{origin}: unknown key{_did_you_mean(str(key).lower().removeprefix('relay_'), known)}")
        elif value is not None:  # YAML's `key:` with nothing after it leaves the default, like an empty variable
            layer[key] = _Raw(value, origin)
    return layer, problems


_PARSERS: Final[dict[str, Callable[[str], object]]] = {
    ".toml": tomllib.loads,
    ".yaml": yaml.safe_load,
    ".yml": yaml.safe_load,
}


def _read_document(path: Path) -> Mapping[object, object]:
    parse = _PARSERS.get(path.suffix.lower())
    if parse is None:
        raise _Invalid("must be TOML (.toml) or YAML (.yaml, .yml)")
    try:
        document = parse(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise _Invalid(f"cannot read it: {error.strerror}") from None
    except UnicodeDecodeError:
        raise _Invalid("is not UTF-8 text") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise _Invalid(f"cannot parse it: {_parse_error_text(error)}") from None
    if document is None:  # an empty YAML file
        return {}
    if not isinstance(document, dict):
        raise _Invalid(f"must hold a mapping of keys to values, not {type(document).__name__}")
    return document


def _parse_error_text(error: Exception) -> str:
    # YAML's own message quotes the offending line, which may hold a secret: keep only the problem and the place.
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(error, yaml.YAMLError):
        return "invalid YAML"
    return str(error)  # tomllib's messages name the place, never the text


def _file_keys() -> tuple[str, ...]:
    return tuple(key for setting in SETTINGS for key in setting.keys)


def _did_you_mean(name: str, known: Sequence[str], cutoff: float = 0.6) -> str:
    matches = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return f" (did you mean {matches[0]}?)" if matches else ""


def _given(setting: Setting, layers: Sequence[_Layer]) -> dict[str, _Raw]:
    """What the first layer that sets ``setting`` gives for it, under any of its keys."""
    for layer in layers:
        if given := {key: layer[key] for key in setting.keys if key in layer}:
            return given
    return {}


def _resolve(setting: Setting, given: Mapping[str, _Raw]) -> object:
    if not given:
        if setting.default is REQUIRED:
            raise _Invalid(f"{' or '.join(setting.env_names)}: required")
        return setting.default
    if len(given) > 1:
        raise _Invalid(f"{' and '.join(raw.origin for raw in given.values())}: set only one of them")
    [(key, raw)] = given.items()
    try:
        value = raw.value if key == setting.key else _read_secret_file(raw.value)
        return setting.kind.parse(value)
    except _Invalid as problem:
        raise _Invalid(f"{raw.origin}: {problem}") from None


def _read_secret_file(raw: object) -> str:
    path = _string(raw)
    try:
        content = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise _Invalid(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise _Invalid(f"{path} is not UTF-8 text") from None  # the error's own message quotes a byte of it
    if not content:
        raise _Invalid(f"{path} is empty")
    return content


def _with_derived_defaults(values: Mapping[str, object]) -> dict[str, Any]:
    derived = dict(values)
    for setting in SETTINGS:  # in order, so that a derived default may use one derived before it
        if isinstance(default := derived[setting.field], Derived):
            derived[setting.field] = default.derive(derived)
    return derived


def _assemble(values: Mapping[str, Any]) -> Config:
    security = {field.removeprefix("kafka_security."): v for field, v in values.items() if "." in field}
    top = {field: v for field, v in values.items() if "." not in field}
    return Config(**top, kafka_security=KafkaSecurity(**security))


# --- Relations between settings -----------------------------------------------------------------------------------


def _relation_problems(config: Config) -> Iterator[str]:
    yield from _topic_problems(config)
    yield from _backoff_problems(config)
    yield from _timeout_problems(config)
    yield from _kafka_security_problems(config.kafka_security)


def _topic_problems(config: Config) -> Iterator[str]:
    for topic in config.event_topics():
        if not _is_topic_name(topic):
            yield f"RELAY_TOPIC_TEMPLATE: makes {_shown(topic)}, which is not {_TOPIC_NAME.description}"
    if not _is_topic_name(config.state_topic):
        yield f"RELAY_STATE_TOPIC: {_shown(config.state_topic)} is not {_TOPIC_NAME.description}"
    if config.state_topic in config.event_topics():
        yield f"RELAY_STATE_TOPIC: {config.state_topic} is also an event topic; the state needs a topic of its own"


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
        if name.startswith(ENV_PREFIX) and name not in known and (hint := _did_you_mean(name, known, cutoff=0.85))
    ]


# --- Documentation ------------------------------------------------------------------------------------------------


def _default_text(default: object) -> str:
    if isinstance(default, Derived):
        return default.description
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return _number_text(default)
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default)


def _default_label(default: object, quote: Callable[[str], str]) -> str:
    if default is REQUIRED:
        return "required"
    if default is None:
        return "unset"
    return quote(_default_text(default))


def _meaning(setting: Setting) -> str:
    return f"{setting.doc}; {setting.kind.description}"


def settings_markdown() -> str:
    """The settings as a Markdown table (Name | Default | Meaning), for the README."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| Name | Default | Meaning |", "| --- | --- | --- |"]
    for setting in SETTINGS:
        names = " / ".join(f"`{name}`" for name in setting.env_names)
        default = _default_label(setting.default, lambda text: f"`{text}`")
        rows.append(f"| {names} | {cell(default)} | {cell(_meaning(setting))} |")
    return "\n".join(rows) + "\n"


def settings_help() -> str:
    """The settings as plain text, for ``--help``."""
    lines = ["settings (file keys: the names lowercased, without RELAY_):"]
    for setting in SETTINGS:
        default = _default_label(setting.default, lambda text: f"default {text}")
        lines.append(f"  {' / '.join(setting.env_names)}  [{default}]")
        lines += textwrap.wrap(_meaning(setting), width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


# --- relay check-config -------------------------------------------------------------------------------------------


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config PATH``, shared by every subcommand that loads the configuration."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file, TOML (.toml) or YAML (.yaml, .yml); default: $RELAY_CONFIG_FILE. "
        "RELAY_* environment variables override it.",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.epilog = settings_help()


def print_problems(error: ConfigError) -> None:
    """What every subcommand prints when the configuration is invalid: one line per problem, naming its key."""
    print("relay: invalid configuration", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    for warning in environment_warnings():
        print(f"relay: warning: {warning}", file=sys.stderr)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print_problems(error)
        return 2
    sys.stdout.write(orjson.dumps(config.masked(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0

"""Kinds of value: one parser per type of setting, each turning a raw value (a string from the environment, or
whatever TOML/YAML made of it) into a typed value or an ``Invalid`` problem whose message never shows a secret. Pure:
no environment, no files read except by ``ExistingFile``, nothing about which settings exist."""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import SplitResult, urlsplit

from relay.secret import Secret

ModelMapEntries = tuple[tuple[str, tuple[str, ...]], ...]  # Kombo model -> resources, see relay/webhooks.py


class Invalid(ValueError):
    """One problem with one value. The message never contains a secret."""


class Kind(Protocol):
    """Turns a raw value (a string from the environment, or whatever TOML/YAML made of it) into a field's value."""

    @property
    def description(self) -> str: ...

    def parse(self, raw: object) -> object: ...


def require_string(raw: object) -> str:
    if not isinstance(raw, str):
        # The type only, never the value: the value may be a secret.
        raise Invalid(f"must be a string, not {type(raw).__name__}")
    return raw


def shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def number_text(number: float) -> str:
    return f"{number:g}"


def _range_text(minimum: float, maximum: float | None, *, exclusive: bool = False) -> str:
    if maximum is not None:
        return f"from {number_text(minimum)} to {number_text(maximum)}"
    return f"{'>' if exclusive else '>='} {number_text(minimum)}"


@dataclass(frozen=True, slots=True)
class Text:
    """Non-empty text, stripped, that ``accepts`` approves of."""

    description: str
    accepts: Callable[[str], object] = bool

    def parse(self, raw: object) -> str:
        text = require_string(raw).strip()
        if not text:
            raise Invalid("must not be empty")
        if not self.accepts(text):
            raise Invalid(f"must be {self.description}, got {shown(text)}")
        return text


@dataclass(frozen=True, slots=True)
class HttpUrl:
    description: str = "an http:// or https:// URL"

    def parse(self, raw: object) -> str:
        url = require_string(raw).strip().rstrip("/")
        parts = _split_url(url)
        if "@" in (parts.netloc if parts else url):
            # Refused, and not shown: it holds a credential, which check-config and every log line would print.
            raise Invalid("must not contain credentials; the API key belongs in RELAY_API_KEY or RELAY_API_KEY_FILE")
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise Invalid(f"must be {self.description}, got {shown(url)}")
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
            raise Invalid(f"must be {self.description}, got {value}")
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
    raise Invalid(f"must be an integer, got {shown(raw)}")


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
            raise Invalid(f"must be {self.description}, got {number_text(value)}")
        return value


def _number(raw: object) -> float:
    value = _finite_float(raw)
    if value is None:
        raise Invalid(f"must be a number, got {shown(raw)}")
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


_DURATION_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class Duration:
    """A span of time, not negative: a number of seconds, or a number with a unit (``90s``, ``30m``, ``12h``,
    ``7d``); in seconds."""

    description: str = "a duration like 90s, 30m, 12h or 7d (a bare number is seconds)"

    def parse(self, raw: object) -> float:
        seconds = _duration_seconds(raw)
        if seconds is None or seconds < 0:
            raise Invalid(f"must be {self.description}, got {shown(raw)}")
        return seconds


def _duration_seconds(raw: object) -> float | None:
    if isinstance(raw, str) and (match := re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd])\s*", raw.lower())):
        return float(match[1]) * _DURATION_UNITS[match[2]]
    return _finite_float(raw)


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
        raise Invalid(f"must be {self.description}, got {shown(raw)}")


@dataclass(frozen=True, slots=True)
class Choice:
    """One of ``options``, matched regardless of case and returned as spelled in ``options``."""

    options: tuple[str, ...]

    @property
    def description(self) -> str:
        return f"one of {', '.join(self.options)}"

    def parse(self, raw: object) -> str:
        text = require_string(raw).strip()
        for option in self.options:
            if option.lower() == text.lower():
                return option
        raise Invalid(f"must be {self.description}, got {shown(text)}")


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
            raise Invalid("must list at least one item")
        if "" in items:
            raise Invalid("has an empty item (a doubled or trailing comma?)")
        if bad := [item for item in items if not self.item.accepts(item)]:
            raise Invalid(f"has {', '.join(map(shown, bad))}, which must be {self.item.description}")
        if repeated := sorted({item for item in items if items.count(item) > 1}):
            raise Invalid(f"lists {', '.join(map(shown, repeated))} more than once")
        return tuple(items)


def _list_items(raw: object) -> list[str]:
    if isinstance(raw, str):
        return [item.strip() for item in raw.split(",")] if raw.strip() else []
    if isinstance(raw, list):
        return [require_string(item).strip() for item in raw]
    raise Invalid(f"must be a list or a comma-separated string, not {type(raw).__name__}")


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
        # Stripped wherever it comes from (a file's content already is): a key pasted with its trailing newline
        # into a variable or a Kubernetes Secret made aiohttp refuse every request it was sent with.
        value = require_string(raw).strip()
        if not value:
            raise Invalid("must not be empty")
        # Refused, not quietly cleaned: such a secret cannot be sent in a header, and is not the one the operator
        # believes was set. The message says what, never where or which: the value must not appear anywhere.
        if any(unicodedata.category(char) == "Cc" for char in value):
            raise Invalid("must not contain control characters (a line break, a tab, ...)")
        return Secret(value)


@dataclass(frozen=True, slots=True)
class ExistingFile:
    description: str = "the path of an existing file"

    def parse(self, raw: object) -> str:
        path = Text(self.description).parse(raw)
        if not Path(path).is_file():
            raise Invalid(f"no such file: {shown(path)}")
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
            raise Invalid(f"has unbalanced braces: {shown(template)}") from None
        # Only bare placeholders: a format spec, conversion or attribute access is never a sensible topic name.
        unknown = [
            "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            for name, spec, conversion in fields
            if name is not None and (name not in self.placeholders or spec or conversion)
        ]
        if unknown:
            raise Invalid(f"has unknown placeholder {', '.join(unknown)}; use {self.placeholders_text}")
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
                        raise Invalid(f"has {shown(entry)}, which is not model=resource,resource")
                    continue
                pairs.append((model.strip(), [r.strip() for r in resources.split(",") if r.strip()]))
        elif isinstance(raw, dict):
            pairs = [(str(model), _list_items(value) if value else []) for model, value in raw.items()]
        else:
            raise Invalid(f"must be a string or a table, not {type(raw).__name__}")
        if not pairs:
            raise Invalid("must map at least one model")
        if bad := [model for model, _ in pairs if re.fullmatch(r"[a-z0-9_]+", model) is None]:
            raise Invalid(f"has model {', '.join(map(shown, bad))}, which must be a Kombo model name like ats_users")
        if bad := [r for _, resources in pairs for r in resources if not is_resource_path(r)]:
            raise Invalid(f"has {', '.join(map(shown, bad))}, which must be a path like ats/users")
        models = [model for model, _ in pairs]
        if repeated := sorted({model for model in models if models.count(model) > 1}):
            raise Invalid(f"maps {', '.join(map(shown, repeated))} more than once")
        return tuple((model, tuple(dict.fromkeys(resources))) for model, resources in pairs)


def is_resource_path(text: str) -> bool:
    return re.fullmatch(r"[a-z0-9_-]+(/[a-z0-9_-]+)*", text) is not None


def is_integration_id(text: str) -> bool:
    # Kombo ids contain a colon (personio:8d1hpPsDu6Q5K1UnBDMXiUeGV); only what would break a list or a header is out.
    return text.isprintable() and not any(char.isspace() or char == "," for char in text)

"""The resource-specific query filters of Kombo's list endpoints (``emails``, ``statuses``, ``work_emails``, ...).

Each resource declares its filters (see ``records.py``); the list machinery only knows this small interface. As the
spec says for every list endpoint: filters combine with AND across parameters and OR within one parameter's
comma-separated list. An empty value is no filter (the spec's "leave this blank to get results matching all values").

Filters that select few records out of many (emails, remote ids) are *indexed*: the collection keeps a key -> ids
map for them, so a lookup never scans the collection. The others are evaluated on each record while a page is
collected, which is cheap whenever they match a fair share of records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from relay.simulator.clock import parse_timestamp_ms

Record = dict[str, Any]
Extract = Callable[[Record], Iterable[Any]]


class Filter:
    """One query parameter. ``parse`` raises ``ValueError`` (a 400 ``PLATFORM.INPUT_INVALID``) for a bad value."""

    param: str
    indexed: bool = False

    def parse(self, raw: str) -> Any:
        raise NotImplementedError

    def matches(self, record: Record, value: Any) -> bool:
        raise NotImplementedError

    def keys(self, record: Record) -> Iterable[str]:
        """Index keys of a record (only for indexed filters)."""
        return ()


@dataclass(frozen=True)
class AnyOf(Filter):
    """Matches when any value extracted from the record is among the requested ones."""

    param: str
    extract: Extract
    multiple: bool = True
    case_insensitive: bool = False
    allowed: frozenset[str] | None = None
    indexed: bool = False

    def _normal(self, value: str) -> str:
        return value.lower() if self.case_insensitive else value

    def parse(self, raw: str) -> frozenset[str]:
        values = [v.strip() for v in raw.split(",")] if self.multiple else [raw.strip()]
        values = [v for v in values if v]
        if self.allowed is not None:
            unknown = sorted(set(values) - self.allowed)
            if unknown:
                raise ValueError(f"{self.param}: {', '.join(unknown)} not one of {', '.join(sorted(self.allowed))}")
        return frozenset(self._normal(v) for v in values)

    def matches(self, record: Record, value: frozenset[str]) -> bool:
        return any(isinstance(v, str) and self._normal(v) in value for v in self.extract(record))

    def keys(self, record: Record) -> Iterable[str]:
        return [self._normal(v) for v in self.extract(record) if isinstance(v, str)]


@dataclass(frozen=True)
class Contains(Filter):
    """Case-insensitive substring of one string field (``name_contains``)."""

    param: str
    field: str

    def parse(self, raw: str) -> str:
        return raw.strip().lower()

    def matches(self, record: Record, value: str) -> bool:
        text = record.get(self.field)
        return isinstance(text, str) and value in text.lower()


@dataclass(frozen=True)
class OnOrAfter(Filter):
    """A timestamp field at or after the given instant (``remote_created_after``)."""

    param: str
    field: str

    def parse(self, raw: str) -> int:
        return parse_timestamp_ms(raw.strip())

    def matches(self, record: Record, value: int) -> bool:
        stamp = record.get(self.field)
        return isinstance(stamp, str) and parse_timestamp_ms(stamp) >= value


@dataclass(frozen=True)
class CustomField(Filter):
    """``custom_fields={"key": value}``: one custom field equal to a string, number, boolean or null."""

    param: str

    def parse(self, raw: str) -> tuple[str, Any]:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{self.param} must be a JSON object: {exc}") from None
        if not isinstance(parsed, dict) or len(parsed) != 1:
            raise ValueError(f"{self.param} must be a JSON object with exactly one key")
        ((key, value),) = parsed.items()
        if isinstance(value, dict | list):
            raise ValueError(f"{self.param}: the value must be a string, number, boolean or null")
        return key, value

    def matches(self, record: Record, value: tuple[str, Any]) -> bool:
        fields = record.get("custom_fields")
        key, wanted = value
        return isinstance(fields, dict) and key in fields and fields[key] == wanted


def field(name: str) -> Extract:
    """Extract one top-level field."""
    return lambda record: (record.get(name),)


def nested(list_field: str, *path: str) -> Extract:
    """Extract ``path`` from every element of the list ``list_field`` (``email_addresses`` -> ``email_address``)."""

    def extract(record: Record) -> Iterable[Any]:
        values = []
        for item in record.get(list_field) or ():
            for step in path:
                item = item.get(step) if isinstance(item, dict) else None
            values.append(item)
        return values

    return extract


REMOTE_IDS = AnyOf("remote_ids", field("remote_id"), indexed=True)
"""Every list endpoint has ``remote_ids``; exact match, indexed."""

"""Structured logs: one JSON object per line on stdout (``RELAY_LOG_FORMAT=json``), or a readable line for local runs
(``console``). Context travels in ``extra={...}`` (integration, resource, code, ...), never in the message text, so
log pipelines can filter on it.

Secrets never reach a log line: the configuration holds them in :class:`relay.secret.Secret`, whose ``str`` is a mask,
and :class:`RedactingFilter` removes any configured secret value that still slipped into a message or an extra field.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from relay.secret import MASK, MIN_MASKED_SECRET

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def redact(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` with every secret in ``secrets`` masked: a string, the strings inside lists, tuples and dicts, and the
    text of anything else (an exception passed as an extra, say), which is what a log line would show of it."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item, secrets) for item in value]
    return redact(str(value), secrets)


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The record's traceback: as the redacting filter left it, or formatted now when no filter ran."""
    if record.exc_text:
        return record.exc_text
    return formatter.formatException(record.exc_info) if record.exc_info else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(_extras(record))
        if exception := _exception_text(self, record):
            entry["exception"] = exception
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        context = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}" + (f"  {context}" if context else "")
        if exception := _exception_text(self, record):
            line += "\n" + exception
        return line


class RedactingFilter(logging.Filter):
    """Replaces every known secret value by a mask: in the message, in extra fields (nested ones too) and in the
    traceback, which is formatted here, masked, and kept as the record's ``exc_text``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # A secret of one to three characters would mask those characters wherever they stand, garbling every line;
        # configuration warns about such a secret at start-up instead (it is too short to be one).
        self._secrets = [s for s in secrets if len(s) >= MIN_MASKED_SECRET]
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg = redact(record.getMessage(), self._secrets)
        record.args = None
        for key, value in _extras(record).items():
            setattr(record, key, redact(value, self._secrets))
        if record.exc_info or record.exc_text:
            record.exc_text = redact(_exception_text(self._formatter, record), self._secrets)
        return True


def configure_logging(fmt: str = "json", level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every retried request at WARNING/ERROR; the relay reports what matters itself.
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.ERROR))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

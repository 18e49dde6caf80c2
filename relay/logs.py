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
from collections.abc import Iterable
from typing import Any

import orjson

from relay.secret import MASK

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        context = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}" + (f"  {context}" if context else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RedactingFilter(logging.Filter):
    """Replaces every known secret value by a mask, in the message and in extra fields."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 4]

    def _redact(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, MASK)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg = self._redact(record.getMessage())
        record.args = None
        for key, value in _extras(record).items():
            setattr(record, key, self._redact(value))
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

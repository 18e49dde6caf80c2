"""Time for the simulator: an injectable clock and the three formats Kombo uses.

Everything in the simulator that needs "now" asks a :data:`Clock` (a callable returning an aware UTC ``datetime``),
so tests can freeze or step time with :class:`ManualClock` instead of sleeping. Internally times are integer
milliseconds since the epoch, the resolution of Kombo's timestamps.

Formats:

* record timestamps (``changed_at``, ``remote_deleted_at``, ...): ISO 8601 with milliseconds and ``Z``,
  ``2022-08-07T14:01:29.196Z``, exactly as JavaScript's ``Date.toISOString`` and the spec's examples; the relay
  reads and writes the same form, so both use :func:`relay.timestamps.format_timestamp_ms`;
* the ``Date`` response header: an HTTP-date (RFC 9110, one-second resolution) of the server clock;
* the ``updated_after`` query parameter: the spec's pattern
  ``^\\d{4}-\\d{2}-\\d{2}(T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?)?Z?$``, so a bare date and a missing ``Z`` are
  accepted; both mean UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIMESTAMP_PATTERN = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?)?Z?$")


def wall_clock() -> datetime:
    """The default clock: the machine's time in UTC."""
    return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to, for tests: ``clock.advance(1.5)``, ``clock.set(datetime(...))``."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = _as_utc(start) if start is not None else datetime(2025, 1, 6, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward by ``seconds`` and return the new time."""
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = _as_utc(when)


def _as_utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("clock times must be timezone-aware")
    return when.astimezone(UTC)


def to_ms(when: datetime) -> int:
    """Milliseconds since the epoch (sub-millisecond parts are dropped, as JavaScript dates do)."""
    delta = _as_utc(when) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def http_date(when: datetime) -> str:
    """``Sun, 07 Aug 2022 14:01:29 GMT``: the format of the ``Date`` header."""
    return format_datetime(_as_utc(when).replace(microsecond=0), usegmt=True)


def parse_timestamp_ms(text: str) -> int:
    """Parse an ``updated_after``-style timestamp into milliseconds, rounding a sub-millisecond fraction *up*.

    Rounding up keeps ``record_ms >= result`` equivalent to "the record changed at or after the instant given":
    a record stamped ``.123`` did not change at or after ``.1234``. Raises ``ValueError`` on anything that does not
    match the spec's pattern or is not a real date.
    """
    match = _TIMESTAMP_PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a timestamp like 2024-01-31T12:00:00.000Z or a date like 2024-01-31")
    year, month, day, hour, minute, second, fraction = match.groups()
    when = datetime(
        int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), tzinfo=UTC
    )  # raises ValueError for a day or hour that does not exist
    fraction = fraction or ""
    ms = int((fraction + "000")[:3])
    if fraction[3:].strip("0"):
        ms += 1
    return to_ms(when) + ms

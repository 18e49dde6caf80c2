"""Kombo's timestamps: RFC 3339 text to epoch milliseconds and back, ``2024-01-02T03:04:05.678Z`` being the form
Kombo sends and the one events carry.

What belongs here: parsing and formatting those timestamps, nothing else. Pure and dependency-free, so the diff
engine, the event encoder, the source client and the simulator all share one implementation (the fastest one).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))",
    re.ASCII,
)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_MS_PER_DAY: Final = 86_400_000
_MIN_MS: Final = (date(1, 1, 1).toordinal() - _EPOCH_ORDINAL) * _MS_PER_DAY
_MAX_MS: Final = (date(9999, 12, 31).toordinal() - _EPOCH_ORDINAL + 1) * _MS_PER_DAY - 1
_EPOCH_NAIVE: Final = datetime(1970, 1, 1)
_ONE_MS: Final = timedelta(milliseconds=1)
_fromisoformat: Final = datetime.fromisoformat


@lru_cache(maxsize=4096)  # a page's times are parsed twice: when the source client validates it, then in its diff
def parse_timestamp_ms(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 timestamp (``2024-01-02T03:04:05.678Z``, ``...05+02:00``, ``...05Z``).

    A timezone is required: a naive time is ambiguous. Fractions finer than a millisecond are truncated, so a time
    never moves into the next millisecond. A leap second (``:60``) counts as the first millisecond of the next
    minute. Raises ValueError for anything else, including times outside years 1 to 9999 in UTC.
    """
    # Fast path for the form Kombo sends (``2024-01-02T03:04:05.678Z``): every separator checked here, every digit
    # by fromisoformat (ASCII digits only), so it accepts exactly what the pattern below accepts in this form.
    if (
        len(text) == 24
        and text[23] == "Z"
        and text[19] == "."
        and text[10] == "T"
        and text[4] == "-"
        and text[7] == "-"
        and text[13] == ":"
        and text[16] == ":"
    ):
        try:
            moment = _fromisoformat(text[:23])
        except ValueError:
            pass  # a leap second, or not a time at all: the general path decides
        else:
            if moment.tzinfo is None and text[20:23].isdigit() and text.isascii():
                return (moment - _EPOCH_NAIVE) // _ONE_MS
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp with a timezone: {text[:64]!r}")
    year, month, day, hour_text, minute_text, second_text, fraction, zulu, sign, offset_hours, offset_minutes = (
        match.groups()
    )
    hour, minute, second = int(hour_text), int(minute_text), int(second_text)
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"time of day out of range: {text[:64]!r}")
    days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL  # ValueError for 2024-02-30 etc.
    millis = int(fraction[:3].ljust(3, "0")) if fraction else 0
    offset_ms = 0
    if not zulu:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise ValueError(f"timezone offset out of range: {text[:64]!r}")
        offset_ms = (int(offset_hours) * 60 + int(offset_minutes)) * 60_000 * (1 if sign == "+" else -1)
    result = days * _MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + millis - offset_ms
    if not _MIN_MS <= result <= _MAX_MS:
        raise ValueError(f"timestamp outside years 1 to 9999 UTC: {text[:64]!r}")
    return result


def format_timestamp_ms(epoch_ms: int) -> str:
    """RFC 3339 in UTC with milliseconds (``2024-01-02T03:04:05.678Z``): the inverse of :func:`parse_timestamp_ms`."""
    days, millis_of_day = divmod(epoch_ms, _MS_PER_DAY)
    seconds_of_day, millis = divmod(millis_of_day, 1000)
    hours, seconds_of_hour = divmod(seconds_of_day, 3600)
    minutes, seconds = divmod(seconds_of_hour, 60)
    return "%sT%02d:%02d:%02d.%03dZ" % (_iso_day(days), hours, minutes, seconds, millis)  # noqa: UP031 - faster


@lru_cache(maxsize=4096)
def _iso_day(days: int) -> str:
    return date.fromordinal(days + _EPOCH_ORDINAL).isoformat()


def formatted_text(text: Any) -> str | None:
    """``text`` if it is a timestamp already in :func:`format_timestamp_ms`'s form, else None (format it).

    For a ``text`` that :func:`parse_timestamp_ms` accepted, these checks are enough: 24 characters ending in ``Z``
    with the ``.`` and ``T`` in place leave exactly three fraction digits and fixed-width fields, and a leap second
    (``:60``), which parsing moves to the next minute, is the one other form excluded.
    """
    if (
        type(text) is str
        and len(text) == 24
        and text[23] == "Z"
        and text[19] == "."
        and text[10] == "T"
        and text[17] != "6"
    ):
        return text
    return None

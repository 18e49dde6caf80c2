"""Kombo's timestamps: parsing, formatting, and recognising text already in the event form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.timestamps import format_timestamp_ms, formatted_text, parse_timestamp_ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2024-01-02T03:04:05.678Z", 1_704_164_645_678),
        ("2024-01-02T03:04:05.678+00:00", 1_704_164_645_678),
        ("2024-01-02T05:04:05.678+02:00", 1_704_164_645_678),
        ("2024-01-02T00:04:05.678-0300", 1_704_164_645_678),
        ("2024-01-02t03:04:05.678z", 1_704_164_645_678),
        ("2024-01-02T03:04:05Z", 1_704_164_645_000),
        ("2024-01-02T03:04:05.6789999Z", 1_704_164_645_678),  # truncated, never rounded up
        ("2024-01-02T03:04:05.6Z", 1_704_164_645_600),
        ("2016-12-31T23:59:60Z", 1_483_228_800_000),  # a leap second is the next minute's first instant
        ("1969-12-31T23:59:59.999Z", -1),
        ("0001-01-01T00:00:00Z", -62_135_596_800_000),
    ],
)
def test_parse_timestamp_ms(text: str, expected: int) -> None:
    assert parse_timestamp_ms(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "2024-01-02",
        "2024-01-02T03:04:05",  # no timezone: ambiguous
        "2024-01-02T03:04:05.Z",
        "2024-02-30T00:00:00Z",
        "2024-01-02T24:00:00Z",
        "2024-01-02T03:60:00Z",
        "2024-01-02T03:04:05+24:00",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "\uff12\uff10\uff12\uff14-01-02T03:04:05Z",  # full-width digits
        " 2024-01-02T03:04:05Z",
        "2024-01-02T03:04:05Z\n",
    ],
)
def test_parse_timestamp_ms_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"timestamp|range|date|day|month|year"):
        parse_timestamp_ms(text)


@given(st.integers(parse_timestamp_ms("0001-01-01T00:00:00Z"), parse_timestamp_ms("9999-12-31T23:59:59.999Z")))
def test_format_and_parse_are_inverse(epoch_ms: int) -> None:
    assert parse_timestamp_ms(format_timestamp_ms(epoch_ms)) == epoch_ms


@pytest.mark.parametrize(
    "text",
    [
        "2016-12-31T23:59:60.000Z",  # a leap second: fromisoformat refuses it, the general path takes it
        "2024-01-02T03:04:05.+00Z",  # fromisoformat would read "+00" as a timezone
        "2024-02-30T00:00:00.000Z",
        "2024-01-02T24:00:00.000Z",
        "2024-01-0٣T03:04:05.678Z",  # an Arabic-Indic digit
        "2024-01-02T03:04:05.67aZ",
    ],
)
def test_the_fast_timestamp_path_accepts_what_the_pattern_accepts(text: str) -> None:
    """``...SS.mmmZ`` takes a fast path; it must agree with the general one (reached here through a lower-case z)."""
    try:
        expected: int | str = parse_timestamp_ms(text[:-1] + "z")
    except ValueError:
        expected = "refused"
    try:
        fast: int | str = parse_timestamp_ms(text)
    except ValueError:
        fast = "refused"
    assert fast == expected


@st.composite
def timestamp_texts(draw: st.DrawFn) -> str:
    """Texts near the RFC 3339 forms: any fraction length, offsets, lower-case separators, leap seconds."""
    day = f"{draw(st.integers(1, 9999)):04d}-{draw(st.integers(1, 12)):02d}-{draw(st.integers(1, 31)):02d}"
    clock = ":".join(f"{draw(st.integers(0, limit)):02d}" for limit in (24, 59, 60))
    fraction = draw(st.sampled_from(["", "."])) + draw(st.text("0123456789", max_size=6))
    zone = draw(st.sampled_from(["Z", "z", "+00:00", "-01:30", "+23:59", ""]))
    return day + draw(st.sampled_from("Tt")) + clock + fraction + zone


@given(timestamp_texts())
def test_a_source_time_is_reused_only_when_it_is_the_event_form(text: str) -> None:
    try:
        epoch_ms = parse_timestamp_ms(text)
    except ValueError:
        return
    reused = formatted_text(text)
    assert reused is None or reused == format_timestamp_ms(epoch_ms) == text


@given(st.integers(parse_timestamp_ms("0001-01-01T00:00:00Z"), parse_timestamp_ms("9999-12-31T23:59:59.999Z")))
def test_every_formatted_time_is_reused(epoch_ms: int) -> None:
    text = format_timestamp_ms(epoch_ms)
    assert formatted_text(text) == text

"""The view the next page is diffed against: remembered entities with pages not yet committed laid over them."""

from __future__ import annotations

from relay.entity_table import EntityTable
from relay.pending import Overlay


def test_an_overlay_reads_and_iterates_as_the_merged_mapping() -> None:
    base = EntityTable({"a": b"1", "b": b"2", "c": b"3"})
    top = {"b": b"22", "d": b"4"}
    overlay = Overlay(top, base)
    merged = {**base, **top}
    assert dict(overlay.items()) == merged
    assert sorted(overlay.items()) == sorted(merged.items())  # each key once
    assert len(overlay) == len(merged)
    assert overlay.get("b") == b"22"
    assert overlay["a"] == b"1"
    assert "d" in overlay
    assert overlay.get("e") is None

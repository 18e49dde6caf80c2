"""Pages of one poll that are prepared but not yet applied to memory, and memory as it will be once they are.

Rule: this module holds what a poll keeps between diffing a page and remembering it, and nothing else: the prepared
page (its counts, state delta, new shapes, serialized messages and checkpoint), the pages still committing, and the
read-only views the next page is diffed against. No I/O, no Kafka, no asyncio: the pipeline decides when a page
commits; this module only keeps the books.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from relay import diff
from relay.sink import OutMessage
from relay.state import Checkpoint, PollKind


@dataclass(slots=True)
class Prepared:
    """A page diffed and its events serialized, not yet committed."""

    kind: PollKind
    records: int
    checkpoint: Checkpoint
    suppressed_by_reason: dict[str, int]
    events_by_kind: dict[str, int]
    delta: dict[str, bytes]
    new_shapes: list[tuple[int, diff.Shape]]
    messages: list[OutMessage]

    def count_events(self, changes: Iterable[diff.Change]) -> None:
        """Add ``changes`` (the vanished entities a reconciliation adds to its last page) to the events counted."""
        for kind, count in events_by_kind(changes).items():
            self.events_by_kind[kind] = self.events_by_kind.get(kind, 0) + count

    @property
    def changes_nothing(self) -> bool:
        """No event, no remembered fingerprint and no shape: only the checkpoint moves."""
        return not self.events_by_kind and not self.delta and not self.new_shapes


def events_by_kind(changes: Iterable[diff.Change]) -> dict[str, int]:
    per_kind: dict[str, int] = {}
    for change in changes:
        per_kind[change.kind] = per_kind.get(change.kind, 0) + 1
    return per_kind


class Unapplied:
    """What the pages still committing will change, in page order: their fingerprints (a later page's win) and their
    new shapes. A page leaves once it is applied to memory, except the fingerprints a later page overwrote."""

    __slots__ = ("delta", "shapes")

    def __init__(self) -> None:
        self.delta: dict[str, bytes] = {}
        self.shapes: list[tuple[int, diff.Shape]] = []

    def add(self, prepared: Prepared) -> None:
        self.delta.update(prepared.delta)
        self.shapes.extend(prepared.new_shapes)

    def remove(self, prepared: Prepared) -> None:
        delta = self.delta
        for entity_id, fingerprint in prepared.delta.items():
            if delta.get(entity_id) is fingerprint:  # the same object: no later page changed this entity
                del delta[entity_id]
        if prepared.new_shapes:
            gone = {shape_id for shape_id, _ in prepared.new_shapes}
            self.shapes = [shape for shape in self.shapes if shape[0] not in gone]

    def entities_over(self, remembered: Mapping[str, bytes]) -> Mapping[str, bytes]:
        """The fingerprints the next page is diffed against: ``remembered`` with these pages laid over it."""
        return Overlay(self.delta, remembered) if self.delta else remembered

    def shapes_over(self, remembered: diff.ShapeTable) -> diff.ShapeTable:
        """The shapes the next page is diffed against: ``remembered`` and those these pages add."""
        return with_shapes(remembered, self.shapes) if self.shapes else remembered


class Overlay(Mapping[str, bytes]):
    """Remembered fingerprints with a page's delta (not yet committed) laid over them: what the next page of the
    same pair is diffed against while that page commits. Read-only; nothing is copied."""

    __slots__ = ("_base", "_top")

    def __init__(self, top: Mapping[str, bytes], base: Mapping[str, bytes]) -> None:
        self._top = top
        self._base = base

    def get(self, key: str, default: Any = None) -> Any:
        found = self._top.get(key)
        return self._base.get(key, default) if found is None else found

    def __getitem__(self, key: str) -> bytes:
        found = self._top.get(key)
        return self._base[key] if found is None else found

    def __contains__(self, key: object) -> bool:
        return key in self._top or key in self._base

    def __iter__(self) -> Iterator[str]:
        yield from self._top
        yield from (key for key in self._base if key not in self._top)

    def __len__(self) -> int:
        return len(self._base) + sum(1 for key in self._top if key not in self._base)

    def items(self) -> ItemsView[str, bytes]:
        return _OverlayItems(self)

    def layers(self) -> tuple[Mapping[str, bytes], Mapping[str, bytes]]:
        """(top, base)."""
        return self._top, self._base


class _OverlayItems(ItemsView[str, bytes]):
    """``Overlay.items()``: each layer's own items, not a lookup per key (the remembered entities are packed, see
    :mod:`relay.entity_table`, and a lookup there costs far more than a step of its own iteration)."""

    _mapping: Overlay

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        top, base = self._mapping.layers()
        yield from top.items()
        yield from ((key, value) for key, value in base.items() if key not in top)


def with_shapes(shapes: diff.ShapeTable, pending: list[tuple[int, diff.Shape]]) -> diff.ShapeTable:
    """A copy of ``shapes`` that also knows ``pending`` (shapes of a page not yet committed)."""
    copy = diff.ShapeTable()
    for shape_id, names in (*shapes.shape_records(), *pending):
        copy.add_known(shape_id, names)
    return copy

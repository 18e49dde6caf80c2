"""The diff engine: one test per rule, then properties over random histories."""

from __future__ import annotations

import copy
import itertools
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import diff
from relay.diff import DiffResult, ShapeTable
from relay.errors import InvalidPage, StateError
from relay.events import Change, event_id
from relay.jsonenc import encode_json
from relay.timestamps import format_timestamp_ms, parse_timestamp_ms
from tests.unit.support import apply_result, check_fingerprint

INTEGRATION = "acme"
RESOURCE = "ats/users"
T0 = "2024-01-01T00:00:00.000Z"
T1 = "2024-01-01T00:00:01.000Z"
T2 = "2024-01-01T00:00:02.000Z"


def record(
    entity_id: str = "u1", *, at: str | None = T0, deleted_at: str | None = None, **fields: Any
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": entity_id,
        "remote_id": f"remote-{entity_id}",
        "changed_at": at,
        "remote_deleted_at": deleted_at,
        "name": "Ada",
        "nested": {"tags": ["a"], "level": 1},
    }
    base.update(fields)
    return base


@dataclass
class Memory:
    """What the caller keeps for one pair: it applies each result as if Kafka had committed it."""

    state: dict[str, bytes] = field(default_factory=dict)
    shapes: ShapeTable = field(default_factory=ShapeTable)

    def feed(self, *records: dict[str, Any], snapshot: bool = False, emit_snapshot: bool = True) -> DiffResult:
        result = diff.diff_page(
            self.state,
            self.shapes,
            list(records),
            integration=INTEGRATION,
            resource=RESOURCE,
            snapshot=snapshot,
            emit_snapshot=emit_snapshot,
        )
        apply_result(self.state, self.shapes, result)
        return result

    def vanish(self, seen: Iterable[str], *, complete: bool = True, fraction: float = 1.0) -> diff.VanishResult:
        result = diff.find_vanished(
            self.state,
            set(seen),
            integration=INTEGRATION,
            resource=RESOURCE,
            complete=complete,
            max_vanish_fraction=fraction,
        )
        apply_result(self.state, self.shapes, result)
        return result


def only(result: DiffResult | diff.VanishResult) -> Change:
    assert len(result.changes) == 1, result.changes
    return result.changes[0]


# ------------------------------------------------------------------------------------------------ created/updated


def test_unseen_live_record_is_created() -> None:
    memory = Memory()
    incoming = record()
    change = only(memory.feed(incoming))
    assert change.kind == "created"
    assert change.record is incoming
    assert change.entity_id == "u1"
    assert (change.version, change.changed_fields, change.snapshot, change.restored, change.reason) == (
        1,
        None,
        False,
        False,
        None,
    )
    assert change.time_ms == parse_timestamp_ms(T0)
    assert change.content_hash == diff.content_hash(memory.state["u1"])
    assert not diff.is_deleted(memory.state["u1"])


def test_identical_refetch_is_suppressed() -> None:
    memory = Memory()
    memory.feed(record())
    result = memory.feed(record())
    assert (result.changes, result.delta, result.suppressed) == ([], {}, 1)


def test_key_order_does_not_make_content_differ() -> None:
    memory = Memory()
    memory.feed(record())
    reordered = dict(reversed(list(record().items())))
    assert memory.feed(reordered).suppressed == 1


def test_changed_content_is_updated_with_changed_fields() -> None:
    memory = Memory()
    memory.feed(record())
    change = only(memory.feed(record(at=T1, name="Grace")))
    assert change.kind == "updated"
    assert change.changed_fields == ("changed_at", "name")
    assert change.version == 2
    assert change.time_ms == parse_timestamp_ms(T1)


def test_nested_only_change_without_changed_at_is_updated() -> None:
    memory = Memory()
    memory.feed(record())
    change = only(memory.feed(record(nested={"tags": ["a", "b"], "level": 1})))
    assert change.kind == "updated"
    assert change.changed_fields == ("nested",)


def test_fields_appearing_and_disappearing_are_changed_fields() -> None:
    memory = Memory()
    memory.feed(record(email="a@example.com"))
    without_email = record(phone=None)
    change = only(memory.feed(without_email))
    assert change.changed_fields == ("email", "phone")


def test_value_type_change_is_a_change() -> None:
    # 1, 1.0 and true are equal in Python but different JSON.
    memory = Memory()
    memory.feed(record(score=1))
    assert only(memory.feed(record(score=1.0))).changed_fields == ("score",)
    assert only(memory.feed(record(score=True))).changed_fields == ("score",)


# ------------------------------------------------------------------------------------------------ delete/restore


def test_newly_set_remote_deleted_at_is_deleted_at_that_time() -> None:
    memory = Memory()
    memory.feed(record())
    change = only(memory.feed(record(at=T1, deleted_at=T2)))
    assert change.kind == "deleted"
    assert change.time_ms == parse_timestamp_ms(T2)
    assert change.changed_fields is None
    assert diff.is_deleted(memory.state["u1"])


def test_changes_to_deleted_record_are_remembered_without_event() -> None:
    memory = Memory()
    memory.feed(record())
    memory.feed(record(deleted_at=T1))
    before = memory.state["u1"]
    result = memory.feed(record(at=T1, deleted_at=T1, name="Grace"))
    assert (result.changes, result.deleted_changes) == ([], 1)
    assert diff.content_hash(memory.state["u1"]) != diff.content_hash(before)
    assert diff.version(memory.state["u1"]) == diff.version(before)


def test_restore_is_created_with_restored() -> None:
    memory = Memory()
    memory.feed(record())
    memory.feed(record(at=T1, deleted_at=T1))
    change = only(memory.feed(record(at=T2)))
    assert (change.kind, change.restored, change.version) == ("created", True, 3)


def test_restore_with_the_content_from_before_the_deletion_is_created() -> None:
    memory = Memory()
    memory.feed(record())
    memory.feed(record(deleted_at=T1))
    memory.feed(record(deleted_at=T1, name="changed while deleted"))
    change = only(memory.feed(record()))
    assert (change.kind, change.restored) == ("created", True)


def test_unseen_deleted_record_is_remembered_without_event() -> None:
    memory = Memory()
    result = memory.feed(record(deleted_at=T0))
    assert (result.changes, result.deleted_changes) == ([], 1)
    assert diff.is_deleted(memory.state["u1"])
    assert diff.version(memory.state["u1"]) == 0


def test_first_seen_deleted_then_live_is_created_not_restored() -> None:
    # `restored` promises the consumer it saw this entity before; it never did.
    memory = Memory()
    memory.feed(record(deleted_at=T0))
    change = only(memory.feed(record(at=T1)))
    assert (change.kind, change.restored, change.version) == ("created", False, 1)


# ------------------------------------------------------------------------------------------------------- stale


def test_stale_record_is_ignored_and_state_unchanged() -> None:
    memory = Memory()
    memory.feed(record(at=T2, name="new"))
    remembered = dict(memory.state)
    result = memory.feed(record(at=T1, name="old"))
    assert (result.changes, result.delta, result.stale) == ([], {}, 1)
    assert memory.state == remembered


def test_stale_deletion_is_ignored() -> None:
    memory = Memory()
    memory.feed(record(at=T2))
    assert memory.feed(record(at=T1, deleted_at=T1)).stale == 1
    assert not diff.is_deleted(memory.state["u1"])


def test_same_changed_at_with_other_content_is_a_change_not_stale() -> None:
    memory = Memory()
    memory.feed(record(at=T1))
    assert only(memory.feed(record(at=T1, name="Grace"))).kind == "updated"


@pytest.mark.parametrize(("first", "second"), [(None, T0), (T1, None), (None, None)])
def test_missing_changed_at_is_never_stale(first: str | None, second: str | None) -> None:
    memory = Memory()
    memory.feed(record(at=first))
    change = only(memory.feed(record(at=second, name="Grace")))
    assert change.kind == "updated"
    assert change.time_ms == (None if second is None else parse_timestamp_ms(second))


# --------------------------------------------------------------------------------------------------- the page


def test_diff_mutates_neither_state_nor_shapes() -> None:
    memory = Memory()
    memory.feed(record("a"))
    state_before, shapes_before = copy.deepcopy(memory.state), memory.shapes.to_bytes()
    diff.diff_page(
        memory.state,
        memory.shapes,
        [record("a", name="x"), record("b", extra=1), record("c", deleted_at=T0)],
        integration=INTEGRATION,
        resource=RESOURCE,
        snapshot=False,
    )
    assert memory.state == state_before
    assert memory.shapes.to_bytes() == shapes_before


def test_entity_twice_in_a_page_sees_its_earlier_self() -> None:
    memory = Memory()
    result = memory.feed(record(), record(), record(at=T1, name="Grace"), record(at=T0, name="stale"))
    assert [c.kind for c in result.changes] == ["created", "updated"]
    assert [c.version for c in result.changes] == [1, 2]
    assert (result.suppressed, result.stale) == (1, 1)
    assert result.changes[1].changed_fields == ("changed_at", "name")


def test_new_shape_is_reported_once_and_usable_within_the_page() -> None:
    memory = Memory()
    result = memory.feed(record("a", extra=1), record("a", extra=2), record("b", extra=3))
    assert len(result.new_shapes) == 1
    assert result.changes[1].changed_fields == ("extra",)
    shape_id, names = result.new_shapes[0]
    assert names == tuple(sorted(record(extra=1)))
    assert memory.feed(record("c", extra=4)).new_shapes == []
    assert diff.shape_id(memory.state["c"]) == shape_id


def test_field_names_are_data() -> None:
    odd_names = ["", "💥", "x" * 10_000, "a,b", "\x00", '"', "__class__", "id.name", "changed_fields"]
    memory = Memory()
    memory.feed({**record(), **dict.fromkeys(odd_names, 1)})
    change = only(memory.feed({**record(), **dict.fromkeys(odd_names, 2)}))
    assert change.changed_fields == tuple(sorted(odd_names))
    assert set(diff.field_hashes(memory.state["u1"], memory.shapes)) == set(record()) | set(odd_names)


def test_integers_beyond_64_bits_are_diffed() -> None:
    memory = Memory()
    memory.feed(record(big=2**80))
    assert memory.feed(record(big=2**80)).suppressed == 1
    assert only(memory.feed(record(big=2**80 + 1))).changed_fields == ("big",)


def test_unencodable_record_fails_the_page_cleanly() -> None:
    with pytest.raises(InvalidPage, match="u1") as caught:
        Memory().feed(record(name="\ud800"))
    assert caught.value.code == "RELAY.UNENCODABLE_RECORD"
    assert (caught.value.integration, caught.value.resource) == (INTEGRATION, RESOURCE)


def test_unparseable_timestamp_fails_the_page_cleanly() -> None:
    with pytest.raises(InvalidPage) as caught:
        Memory().feed(record(at="yesterday"))
    assert caught.value.code == "RELAY.INVALID_TIMESTAMP"


# ---------------------------------------------------------------------------------------------------- snapshot


def test_snapshot_events_are_marked() -> None:
    memory = Memory()
    change = only(memory.feed(record(), snapshot=True))
    assert (change.kind, change.snapshot) == ("created", True)
    assert not only(memory.feed(record(name="later"))).snapshot


def test_silent_snapshot_builds_state_only() -> None:
    memory = Memory()
    result = memory.feed(record("a"), record("b", deleted_at=T0), snapshot=True, emit_snapshot=False)
    assert (result.changes, result.snapshot_skipped, result.deleted_changes) == ([], 1, 1)
    assert set(memory.state) == {"a", "b"}
    assert memory.feed(record("a")).suppressed == 1
    change = only(memory.feed(record("a", name="Grace")))
    assert (change.kind, change.version) == ("updated", 1)


def test_suppressed_by_reason_uses_the_metric_labels() -> None:
    result = Memory().feed(record(), record(), snapshot=True, emit_snapshot=False)
    assert result.suppressed_by_reason() == {"noop": 1, "stale": 0, "deleted": 0, "snapshot_skipped": 1}


# --------------------------------------------------------------------------------------------------- event ids


def test_event_ids_are_deterministic_uuids() -> None:
    pages = [[record()], [record(at=T1, name="B")], [record(at=T1, name="B", deleted_at=T2)]]
    first, second = Memory(), Memory()
    ids_first = [c.event_id for page in pages for c in first.feed(*page).changes]
    ids_second = [c.event_id for page in pages for c in second.feed(*page).changes]
    assert ids_first == ids_second
    assert len(set(ids_first)) == 3
    parsed = uuid.UUID(ids_first[0])
    assert (str(parsed), parsed.version, parsed.variant) == (ids_first[0], 8, uuid.RFC_4122)


def test_content_flipping_back_and_forth_gets_distinct_ids() -> None:
    memory = Memory()
    a, b = record(name="A"), record(name="B")
    ids = [only(memory.feed(r)).event_id for r in (a, b, a, b)]
    assert len(set(ids)) == 4


def test_event_id_depends_on_every_part() -> None:
    base = ("acme", "ats/users", "u1", 1, "created", 42)
    variants = [
        ("acme2", "ats/users", "u1", 1, "created", 42),
        ("acme", "ats/jobs", "u1", 1, "created", 42),
        ("acme", "ats/users", "u2", 1, "created", 42),
        ("acme", "ats/users", "u1", 2, "created", 42),
        ("acme", "ats/users", "u1", 1, "updated", 42),
        ("acme", "ats/users", "u1", 1, "created", 43),
        ("acme:ats/users", "", "u1", 1, "created", 42),
    ]
    assert len({event_id(*base), *(event_id(*v) for v in variants)}) == len(variants) + 1  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------- vanished


def live_memory(count: int) -> Memory:
    memory = Memory()
    memory.feed(*(record(f"u{i}") for i in range(count)))
    return memory


def test_vanished_entities_are_deleted_with_reason() -> None:
    memory = live_memory(4)
    before = memory.state["u3"]
    result = memory.vanish(["u0", "u1", "u2"])
    change = only(result)
    assert (change.kind, change.entity_id, change.reason, change.record, change.time_ms) == (
        "deleted",
        "u3",
        "vanished",
        None,
        None,
    )
    assert change.version == diff.version(before) + 1
    assert change.content_hash == diff.content_hash(before)
    assert diff.is_deleted(memory.state["u3"])
    assert diff.is_vanished(memory.state["u3"])
    assert (result.refused, result.would_vanish, result.live) == (None, 1, 4)


def test_vanish_is_refused_after_an_incomplete_fetch() -> None:
    memory = live_memory(4)
    result = memory.vanish(["u0"], complete=False)
    assert (result.changes, result.delta, result.refused, result.would_vanish) == ([], {}, "incomplete", 3)


def test_vanish_is_refused_when_too_many_would_vanish() -> None:
    memory = live_memory(4)
    result = memory.vanish(["u0", "u1"], fraction=0.49)
    assert (result.changes, result.delta, result.refused, result.would_vanish) == ([], {}, "too_many", 2)
    assert memory.vanish(["u0", "u1"], fraction=0.5).refused is None


def test_deleted_entities_neither_vanish_nor_count_as_live() -> None:
    memory = live_memory(2)
    memory.feed(record("gone", deleted_at=T0))
    result = memory.vanish(["u0", "u1"], fraction=0.0)
    assert (result.changes, result.live, result.refused) == ([], 2, None)


def test_vanished_entity_coming_back_unchanged_is_restored() -> None:
    memory = live_memory(2)
    memory.vanish(["u0"])
    change = only(memory.feed(record("u1")))
    assert (change.kind, change.restored, change.version) == ("created", True, 3)
    assert not diff.is_vanished(memory.state["u1"])
    assert memory.feed(record("u1")).suppressed == 1


def test_vanish_rejects_a_nonsense_fraction() -> None:
    with pytest.raises(ValueError, match="max_vanish_fraction"):
        live_memory(1).vanish([], fraction=1.5)


# -------------------------------------------------------------------------------------------------- fingerprints


def test_fingerprint_layout() -> None:
    digest = bytes(range(8))
    fp = diff.make_fingerprint(
        digest, changed_at_ms=1_700_000_000_123, version=7, shape_id=3, deleted=False, field_hashes=[1, 2**16 - 1]
    )
    assert len(fp) == 25 + 2 * 2
    assert fp[:8] == digest
    assert diff.content_hash(fp) == int.from_bytes(digest, "little")
    assert (diff.changed_at_ms(fp), diff.version(fp), diff.shape_id(fp)) == (1_700_000_000_123, 7, 3)
    assert not diff.is_deleted(fp)
    assert not diff.is_vanished(fp)
    shapes = ShapeTable()
    shapes.add_known(3, ("a", "b"))
    assert diff.field_hashes(fp, shapes) == {"a": 1, "b": 2**16 - 1}
    check_fingerprint(fp, shapes)


def test_fingerprint_without_changed_at() -> None:
    fp = diff.make_fingerprint(b"\0" * 8, changed_at_ms=None, version=0, deleted=False)
    assert diff.changed_at_ms(fp) is None


def test_deleted_fingerprints_keep_the_header_only() -> None:
    memory = live_memory(2)
    memory.feed(record("u0", deleted_at=T1))
    memory.vanish(["u0"])
    for fp in memory.state.values():
        assert len(fp) == 25
        assert diff.is_deleted(fp)
        assert diff.field_hashes(fp, memory.shapes) == {}
        check_fingerprint(fp, memory.shapes)
    with pytest.raises(ValueError, match="no shape"):
        diff.make_fingerprint(b"\0" * 8, changed_at_ms=None, version=0, deleted=True, field_hashes=[1])


def test_typical_fingerprint_is_small() -> None:
    memory = Memory()
    memory.feed({**record(), **{f"field_{i}": i for i in range(9)}})  # 15 fields
    assert len(memory.state["u1"]) == 25 + 15 * 2


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00" * 24,
        b"\x00" * 24 + b"\x04",  # unknown flag
        b"\x00" * 25 + b"\x00\x00\x00",  # live, shape of no fields, 3 bytes too many
        b"\x00" * 24 + b"\x01" + b"\x00" * 4,  # deleted, with a field hash
        b"\x00" * 20 + b"\x01\x00\x00\x00\x01",  # deleted, with a shape
    ],
)
def test_check_fingerprint_rejects_garbage(bad: bytes) -> None:
    shapes = ShapeTable()
    shapes.add_known(0, ())
    with pytest.raises(StateError):
        check_fingerprint(bad, shapes)


def test_fingerprint_of_unknown_shape_is_a_state_error() -> None:
    fp = diff.make_fingerprint(b"\0" * 8, changed_at_ms=None, version=0, shape_id=9, deleted=False)
    with pytest.raises(StateError, match="unknown record shape 9"):
        diff.field_hashes(fp, ShapeTable())


# ------------------------------------------------------------------------------------------------------ shapes


def test_shape_table_round_trips_odd_names() -> None:
    table = ShapeTable()
    table.add_known(0, ("", "a", "é", "💥"))
    table.add_known(5, tuple(sorted(["x" * 5000, "\x00", '"]', "a,b"])))
    restored = ShapeTable.from_bytes(table.to_bytes())
    assert list(restored.shape_records()) == list(table.shape_records())
    assert restored.next_id() == 6


def test_shape_table_entries_restore_one_by_one() -> None:
    memory = Memory()
    memory.feed(record("a"), record("b", extra=1))
    restored = ShapeTable()
    for shape_id, names in memory.shapes.shape_records():
        restored.add_known(shape_id, list(names))
    for fp in memory.state.values():
        check_fingerprint(fp, restored)


def test_add_known_is_idempotent_and_refuses_conflicts() -> None:
    table = ShapeTable()
    table.add_known(0, ("a",))
    table.add_known(0, ("a",))
    assert len(table) == 1
    with pytest.raises(StateError, match="conflicts"):
        table.add_known(0, ("b",))
    with pytest.raises(StateError, match="conflicts"):
        table.add_known(1, ("a",))


@pytest.mark.parametrize(
    ("shape_id", "names"),
    [(0, ("b", "a")), (0, ("a", "a")), (0, (1,)), (0, "abc"), (-1, ()), (2**32, ()), ("0", ())],
)
def test_add_known_refuses_malformed_shapes(shape_id: Any, names: Any) -> None:
    with pytest.raises(StateError):
        ShapeTable().add_known(shape_id, names)


@pytest.mark.parametrize("data", [b"", b"{}", b"[[0]]", b'[["0", []]]', b"[[0, 1]]", b"[[0, [1]]]"])
def test_shape_table_from_garbage_is_a_state_error(data: bytes) -> None:
    with pytest.raises(StateError):
        ShapeTable.from_bytes(data)


def test_the_shapes_of_a_pair_are_capped_and_records_beyond_lose_only_their_changed_fields() -> None:
    # A source that gives each record a top-level key of its own would otherwise grow the shape table, kept in
    # memory and in the state topic, by one shape per record.
    cap = diff.MAX_SHAPES_PER_PAIR
    memory = Memory()
    extra = 50
    page = [record(f"u{n}", **{f"field_{n}": n}) for n in range(cap + extra)]
    created = memory.feed(*page)
    assert [change.kind for change in created.changes] == ["created"] * (cap + extra)
    assert len(memory.shapes) == cap + 1  # the cap, and the one shape that stands for any shape beyond it
    for each in memory.state.values():
        check_fingerprint(each, memory.shapes)  # what restoring the state checks

    updated = memory.feed(*[record(f"u{n}", name="Grace", **{f"field_{n}": n}) for n in range(cap + extra)])
    assert [change.kind for change in updated.changes] == ["updated"] * (cap + extra)
    changed = {change.entity_id: change.changed_fields for change in updated.changes}
    assert changed["u0"] == changed[f"u{cap - 1}"] == ("name",)
    assert changed[f"u{cap}"] == changed[f"u{cap + extra - 1}"] == ()  # unknown: the record has no shape
    assert updated.new_shapes == []

    # Exactly once: what is remembered beyond the cap suppresses the same content, and announces a change.
    again = memory.feed(*[record(f"u{n}", name="Grace", **{f"field_{n}": n}) for n in range(cap + extra)])
    assert again.changes == []
    assert again.suppressed == cap + extra
    moved = only(memory.feed(record(f"u{cap}", name="Grace", **{f"field_{cap}": -1, "brand_new": 1})))
    assert (moved.kind, moved.changed_fields) == ("updated", ())
    assert len(memory.shapes) == cap + 1
    assert len(ShapeTable.from_bytes(memory.shapes.to_bytes())) == cap + 1


def test_below_the_cap_a_record_back_from_beyond_it_gets_its_changed_fields_again() -> None:
    memory = Memory()
    cap = diff.MAX_SHAPES_PER_PAIR
    memory.feed(*[record(f"u{n}", **{f"field_{n}": n}) for n in range(cap + 1)])
    # u{cap} is remembered without a shape; its next version has a shape known already (the plain record's is not,
    # but u0 with field_0 is): the update cannot say which fields changed, the one after can.
    first = only(memory.feed(record(f"u{cap}", name="Grace", field_0=0)))
    assert (first.kind, first.changed_fields) == ("updated", ())
    second = only(memory.feed(record(f"u{cap}", name="Lin", field_0=0)))
    assert (second.kind, second.changed_fields) == ("updated", ("name",))


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_narrowing_a_wide_fingerprint_keeps_the_low_16_bits_of_each_hash(first: int, second: int) -> None:
    header = diff.make_fingerprint(b"\1" * 8, changed_at_ms=5, version=2, shape_id=3, deleted=False)
    wide = header + first.to_bytes(4, "little") + second.to_bytes(4, "little")
    narrow = diff.narrow_fingerprint(wide)
    shapes = ShapeTable()
    shapes.add_known(3, ("a", "b"))
    assert diff.field_hashes(narrow, shapes) == {"a": first & 0xFFFF, "b": second & 0xFFFF}
    assert narrow[:25] == header
    deleted = diff.make_fingerprint(b"\1" * 8, changed_at_ms=5, version=2, deleted=True)
    assert diff.narrow_fingerprint(deleted) == deleted


def test_field_hashes_are_16_bits_of_the_crc32() -> None:
    memory = Memory()
    memory.feed(record())
    hashes = diff.field_hashes(memory.state["u1"], memory.shapes)
    assert hashes["name"] == diff.field_hash("Ada") == zlib.crc32(b'"Ada"') & 0xFFFF


# ------------------------------------------------------------------------------------------------- properties

BASE_MS = parse_timestamp_ms("2024-06-01T00:00:00Z")
OPERATIONS = ("update", "nested", "toggle_field", "delete", "restore", "restore_same", "refetch", "stale", "unread")


def at(tick: int) -> str:
    return format_timestamp_ms(BASE_MS + tick * 1000)


@st.composite
def entity_history(draw: st.DrawFn, entity_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The reads of one entity over time, and its final truth (which the last read returns).

    Real changes never move ``changed_at`` backwards; ``nested`` changes keep it. A stale read returns a version
    strictly older than the newest one; an ``unread`` change is one no poll happened to see.
    """
    tick = 0
    current = record(entity_id, at=at(0), deleted_at=at(0) if draw(st.booleans()) else None)
    versions = [(tick, current)]
    last_live = None if current["remote_deleted_at"] else current
    reads = [current]
    for operation in draw(st.lists(st.sampled_from(OPERATIONS), max_size=12)):
        deleted = current["remote_deleted_at"] is not None
        new = dict(current)
        if operation == "refetch":
            reads.append(current)
            continue
        if operation == "stale":
            older = [version for version_tick, version in versions if version_tick < tick]
            if older:
                reads.append(draw(st.sampled_from(older)))
            continue
        if operation in ("update", "unread"):
            tick += 1
            new.update(changed_at=at(tick), name=draw(st.sampled_from(["A", "B", "C"])))
        elif operation == "nested":
            new["nested"] = {"tags": draw(st.lists(st.sampled_from("ab"), max_size=2)), "level": 1}
        elif operation == "toggle_field":
            tick += 1
            new["changed_at"] = at(tick)
            if new.pop("extra", None) is None:
                new["extra"] = draw(st.integers(0, 2))
        elif operation == "delete" and not deleted:
            tick += draw(st.integers(0, 1))
            new.update(changed_at=at(tick), remote_deleted_at=at(tick))
        elif operation == "restore" and deleted:
            tick += 1
            new.update(changed_at=at(tick), remote_deleted_at=None)
        elif operation == "restore_same" and deleted and last_live is not None:
            new = {**last_live, "changed_at": current["changed_at"]}
        else:
            continue
        current = new
        versions.append((tick, current))
        if current["remote_deleted_at"] is None:
            last_live = current
        if operation != "unread":
            reads.append(current)
    reads.append(current)
    return reads, current


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Several entities' reads, interleaved (each entity's in order) and cut into pages at random."""
    per_entity = [draw(entity_history(f"e{i}")) for i in range(draw(st.integers(1, 4)))]
    labels = draw(st.permutations([i for i, (reads, _) in enumerate(per_entity) for _ in reads]))
    queues = [iter(reads) for reads, _ in per_entity]
    stream = [next(queues[label]) for label in labels]
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=len(stream))))
    bounds = [0, *cuts, len(stream)]
    pages = [stream[start:end] for start, end in itertools.pairwise(bounds) if start < end]
    return pages, {truth["id"]: truth for _, truth in per_entity}


def check_lifecycle(events: list[Change], *, announced_from_start: bool) -> None:
    """created, updated*, deleted, created(restored), ...; versions count up from 1; no content twice in a row;
    never backwards in ``changed_at`` (a stale read must not be announced)."""
    status = "absent" if announced_from_start else "unknown"
    for number, event in enumerate(events, start=1):
        assert event.version == number
        allowed = {
            "absent": {("created", False)},
            "unknown": {("created", False), ("updated", False), ("deleted", False)},
            "live": {("updated", False), ("deleted", False)},
            "dead": {("created", True)},
        }[status]
        assert (event.kind, event.restored) in allowed, (status, event)
        status = "dead" if event.kind == "deleted" else "live"
    for earlier, later in itertools.pairwise(events):
        assert earlier.content_hash != later.content_hash
        assert earlier.record is not None
        assert later.record is not None
        assert earlier.record["changed_at"] <= later.record["changed_at"]  # same format: text order is time order


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(0, 3), st.booleans())
def test_random_histories_give_valid_lifecycles(
    history: tuple[list[list[dict[str, Any]]], dict[str, dict[str, Any]]], snapshot_pages: int, emit_snapshot: bool
) -> None:
    pages, truths = history
    memory = Memory()
    events: dict[str, list[Change]] = {entity_id: [] for entity_id in truths}
    silently_seen: set[str] = set()
    for number, page in enumerate(pages):
        snapshot = number < snapshot_pages
        result = memory.feed(*page, snapshot=snapshot, emit_snapshot=emit_snapshot)
        for change in result.changes:
            assert change.snapshot == snapshot
            assert any(change.record is read for read in page)
            events[change.entity_id].append(change)
        if snapshot and not emit_snapshot:
            silently_seen.update(r["id"] for r in page)

    all_ids = [change.event_id for changes in events.values() for change in changes]
    assert len(all_ids) == len(set(all_ids))
    for entity_id, truth in truths.items():
        check_lifecycle(events[entity_id], announced_from_start=entity_id not in silently_seen)
        fingerprint = memory.state[entity_id]
        truly_deleted = truth["remote_deleted_at"] is not None
        assert diff.is_deleted(fingerprint) == truly_deleted
        assert fingerprint.startswith(diff.content_digest(truth))
        if events[entity_id]:
            assert (events[entity_id][-1].kind == "deleted") == truly_deleted
        elif entity_id not in silently_seen:
            assert truly_deleted  # only an entity never seen live can go unannounced


json_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | json_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(json_text, children, max_size=3),
    max_leaves=10,
)
json_objects = st.dictionaries(json_text, json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(json_objects, json_objects)
def test_changed_fields_are_exactly_the_fields_that_differ(before: dict[str, Any], after: dict[str, Any]) -> None:
    def as_record(fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "id": "u1", "changed_at": T0, "remote_deleted_at": None}

    memory = Memory()
    memory.feed(as_record(before))
    result = memory.feed(as_record(after))
    encoded_before = {k: encode_json(v, sort_keys=True) for k, v in as_record(before).items()}
    encoded_after = {k: encode_json(v, sort_keys=True) for k, v in as_record(after).items()}
    differing = sorted(
        k for k in encoded_before.keys() | encoded_after.keys() if encoded_before.get(k) != encoded_after.get(k)
    )
    if not differing:
        assert (result.changes, result.suppressed) == ([], 1)
    else:
        assert only(result).changed_fields == tuple(differing)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=4), st.booleans(), max_size=30),
    st.data(),
    st.floats(0, 1),
    st.booleans(),
)
def test_vanish_arithmetic(entities: dict[str, bool], data: st.DataObject, fraction: float, complete: bool) -> None:
    memory = Memory()
    memory.feed(*(record(entity_id, deleted_at=T0 if deleted else None) for entity_id, deleted in entities.items()))
    seen = data.draw(st.sets(st.sampled_from(sorted(entities))) if entities else st.just(set[str]()))
    live = {entity_id for entity_id, deleted in entities.items() if not deleted}
    missing = live - seen
    result = memory.vanish(seen, complete=complete, fraction=fraction)
    assert (result.live, result.would_vanish) == (len(live), len(missing))
    if not complete:
        assert result.refused == "incomplete"
    elif len(missing) > fraction * len(live):
        assert result.refused == "too_many"
    else:
        assert result.refused is None
        assert {c.entity_id for c in result.changes} == set(result.delta) == missing
        assert all(diff.is_deleted(memory.state[entity_id]) for entity_id in missing)
    if result.refused is not None:
        assert (result.changes, result.delta) == ([], {})

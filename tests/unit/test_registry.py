"""relay.registry without a broker: the record and its validation, the fold (any arrival order of the records folds to
each integration's last by offset), the changes a fold reports, the edits, seeding, the resources of an entry and what
the owner of an integration does when its entry changes."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, NamedTuple

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import UnknownIntegration
from relay.partitioning import partition_for_key
from relay.registry import (
    EMPTY,
    NOT_WRITTEN,
    DefaultResources,
    PairsPlan,
    Registry,
    RegistryChange,
    RegistryEntry,
    UnreadableEntry,
    add,
    fold,
    pause,
    plan_change,
    remove,
    resume,
    seed,
)
from tests.unit.support import config_without_kafka

ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
T0 = "2026-01-02T03:04:05.000Z"
T1 = "2026-01-02T03:04:06.000Z"
PARTITIONS = 3


class Record(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def entry(integration: str = ACME, **changes: Any) -> RegistryEntry:
    base = RegistryEntry(integration, None, None, False, False, T0, "cli:ops@host", T0, "cli:ops@host")
    return base.edited(at=changes.pop("updated_at", T0), by=changes.pop("updated_by", "cli:ops@host"), **changes)


def record(value: RegistryEntry | bytes | None, offset: int, key: str = ACME, partition: int = 0) -> Record:
    encoded = value.encode() if isinstance(value, RegistryEntry) else value
    return Record(partition, offset, key.encode(), encoded)


def written(value: RegistryEntry, offset: int) -> RegistryEntry:
    """``value`` as the registry holds it once written at ``offset``."""
    return dataclasses.replace(value, revision=offset)


# --- The record -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "original",
    [
        entry(),
        entry(category="ats", resources=("ats/users", "ats/jobs"), paused=True),
        entry("greenhouse:é-ünï", category="hris", removed=True, updated_at="2026-02-01T00:00:00.123Z"),
    ],
)
def test_an_entry_survives_its_record_and_takes_its_offset_as_revision(original: RegistryEntry) -> None:
    assert original.revision == NOT_WRITTEN
    decoded = RegistryEntry.decode(original.key(), original.encode(), 42)
    assert decoded == written(original, 42)


def test_the_record_is_compact_json_with_a_version_and_without_the_revision() -> None:
    value = entry(category="ats", resources=("ats/users",)).encode()
    assert orjson.loads(value) == {
        "v": 1,
        "integration": ACME,
        "category": "ats",
        "resources": ["ats/users"],
        "paused": False,
        "removed": False,
        "added_at": T0,
        "added_by": "cli:ops@host",
        "updated_at": T0,
        "updated_by": "cli:ops@host",
    }
    assert b" " not in value


def test_a_record_with_fields_it_does_not_know_is_still_read() -> None:
    document = {**orjson.loads(entry().encode()), "added_later": {"x": 1}}
    assert RegistryEntry.decode(ACME.encode(), orjson.dumps(document), 7) == written(entry(), 7)


def malformed(**changes: object) -> bytes:
    return orjson.dumps({**orjson.loads(entry().encode()), **changes})


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"{oops", "not JSON"),
        (b"[1]", "not a JSON object"),
        (malformed(v=2), "unknown record version '2'"),
        (malformed(integration="a b"), "integration must be an integration id"),
        (malformed(integration=GLOBEX), "key is not its integration"),
        (malformed(category="lms"), "category must be one of ats, hris or null"),
        (malformed(resources=[]), "resources must be null or a list"),
        (malformed(resources=["ats/users", "ats/users"]), "distinct resource paths"),
        (malformed(resources=["/ats/users"]), "resources must be null or a list"),
        (malformed(resources="ats/users"), "resources must be null or a list"),
        (malformed(paused="no"), "paused must be true or false"),
        (malformed(removed=None), "removed must be true or false"),
        (malformed(added_at="yesterday"), "added_at must be an RFC 3339 time"),
        (malformed(updated_at=1_700_000_000), "updated_at must be an RFC 3339 time"),
        (malformed(added_by=""), "added_by must be printable text"),
        (malformed(updated_by="x\n"), "updated_by must be printable text"),
    ],
)
def test_a_malformed_record_is_refused_saying_why(value: bytes, why: str) -> None:
    with pytest.raises(UnreadableEntry, match=why):
        RegistryEntry.decode(ACME.encode(), value, 0)


# --- The fold -------------------------------------------------------------------------------------------------------


def test_the_last_record_by_offset_wins_whatever_its_clock_says() -> None:
    later_by_clock = entry(paused=True, updated_at="2030-01-01T00:00:00.000Z")
    latest = entry(category="ats", updated_at=T0)
    registry = fold([record(later_by_clock, 3), record(latest, 8), record(later_by_clock, 3)])
    assert dict(registry) == {ACME: written(latest, 8)}
    assert registry.positions == {0: 9}


def test_a_malformed_record_is_skipped_with_a_warning_naming_its_offset(caplog: pytest.LogCaptureFixture) -> None:
    good = entry(paused=True)
    records = [
        record(good, 0),
        record(b"{oops", 1),
        Record(1, 2, None, good.encode()),
        Record(1, 3, b"\xff", good.encode()),
        record(entry(GLOBEX), 4, key=GLOBEX, partition=2),
    ]
    with caplog.at_level(logging.WARNING, logger="relay.registry"):
        registry = fold(records, topic="kombo.relay-integrations")
    assert dict(registry) == {ACME: written(good, 0), GLOBEX: written(entry(GLOBEX), 4)}
    assert [r.getMessage() for r in caplog.records] == [
        "registry: skipped the unreadable record at partition 0 offset 1 of kombo.relay-integrations: the record "
        "is not JSON",
        "registry: skipped the unreadable record at partition 1 offset 2 of kombo.relay-integrations: the record "
        "has no key",
        "registry: skipped the unreadable record at partition 1 offset 3 of kombo.relay-integrations: the record's "
        "key is not UTF-8",
    ]
    assert registry.positions == {0: 2, 1: 4, 2: 5}


def test_a_tombstone_forgets_the_integration_and_a_removal_does_not() -> None:
    registry = fold([record(entry(), 0), record(None, 1), record(entry(GLOBEX), 2, GLOBEX), record(None, 0)])
    assert ACME not in registry  # the older record read again after the tombstone does not bring it back
    removed, _ = registry.fold([record(entry(GLOBEX, removed=True), 3, GLOBEX)])
    assert removed[GLOBEX].removed
    assert removed.active() == ()


# Each write: the integration, and its value: an entry (by its fields), a tombstone (None), or an unreadable record.
Write = tuple[str, RegistryEntry | bytes | None]
INTEGRATIONS = (ACME, GLOBEX, "bamboohr:initech", "workday:umbrella")
UNREADABLE = b'{"v": 1}'
entries = st.builds(
    lambda paused, removed, category, updated_by: (paused, removed, category, updated_by),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, "ats", "hris"]),
    st.sampled_from(["cli:a@h", "cli:b@h", "seed"]),
)


@st.composite
def writes(draw: st.DrawFn) -> list[Write]:
    made: list[Write] = []
    for _ in range(draw(st.integers(0, 25))):
        integration = draw(st.sampled_from(INTEGRATIONS))
        kind = draw(st.sampled_from(["entry", "entry", "entry", "tombstone", "unreadable"]))
        if kind == "entry":
            paused, removed, category, by = draw(entries)
            made.append(
                (integration, entry(integration, paused=paused, removed=removed, category=category, updated_by=by))
            )
        else:
            made.append((integration, None if kind == "tombstone" else UNREADABLE))
    return made


def placed(made: list[Write]) -> list[Record]:
    """The records of ``made`` as Kafka appends them: by key to a partition, each partition's offsets in order."""
    next_offset = dict.fromkeys(range(PARTITIONS), 0)
    records = []
    for integration, value in made:
        partition = partition_for_key(integration.encode(), PARTITIONS)
        records.append(record(value, next_offset[partition], integration, partition))
        next_offset[partition] += 1
    return records


def last_by_offset(records: list[Record]) -> dict[str, RegistryEntry]:
    """What the registry must be: per integration, its last readable record (a tombstone: not there)."""
    expected: dict[bytes, RegistryEntry | None] = {}
    for each in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert each.key is not None
        if each.value is None:
            expected[each.key] = None
        elif each.value != UNREADABLE:
            expected[each.key] = RegistryEntry.decode(each.key, each.value, each.offset)
    return {key.decode(): value for key, value in expected.items() if value is not None}


@settings(max_examples=200, deadline=None)
@given(made=writes(), data=st.data())
def test_any_arrival_order_of_the_records_folds_to_the_last_by_offset(made: list[Write], data: st.DataObject) -> None:
    records = placed(made)
    again = data.draw(st.lists(st.sampled_from(records), max_size=5)) if records else []
    arrival = data.draw(st.permutations([*records, *again]))
    split = data.draw(st.integers(0, len(arrival)))
    logging.disable(logging.WARNING)  # the unreadable records' warnings, by the hundred
    try:
        at_once = fold(arrival)
        in_two, _ = fold(arrival[:split]).fold(arrival[split:])
    finally:
        logging.disable(logging.NOTSET)
    expected = last_by_offset(records)
    assert dict(at_once) == dict(in_two) == expected
    assert at_once.positions == in_two.positions == fold(records).positions


def test_a_fold_reports_one_change_per_integration_whose_entry_changed() -> None:
    first = entry()
    registry, changes = EMPTY.fold([record(first, 0), record(entry(GLOBEX), 0, GLOBEX, 1)])
    assert [(c.integration, c.kind) for c in changes] == [(ACME, "added"), (GLOBEX, "added")]
    paused_then_resumed = [record(entry(paused=True), 1), record(entry(paused=False, category="ats"), 2)]
    registry, changes = registry.fold([*paused_then_resumed, record(first, 0)])
    [change] = changes
    assert (change.before, change.after, change.kind) == (written(first, 0), registry[ACME], "updated")
    assert registry.fold(paused_then_resumed)[1] == ()  # folded already


@pytest.mark.parametrize(
    ("before", "after", "kind"),
    [
        (None, entry(), "added"),
        (entry(removed=True), entry(), "added"),
        (entry(), entry(removed=True), "removed"),
        (entry(), entry(paused=True), "paused"),
        (entry(paused=True), entry(), "resumed"),
        (entry(), entry(resources=("ats/jobs",)), "updated"),
        (entry(), None, "forgotten"),
    ],
)
def test_the_kind_of_a_change(before: RegistryEntry | None, after: RegistryEntry | None, kind: str) -> None:
    assert RegistryChange(ACME, before, after).kind == kind


# --- Edits ----------------------------------------------------------------------------------------------------------


def registry_of(*held: RegistryEntry) -> Registry:
    return fold(record(each, offset, each.integration) for offset, each in enumerate(held))


def test_add_a_new_integration() -> None:
    added = add(EMPTY, ACME, category="ats", resources=("ats/users",), at=T1, by="cli:me@box")
    assert added == RegistryEntry(ACME, "ats", ("ats/users",), False, False, T1, "cli:me@box", T1, "cli:me@box")


def test_add_again_changes_only_what_is_given_and_nothing_when_nothing_differs() -> None:
    registry = registry_of(entry(category="ats", paused=True))
    assert add(registry, ACME, at=T1, by="b") is None
    assert add(registry, ACME, category="ats", at=T1, by="b") is None
    changed = add(registry, ACME, resources=("ats/jobs",), at=T1, by="b")
    assert changed == entry(category="ats", paused=True, resources=("ats/jobs",), updated_at=T1, updated_by="b")


def test_add_brings_a_removed_integration_back_as_new() -> None:
    registry = registry_of(entry(category="ats", paused=True, removed=True))
    assert add(registry, ACME, at=T1, by="b") == RegistryEntry(ACME, None, None, False, False, T1, "b", T1, "b")


@pytest.mark.parametrize(
    ("integration", "category", "resources", "why"),
    [
        ("personio:a b", None, None, "is not an integration id"),
        ("", None, None, "is not an integration id"),
        (ACME, None, ("ATS/users",), "is not a resource path"),
        (ACME, "hris", ("ats/users",), "'ats/users' is not a resource of an HRIS integration"),
        (ACME, None, ("ats/users", "ats/users"), "listed more than once"),
        (ACME, None, (), "list 1 to 256 resources"),
    ],
)
def test_add_refuses_an_invalid_id_or_resources(
    integration: str, category: Any, resources: tuple[str, ...] | None, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        add(EMPTY, integration, category=category, resources=resources, at=T1, by="b")


def test_add_refuses_a_category_its_resources_are_not_of() -> None:
    registry = registry_of(entry(category="ats", resources=("ats/users",)))
    with pytest.raises(ValueError, match="not a resource of an HRIS integration"):
        add(registry, ACME, category="hris", at=T1, by="b")


def test_pause_resume_remove() -> None:
    registry = registry_of(entry())
    paused = pause(registry, ACME, at=T1, by="b")
    assert paused == entry(paused=True, updated_at=T1, updated_by="b")
    assert resume(registry, ACME, at=T1, by="b") is None  # not paused
    registry = registry_of(paused)
    assert pause(registry, ACME, at=T1, by="b") is None
    assert resume(registry, ACME, at=T1, by="b") == entry(updated_at=T1, updated_by="b")
    removed = remove(registry, ACME, at=T1, by="c")
    assert removed == entry(paused=True, removed=True, updated_at=T1, updated_by="c")
    assert remove(registry_of(removed), ACME, at=T1, by="c") is None


@pytest.mark.parametrize("edit", [pause, resume, remove])
def test_an_integration_the_registry_never_held_is_unknown(edit: Any) -> None:
    with pytest.raises(UnknownIntegration, match="integration 'personio:acme' is not in the registry") as caught:
        edit(registry_of(entry(GLOBEX)), ACME, at=T1, by="b")
    assert caught.value.integration == ACME


@pytest.mark.parametrize("edit", [pause, resume])
def test_a_removed_integration_cannot_be_paused_or_resumed(edit: Any) -> None:
    with pytest.raises(UnknownIntegration, match=f"was removed from the registry \\(at {T0} by cli:ops@host\\)"):
        edit(registry_of(entry(removed=True)), ACME, at=T1, by="b")


# --- Seeding --------------------------------------------------------------------------------------------------------


def test_seeding_adds_only_the_integrations_never_heard_of() -> None:
    registry = registry_of(entry(GLOBEX, removed=True), entry("bamboohr:initech", paused=True))
    seeded = seed(registry, [ACME, GLOBEX, "bamboohr:initech", "x:new", ACME], at=T1, by="seed")
    assert seeded == (
        RegistryEntry(ACME, None, None, False, False, T1, "seed", T1, "seed"),
        RegistryEntry("x:new", None, None, False, False, T1, "seed", T1, "seed"),
    )
    assert seed(registry_of(*seeded), [ACME, "x:new"], at=T1, by="seed") == ()


# --- Resources ------------------------------------------------------------------------------------------------------


def test_the_resources_of_an_entry_by_its_category() -> None:
    only_default = DefaultResources.from_config(config_without_kafka(RELAY_RESOURCES="ats/users,hris/employees"))
    assert [only_default.of(c) for c in (None, "ats", "hris")] == [("ats/users", "hris/employees")] * 3
    config = config_without_kafka(RELAY_RESOURCES_ATS="ats/users,ats/jobs", RELAY_RESOURCES_HRIS="hris/employees")
    defaults = DefaultResources.from_config(config)
    assert [defaults.of(c) for c in (None, "ats", "hris")] == [
        ("ats/users",),
        ("ats/users", "ats/jobs"),
        ("hris/employees",),
    ]
    assert defaults.resources_of(entry(category="hris", resources=("hris/teams",))) == ("hris/teams",)
    registry = registry_of(
        entry(GLOBEX, category="hris"), entry(category="ats", paused=True), entry("x:y", removed=True)
    )
    assert defaults.pairs(registry) == (
        (GLOBEX, "hris/employees"),
        (ACME, "ats/users"),
        (ACME, "ats/jobs"),
    )


# --- What the owner does about a change -----------------------------------------------------------------------------

INITECH = "bamboohr:initech"
ELSEWHERE = "workday:elsewhere"  # placed in a partition the owner does not own
DEFAULTS = DefaultResources(("ats/users",), ats=("ats/users", "ats/jobs"), hris=("hris/employees",))


def plan(before: Registry, after: Registry, **kwargs: Any) -> PairsPlan:
    return plan_change(before, after, DEFAULTS, owned=lambda integration: integration != ELSEWHERE, **kwargs)


def test_an_added_integration_is_owned_and_a_removed_one_disowned() -> None:
    before = registry_of(entry(ACME), entry(GLOBEX, category="hris"))
    after = registry_of(entry(ACME, removed=True), entry(GLOBEX, category="hris"), entry(INITECH, category="ats"))
    assert plan(before, after) == PairsPlan(
        own=((INITECH, "ats/users"), (INITECH, "ats/jobs")), disown=((ACME, "ats/users"),)
    )
    assert plan(after, after) == PairsPlan()
    assert not plan(after, after)
    # Forgotten (a tombstone) is removed too; added again after a removal is added.
    assert plan(before, registry_of(entry(GLOBEX, category="hris"))).disown == ((ACME, "ats/users"),)
    assert plan(after, before).own == ((ACME, "ats/users"),)


def test_an_integration_not_owned_changes_nothing_here() -> None:
    before = registry_of(entry(ACME))
    after = registry_of(entry(ACME), entry(ELSEWHERE, category="ats"))
    assert plan(before, after) == PairsPlan()
    assert plan(after, before) == PairsPlan()
    assert plan(after, registry_of(entry(ACME), entry(ELSEWHERE, paused=True))) == PairsPlan()


def test_pauses_apply_to_kept_pairs_and_added_pairs_of_a_paused_integration_are_owned_paused() -> None:
    active = registry_of(entry(ACME, category="ats"))
    paused = registry_of(entry(ACME, category="ats", paused=True))
    assert plan(active, paused) == PairsPlan(pause=(ACME,))
    assert plan(paused, active) == PairsPlan(resume=(ACME,))
    assert plan(EMPTY, paused) == PairsPlan(own=((ACME, "ats/users"), (ACME, "ats/jobs")), paused=frozenset({ACME}))
    # Removed while paused: its pairs go, there is nothing left to pause.
    assert plan(paused, registry_of(entry(ACME, category="ats", paused=True, removed=True))) == PairsPlan(
        disown=((ACME, "ats/users"), (ACME, "ats/jobs"))
    )


def test_new_resources_own_and_disown_the_difference() -> None:
    before = registry_of(entry(ACME, category="ats", paused=True))
    after = registry_of(entry(ACME, category="ats", paused=True, resources=("ats/jobs", "ats/offers")))
    assert plan(before, after) == PairsPlan(
        own=((ACME, "ats/offers"),), disown=((ACME, "ats/users"),), paused=frozenset({ACME})
    )
    # A category of other defaults changes the pairs the same way.
    assert plan(registry_of(entry(ACME)), registry_of(entry(ACME, category="hris"))) == PairsPlan(
        own=((ACME, "hris/employees"),), disown=((ACME, "ats/users"),)
    )


def test_only_the_integrations_named_are_compared() -> None:
    after = registry_of(entry(ACME), entry(GLOBEX))
    assert plan(EMPTY, after, integrations=[GLOBEX]) == PairsPlan(own=((GLOBEX, "ats/users"),))

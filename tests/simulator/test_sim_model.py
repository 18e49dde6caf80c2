"""The Python API: mutations and their semantics, the mutation log, compaction, churn."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from simkit import ACME, GLOBEX, USERS

from relay.simulator import InvalidMutation, ManualClock, MutationKind, NotFound, Simulator, SimulatorError
from relay.simulator.clock import to_ms
from relay.simulator.model import CHURN_WEIGHTS
from relay.timestamps import format_timestamp_ms as iso_ms

Eventually = Callable[..., Awaitable[None]]


def test_each_mutation_kind_is_logged_with_its_time_and_record(sim: Simulator, clock: ManualClock) -> None:
    user = sim.create(ACME, USERS)
    clock.advance(1)
    sim.update(ACME, USERS, user["id"], {"first_name": "Xavier"})
    clock.advance(1)
    sim.change_nested(ACME, USERS, user["id"], value=[])
    clock.advance(1)
    sim.delete(ACME, USERS, user["id"])
    clock.advance(1)
    sim.restore(ACME, USERS, user["id"])
    clock.advance(1)
    sim.hard_delete(ACME, USERS, user["id"])
    log = sim.mutations
    assert [m.kind for m in log] == list(MutationKind)
    assert [m.seq for m in log] == [1, 2, 3, 4, 5, 6]
    assert {(m.integration, m.resource, m.id) for m in log} == {(ACME, USERS, user["id"])}
    assert [to_ms(m.time) for m in log] == [to_ms(clock()) - 5000 + 1000 * i for i in range(6)]
    created, updated, nested, deleted, restored, hard = (m.record for m in log)
    assert created is not None
    assert created["changed_at"] == iso_ms(to_ms(log[0].time))
    assert updated is not None
    assert updated["first_name"] == "Xavier"
    assert updated["changed_at"] == iso_ms(to_ms(log[1].time))
    assert nested is not None
    assert nested["system_roles"] == []
    assert nested["changed_at"] == updated["changed_at"]  # a nested change does not move changed_at
    assert deleted is not None
    assert deleted["remote_deleted_at"] == deleted["changed_at"] == iso_ms(to_ms(log[3].time))
    assert restored is not None
    assert restored["remote_deleted_at"] is None
    assert restored["changed_at"] == iso_ms(to_ms(log[4].time))
    assert hard is None
    assert [m.to_json()["kind"] for m in sim.mutations_since(4)] == ["restored", "hard_deleted"]


def test_the_log_keeps_each_record_as_it_was(sim: Simulator) -> None:
    user = sim.create(ACME, USERS)
    sim.update(ACME, USERS, user["id"], {"last_name": "First"})
    sim.update(ACME, USERS, user["id"], {"last_name": "Second"})
    assert [m.record["last_name"] for m in sim.mutations[1:] if m.record] == ["First", "Second"]
    returned = sim.get(ACME, USERS, user["id"])
    assert returned is not None
    returned["last_name"] = "Scribbled"  # callers get copies
    assert sim.mutations[-1].record is not None
    assert sim.mutations[-1].record["last_name"] == "Second"


def test_seeded_records_are_the_initial_state_and_not_logged(sim: Simulator) -> None:
    assert sim.mutations == []
    assert sim.count(ACME, USERS) == sim.count(GLOBEX, USERS) == 60
    ids = sim.seed(ACME, USERS, 3)
    assert [m.id for m in sim.mutations] == ids
    assert {m.kind for m in sim.mutations} == {MutationKind.CREATED}


def test_updates_that_change_nothing_are_not_mutations(sim: Simulator) -> None:
    user = next(iter(sim.records(ACME, USERS)))
    unchanged = sim.update(ACME, USERS, user["id"], {"first_name": user["first_name"]})
    assert unchanged == user
    assert sim.mutations == []


def test_invalid_mutations_are_refused(sim: Simulator) -> None:
    user = next(iter(sim.records(ACME, USERS)))
    with pytest.raises(InvalidMutation):
        sim.restore(ACME, USERS, user["id"])
    sim.delete(ACME, USERS, user["id"])
    with pytest.raises(InvalidMutation):
        sim.delete(ACME, USERS, user["id"])
    with pytest.raises(NotFound):
        sim.update(ACME, USERS, "nope", {"first_name": "A"})
    with pytest.raises(NotFound):
        sim.create("personio:nobody", USERS)
    with pytest.raises(NotFound):
        sim.create(ACME, "ats/nothing")
    for fields in ({"id": "x"}, {"changed_at": "x"}, {"remote_deleted_at": None}, {"system_roles": []}, {"nope": 1}):
        with pytest.raises(SimulatorError):
            sim.update(ACME, USERS, user["id"], fields)
    with pytest.raises(SimulatorError):
        sim.set_integration_state(ACME, "sleeping")
    with pytest.raises(InvalidMutation):
        sim.add_integration(ACME)


def test_create_with_fields_and_nested_value(sim: Simulator) -> None:
    roles = [{"remote_id": "1", "remote_label": "Admin", "scope": "SYSTEM", "unified_type": "ADMIN"}]
    user = sim.create(ACME, USERS, {"first_name": "Grace", "system_roles": roles})
    assert user["first_name"] == "Grace"
    assert user["system_roles"] == roles


def test_modification_times_stay_strictly_increasing_when_the_clock_stands_still_or_goes_back(
    sim: Simulator, clock: ManualClock
) -> None:
    ids = [r["id"] for r in sim.records(ACME, USERS)][:4]
    sim.update(ACME, USERS, ids[0])
    clock.advance(-3600)
    sim.update(ACME, USERS, ids[1])
    sim.change_nested(ACME, USERS, ids[2])
    times = [to_ms(m.time) for m in sim.mutations]
    assert times == sorted(set(times))


def test_stale_positions_are_compacted_and_paging_stays_right(sim: Simulator) -> None:
    collection = sim.collection(ACME, USERS)
    ids = [r["id"] for r in sim.records(ACME, USERS)]
    for round_ in range(40):
        for ident in ids:
            sim.update(ACME, USERS, ident, {"last_name": f"Round {round_}"})
    assert collection.positions() < 60 + 1024 + 60  # 2400 modifications, compacted along the way
    assert [r["id"] for r in sim.records(ACME, USERS)] == ids
    assert {r["last_name"] for r in sim.records(ACME, USERS)} == {"Round 39"}


def test_a_page_from_many_records_generates_only_what_it_serves() -> None:
    """Serving a page must not scan the collection: it generates page_size + 1 records (the +1 sees a next page)."""
    sim = Simulator(integrations=[ACME], users=50_000)
    collection = sim.collection(ACME, USERS)
    generated = 0
    original = collection.record

    def counting(entry):  # type: ignore[no-untyped-def]
        nonlocal generated
        generated += 1
        return original(entry)

    collection.record = counting  # type: ignore[method-assign]
    middle = list(collection.entries())[25_000]
    results, next_seq = collection.select(
        after_seq=middle.seq, since_ms=None, include_deleted=False, ids=None, predicates=[], page_size=250
    )
    assert len(results) == 250
    assert next_seq is not None
    assert generated == 251


def test_the_churn_makes_every_kind_of_mutation() -> None:
    sim = Simulator(integrations=[ACME, GLOBEX], users=30, sizes={"ats/jobs": 5}, clock=ManualClock())
    for _ in range(400):
        sim.random_mutation()
    kinds = Counter(m.kind for m in sim.mutations)
    assert set(kinds) == set(MutationKind)
    assert kinds[MutationKind.UPDATED] > kinds[MutationKind.HARD_DELETED]
    assert {m.resource for m in sim.mutations} == {USERS, "ats/jobs"}  # only resources that have records
    assert {m.integration for m in sim.mutations} == {ACME, GLOBEX}
    assert sum(w for _, w in CHURN_WEIGHTS) > 0


def test_the_churn_is_deterministic_given_the_seed() -> None:
    def run() -> list[tuple[str, str, str]]:
        sim = Simulator(integrations=[ACME], users=20, seed=5, clock=ManualClock())
        for _ in range(50):
            sim.random_mutation()
        return [(m.kind.value, m.id, str(m.record)) for m in sim.mutations]

    assert run() == run()


async def test_start_churn_runs_at_the_rate_until_stopped(sim: Simulator, eventually: Eventually) -> None:
    churn = sim.start_churn(rate=200.0)
    assert sim.start_churn(rate=300.0) is churn  # re-rates the running churn
    assert churn.rate == 300.0
    await eventually(lambda: len(sim.mutations) >= 30, timeout=10, message="30 churned mutations")
    await sim.stop_churn()
    assert not churn.running
    stopped_at = len(sim.mutations)
    churn.step()
    assert len(sim.mutations) == stopped_at + 1  # step() still works by hand
    with pytest.raises(ValueError, match="negative"):
        churn.rate = -1


def test_an_integration_added_later_is_seeded_in_its_past(sim: Simulator, clock: ManualClock) -> None:
    clock.advance(3600)
    for user in list(sim.records(ACME, USERS))[:3]:
        sim.update(ACME, USERS, user["id"])
    sim.add_integration("workday:initech", users=10)
    stamps = [r["changed_at"] for r in sim.records("workday:initech", USERS)]
    assert stamps == sorted(set(stamps))
    assert stamps[-1] < iso_ms(sim.now_ms())
    assert sim.integrations == [ACME, GLOBEX, "workday:initech"]


def test_counts_follow_deletes_restores_and_hard_deletes(sim: Simulator) -> None:
    a, b = [r["id"] for r in sim.records(ACME, USERS)][:2]
    sim.delete(ACME, USERS, a)
    sim.delete(ACME, USERS, b)
    assert (sim.count(ACME, USERS), sim.count(ACME, USERS, include_deleted=True)) == (58, 60)
    sim.restore(ACME, USERS, a)
    sim.hard_delete(ACME, USERS, b)
    assert (sim.count(ACME, USERS), sim.count(ACME, USERS, include_deleted=True)) == (59, 59)

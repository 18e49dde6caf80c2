"""Which removed integrations' state is due for tombstones (RELAY_REMOVED_STATE_RETENTION), decided from the registry,
what the owner remembers and the time: pure, no Kafka."""

from __future__ import annotations

import asyncio

import pytest

from relay.registry import EMPTY, Registry, RegistryEntry
from relay.registry import add as add_entry
from relay.registry import pause as pause_entry
from relay.registry import remove as remove_entry
from relay.retention import DueState, check_interval, due_for_tombstones, every
from relay.timestamps import format_timestamp_ms, parse_timestamp_ms

REMOVED_AT = "2026-12-01T00:00:00.000Z"
HOUR_MS = 3600 * 1000
ACME, GLOBEX, INITECH = "personio:acme", "greenhouse:globex", "bamboohr:initech"


class Record:
    """A registry topic record as the fold reads it."""

    def __init__(self, offset: int, entry: RegistryEntry) -> None:
        self.partition, self.offset, self.key, self.value = 0, offset, entry.key(), entry.encode()


def registry_of(*entries: RegistryEntry) -> Registry:
    return EMPTY.fold(Record(offset, entry) for offset, entry in enumerate(entries))[0]


def added(integration: str, at: str = "2026-11-01T00:00:00.000Z") -> RegistryEntry:
    entry = add_entry(EMPTY, integration, at=at, by="test")
    assert entry is not None
    return entry


def removed(integration: str, at: str = REMOVED_AT) -> RegistryEntry:
    entry = remove_entry(registry_of(added(integration)), integration, at=at, by="test")
    assert entry is not None
    return entry


def after_removal(hours: float) -> int:
    return parse_timestamp_ms(REMOVED_AT) + round(hours * HOUR_MS)


def test_a_removed_integration_is_due_once_the_retention_has_passed_since_its_removal() -> None:
    registry = registry_of(removed(ACME))
    held = {ACME: ("ats/users", "ats/jobs")}
    assert due_for_tombstones(registry, held, now_ms=after_removal(23.99), retention_seconds=24 * 3600) == ()
    assert due_for_tombstones(registry, held, now_ms=after_removal(24), retention_seconds=24 * 3600) == (
        DueState(ACME, ("ats/jobs", "ats/users"), REMOVED_AT),
    )


def test_active_paused_and_unknown_integrations_are_never_due() -> None:
    paused = pause_entry(registry_of(added(GLOBEX)), GLOBEX, at=REMOVED_AT, by="test")
    assert paused is not None
    registry = registry_of(added(ACME), paused)
    held = {ACME: ("ats/users",), GLOBEX: ("ats/users",), INITECH: ("ats/users",)}  # INITECH: not in the registry
    assert due_for_tombstones(registry, held, now_ms=after_removal(10_000), retention_seconds=0) == ()


def test_an_integration_added_again_before_the_retention_passed_is_not_due() -> None:
    again = add_entry(registry_of(removed(ACME)), ACME, at="2026-12-01T01:00:00.000Z", by="test")
    assert again is not None
    registry = registry_of(removed(ACME), again)
    assert due_for_tombstones(registry, {ACME: ("ats/users",)}, now_ms=after_removal(48), retention_seconds=3600) == ()


def test_only_integrations_whose_state_is_remembered_are_due() -> None:
    registry = registry_of(removed(ACME), removed(GLOBEX, at="2026-12-01T00:30:00.000Z"), removed(INITECH))
    held = {GLOBEX: ("hris/employees",), ACME: ("ats/users",)}  # INITECH's state: forgotten already, or elsewhere
    due = due_for_tombstones(registry, held, now_ms=after_removal(1), retention_seconds=1800)
    assert [each.integration for each in due] == [GLOBEX, ACME]  # by id
    assert {each.integration: each.removed_at for each in due} == {ACME: REMOVED_AT, GLOBEX: "2026-12-01T00:30:00.000Z"}


def test_unset_the_retention_keeps_the_state_for_ever() -> None:
    registry = registry_of(removed(ACME))
    far_future = parse_timestamp_ms("9999-01-01T00:00:00.000Z")
    assert due_for_tombstones(registry, {ACME: ("ats/users",)}, now_ms=far_future, retention_seconds=None) == ()


def test_a_retention_of_zero_makes_a_removal_due_at_once() -> None:
    registry = registry_of(removed(ACME))
    now = parse_timestamp_ms(REMOVED_AT)
    assert due_for_tombstones(registry, {ACME: ("ats/users",)}, now_ms=now, retention_seconds=0) != ()
    assert format_timestamp_ms(now) == REMOVED_AT


@pytest.mark.parametrize(
    ("retention", "interval"), [(0, 1.0), (1, 1.0), (4, 2.0), (90, 45.0), (120, 60.0), (30 * 86400, 60.0)]
)
def test_the_check_interval_is_half_the_retention_from_one_second_to_one_minute(
    retention: float, interval: float
) -> None:
    assert check_interval(retention) == interval


async def test_the_timer_runs_until_stopped_and_outlives_a_failing_run(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    runs: list[int] = []

    async def action() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("a bug")
        if len(runs) == 3:
            stop.set()

    await asyncio.wait_for(every(0.001, action, stop), 10)
    assert runs == [0, 1, 2]  # not run again once stopped
    assert "a bug" in caplog.text


async def test_the_timer_never_runs_once_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    ran: list[None] = []

    async def action() -> None:
        ran.append(None)

    await every(0.001, action, stop)
    assert ran == []

"""Kombo's integration webhooks and the registry, pure: the decision (webhook + the entry now -> an edit or nothing)
orders by the registry (the webhook's own time against the entry's last change), never by arrival; and the receiver
hands integration webhooks to the follower only with RELAY_FOLLOW_INTEGRATIONS. The real broker is in
tests/integration/test_registry_webhooks.py."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from relay.registry import EMPTY, RegistryEntry
from relay.registry_webhooks import Decision, RegistryFollower, by_of, decide
from relay.webhooks import IntegrationCreated, IntegrationDeleted, IntegrationStateChanged

ACME = "personio:acme"
NOW = "2026-03-01T12:00:00.000Z"
OPS_AT = "2026-03-01T10:00:00.000Z"


def entry(*, paused: bool = False, removed: bool = False, at: str = OPS_AT, by: str = "ops") -> RegistryEntry:
    return RegistryEntry(ACME, "ats", None, paused, removed, at, by, at, by, revision=7)


def state(state: str, at: str | None, ident: str = "wh-1") -> IntegrationStateChanged:
    return IntegrationStateChanged(ident, ACME, state, at)


def test_created_adds_an_integration_never_held_with_its_category() -> None:
    decision = decide(IntegrationCreated("wh-1", ACME, "HRIS"), None, now=NOW)
    assert decision.why == "added"
    assert decision.entry == RegistryEntry(
        ACME, "hris", None, False, False, NOW, "kombo integration-created wh-1", NOW, "kombo integration-created wh-1"
    )


@pytest.mark.parametrize("current", [entry(), entry(paused=True), entry(removed=True)])
def test_created_never_touches_an_integration_held_or_removed(current: RegistryEntry) -> None:
    assert decide(IntegrationCreated("wh-1", ACME, "ATS"), current, now=NOW) == Decision(None, "known")


@pytest.mark.parametrize("category", ["LMS", "ASSESSMENT", ""])
def test_created_of_another_category_adds_nothing(category: str) -> None:
    assert decide(IntegrationCreated("wh-1", ACME, category), None, now=NOW) == Decision(None, "category")


def test_created_without_an_integration_id_adds_nothing() -> None:
    assert decide(IntegrationCreated("wh-1", "", "ATS"), None, now=NOW) == Decision(None, "unknown")


def test_a_newer_state_change_pauses_and_resumes_with_kombos_time() -> None:
    decision = decide(state("INACTIVE", "2026-03-01T11:00:00Z"), entry(), now=NOW)
    assert decision.why == "paused"
    assert decision.entry is not None
    assert (decision.entry.paused, decision.entry.updated_at) == (True, "2026-03-01T11:00:00.000Z")
    assert decision.entry.updated_by == "kombo integration-state-changed wh-1"
    assert (decision.entry.added_at, decision.entry.added_by) == (OPS_AT, "ops")
    resumed = decide(state("ACTIVE", "2026-03-01T11:30:00Z"), decision.entry, now=NOW)
    assert resumed.why == "resumed"
    assert resumed.entry is not None
    assert resumed.entry.paused is False
    assert decide(state("INVALID", "2026-03-01T11:00:01Z"), entry(), now=NOW).why == "paused"


def test_a_newer_state_that_changes_no_flag_is_noted_for_its_time() -> None:
    decision = decide(state("INACTIVE", "2026-03-01T11:00:00Z"), entry(paused=True), now=NOW)
    assert decision.why == "noted"
    assert decision.entry is not None
    assert decision.entry.updated_at == "2026-03-01T11:00:00.000Z"


@pytest.mark.parametrize("at", ["2026-03-01T09:00:00Z", OPS_AT, "2026-03-01T11:00:00+01:00"])
def test_a_webhook_not_later_than_the_entrys_last_change_changes_nothing(at: str) -> None:
    assert decide(state("ACTIVE", at), entry(paused=True), now=NOW) == Decision(None, "stale")
    assert decide(IntegrationDeleted("wh-2", ACME, at), entry(), now=NOW) == Decision(None, "stale")


def test_a_replay_of_the_webhook_that_made_the_entry_changes_nothing() -> None:
    webhook = state("INACTIVE", "2026-03-01T11:00:00Z")
    written = decide(webhook, entry(), now=NOW).entry
    assert decide(webhook, written, now=NOW) == Decision(None, "stale")


def test_an_older_webhook_arriving_after_a_newer_one_changes_nothing() -> None:
    newer = decide(state("ACTIVE", "2026-03-01T11:30:00Z", "new"), entry(paused=True), now=NOW).entry
    assert newer is not None
    assert decide(state("INACTIVE", "2026-03-01T11:00:00Z", "old"), newer, now=NOW).why == "stale"


def test_deleted_removes_and_a_removed_entry_stays_removed() -> None:
    decision = decide(IntegrationDeleted("wh-3", ACME, "2026-03-01T11:00:00Z"), entry(paused=True), now=NOW)
    assert decision.why == "removed"
    assert decision.entry is not None
    assert (decision.entry.removed, decision.entry.paused) == (True, True)
    gone = decision.entry
    assert decide(state("ACTIVE", "2026-03-01T12:30:00Z"), gone, now=NOW) == Decision(None, "gone")
    assert decide(IntegrationDeleted("wh-4", ACME, "2026-03-01T12:30:00Z"), gone, now=NOW).why == "gone"


def test_an_entry_last_made_by_created_is_older_than_any_state_change() -> None:
    created = decide(IntegrationCreated("wh-1", ACME, "ATS"), None, now=NOW).entry
    # Kombo's time of the state change is before the relay's clock wrote the creation: still applied.
    decision = decide(state("INVALID", "2026-03-01T11:59:59Z"), created, now=NOW)
    assert decision.why == "paused"


def test_unknown_integrations_states_and_times_change_nothing() -> None:
    assert decide(state("ACTIVE", "2026-03-01T11:00:00Z"), None, now=NOW) == Decision(None, "unknown")
    assert decide(state("ACTIVE", None), entry(), now=NOW) == Decision(None, "no_time")
    assert decide(state("ACTIVE", "yesterday"), entry(), now=NOW) == Decision(None, "no_time")
    assert decide(state("SLEEPY", "2026-03-01T11:00:00Z"), entry(), now=NOW) == Decision(None, "state")


def test_by_names_the_webhook_printably() -> None:
    assert by_of(IntegrationDeleted("id\n1", ACME)) == "kombo integration-deleted"
    assert len(by_of(IntegrationDeleted("x" * 400, ACME))) == 256


async def test_the_follower_decides_against_what_it_wrote_itself_until_the_registry_has_it() -> None:
    written: list[RegistryEntry] = []

    async def write(entries: Sequence[RegistryEntry]) -> tuple[RegistryEntry, ...]:
        written.extend(entries)
        return tuple(e.edited(at=e.updated_at, by=e.updated_by) for e in entries)

    follower = RegistryFollower(lambda: EMPTY, write, clock=lambda: NOW)
    assert await follower.apply(IntegrationCreated("c", ACME, "ATS")) == (200, "accepted")
    assert await follower.apply(IntegrationCreated("c2", ACME, "ATS")) == (200, "ignored")  # known: it wrote it
    assert await follower.apply(state("INACTIVE", "2026-03-01T12:00:01Z")) == (200, "accepted")
    assert await follower.apply(state("ACTIVE", "2026-03-01T11:00:00Z")) == (200, "ignored")  # older
    assert await follower.apply(IntegrationDeleted("d", "personio:other", "2026-03-01T11:00:00Z")) == (
        202,
        "unknown_integration",
    )
    assert [(e.paused, e.updated_by) for e in written] == [
        (False, "kombo integration-created c"),
        (True, "kombo integration-state-changed wh-1"),
    ]

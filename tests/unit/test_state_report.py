"""`relay state show`'s report, pure: fingerprint summaries, the owner from a group description, which resources are
shown, and the text and JSON renderings (a cursor is never printed). The Kafka reads are in
tests/integration/test_state_show.py; argument errors (exit 2) and an unreachable Kafka (exit 8) here."""

from __future__ import annotations

import os

import pytest

import relay.cli
from relay import diff
from relay.entity_table import EntityTable
from relay.registry import RegistryEntry
from relay.state import Checkpoint, InProgress, PairState
from relay.state_cli import EXIT_INVALID, EXIT_KAFKA_UNAVAILABLE, key_prefixes
from relay.state_records import encode_records
from relay.state_show import (
    GroupView,
    ResourceReport,
    StateReport,
    duration_text,
    entity_summaries,
    group_view,
    owner_text,
    render_json,
    render_text,
    resources_to_show,
    summarize_fingerprint,
)
from relay.timestamps import parse_timestamp_ms
from tests.unit.support import NO_KAFKA

NOW = parse_timestamp_ms("2026-03-01T12:00:00.000Z")
ACME = "personio:acme"
TOPIC = "kombo.relay-state"


def live(changed: str = "2026-03-01T11:00:00.000Z", version: int = 1, fields: int = 3) -> bytes:
    return diff.make_fingerprint(
        bytes.fromhex("0123456789abcdef"),
        changed_at_ms=parse_timestamp_ms(changed),
        version=version,
        deleted=False,
        shape_id=1,
        field_hashes=list(range(fields)),
    )


def deleted() -> bytes:
    return diff.make_fingerprint(b"\0" * 8, changed_at_ms=None, version=2, deleted=True)


def test_a_fingerprint_is_summarized() -> None:
    summary = summarize_fingerprint("u1", live(version=4, fields=5))
    assert summary.as_json() == {
        "id": "u1",
        "state": "live",
        "version": 4,
        "changed_at": "2026-03-01T11:00:00.000Z",
        "hash": "efcdab89",  # the 64-bit hash, little-endian in the fingerprint, as a number in hex
        "fields": 5,
    }
    gone = summarize_fingerprint("u2", deleted())
    assert (gone.state, gone.fields, gone.changed_at_ms, gone.version) == ("deleted", 0, None, 2)
    vanished = diff._vanished(live())
    assert summarize_fingerprint("u3", vanished).state == "vanished"


def test_entities_are_listed_by_id_up_to_the_limit() -> None:
    state = PairState(entities=EntityTable({"c": live(), "a": deleted(), "b": live()}))
    shown, left_out = entity_summaries(state, 2)
    assert ([e.id for e in shown], left_out) == (["a", "b"], 1)
    assert entity_summaries(state, 10)[1] == 0


def test_the_owner_is_the_member_assigned_the_partition() -> None:
    group = group_view(
        "g",
        "Stable",
        [
            ("m-1", "relay", "/10.0.0.1", [(TOPIC, [0, 2]), ("other", [1])]),
            ("m-2", "relay", "/10.0.0.2", [(TOPIC, [1])]),
        ],
    )
    owner = group.owner_of(TOPIC, 1)
    assert owner is not None
    assert owner.as_json() == {"member_id": "m-2", "client_id": "relay", "client_host": "/10.0.0.2"}
    assert group.owner_of(TOPIC, 3) is None
    assert group.owner_of("other", 0) is None


def report(group: GroupView, *resources: ResourceReport, entry: RegistryEntry | None = None) -> StateReport:
    return StateReport(ACME, entry, "kombo.relay-integrations", TOPIC, 1, 42, group, resources)


def test_owner_text_says_none_without_members_and_during_a_rebalance() -> None:
    assert owner_text(report(GroupView("g", "Empty"))) == "none (group 'g' has no member)"
    rebalancing = group_view("g", "PreparingRebalance", [("m-1", "c", "/h", [])])
    assert owner_text(report(rebalancing)) == "none (group 'g' is PreparingRebalance: partition 1 unassigned)"
    stable = group_view("g", "Stable", [("m-1", "relay", "/10.0.0.1", [(TOPIC, [1])])])
    assert owner_text(report(stable)) == "m-1 (client relay, host /10.0.0.1)"


def test_resources_shown_are_those_polled_then_those_with_state_only() -> None:
    assert resources_to_show({"ats/jobs", "ats/old"}, ("ats/users", "ats/jobs"), None) == (
        ("ats/users", True),
        ("ats/jobs", True),
        ("ats/old", False),
    )
    assert resources_to_show(set(), ("ats/users",), "ats/other") == (("ats/other", False),)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (45.4, "45 s"), (600, "10 min"), (3 * 3600, "3.0 h"), (3 * 86400, "3.0 d"), (-5, "-5 s")],
)
def test_durations_read_well(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


ENTRY = RegistryEntry(
    ACME, "ats", None, False, False, "2026-01-01T00:00:00.000Z", "ops", "2026-01-02T00:00:00.000Z", "ops"
)


def resource_in_progress() -> ResourceReport:
    state = PairState(entities=EntityTable({"u1": live(), "u2": deleted()}), live_entities=1)
    state.checkpoint = Checkpoint(
        watermark_ms=NOW - 90_000,
        snapshot_done=True,
        last_reconcile_ms=NOW - 3 * 3600_000,
        in_progress=InProgress("incremental", "SECRET-CURSOR", "2026-03-01T11:58:00.000Z", NOW - 10_000, 3),
    )
    return ResourceReport.of("ats/users", state, in_registry=True, entity_limit=1)


def test_the_text_report() -> None:
    never = ResourceReport.of("ats/jobs", None, in_registry=True, entity_limit=None)
    lines = render_text(
        report(GroupView("g", "Empty"), resource_in_progress(), never, entry=ENTRY),
        NOW,
        polled=("ats/users", "ats/jobs"),
    )
    assert lines == [
        f"integration {ACME}: active in kombo.relay-integrations (category ats, resources ats/users,ats/jobs "
        "(default); updated 2026-01-02T00:00:00.000Z by ops)",
        f"state: partition 1 of {TOPIC}, 42 record(s) of it",
        "owner: none (group 'g' has no member)",
        "ats/users",
        "  checkpoint      snapshot done; incremental poll in progress (cursor held, 3 page(s) committed, started "
        "2026-03-01T11:59:50.000Z (10 s ago), changes since 2026-03-01T11:58:00.000Z)",
        "  watermark       2026-03-01T11:58:30.000Z (lag 90 s)",
        "  entities        1 live, 1 deleted",
        "  last reconcile  2026-03-01T09:00:00.000Z (3.0 h ago)",
        "  ID  STATE  VERSION  CHANGED_AT                HASH      FIELDS",
        "  u1  live   1        2026-03-01T11:00:00.000Z  efcdab89  3",
        "  ... and 1 more (--limit)",
        "ats/jobs",
        "  no state yet: its first poll will be a snapshot",
    ]
    assert not any("SECRET-CURSOR" in line for line in lines)


def test_the_text_report_of_an_integration_the_registry_does_not_hold() -> None:
    lines = render_text(report(GroupView("g", "Empty")), NOW)
    assert lines[0] == f"integration {ACME}: not in the registry (kombo.relay-integrations)"
    assert lines[3:] == ["note: the registry does not hold this integration", "no state for this integration"]


def test_the_json_report() -> None:
    document = render_json(report(GroupView("g", "Empty"), resource_in_progress(), entry=ENTRY), NOW)
    assert document["owner"] is None
    assert document["group"] == {"id": "g", "state": "Empty", "members": 0}
    (users,) = document["resources"]
    assert users == {
        "resource": "ats/users",
        "polled": True,
        "has_state": True,
        "snapshot_done": True,
        "in_progress": {
            "kind": "incremental",
            "pages": 3,
            "started_at": "2026-03-01T11:59:50.000Z",
            "updated_after": "2026-03-01T11:58:00.000Z",
        },
        "watermark": "2026-03-01T11:58:30.000Z",
        "lag_seconds": 90.0,
        "live": 1,
        "deleted": 1,
        "last_reconcile": "2026-03-01T09:00:00.000Z",
        "entities": [users["entities"][0]],
        "entities_left_out": 1,
    }
    assert "SECRET-CURSOR" not in str(document)


def test_key_prefixes_match_the_integrations_records_only() -> None:
    prefixes = key_prefixes(ACME)
    mine = encode_records(ACME, "ats/users", 0, delta={"u": live()}, new_shapes=[(1, ("a",))], checkpoint=b"{}")
    theirs = encode_records(ACME + "2", "ats/users", 0, delta={"u": live()}, new_shapes=(), checkpoint=b"{}")
    assert all(record.key.startswith(prefixes) for record in mine)
    assert not any(record.key.startswith(prefixes) for record in theirs)


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP_SERVERS", NO_KAFKA)


@pytest.mark.usefixtures("cli_environment")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["personio:a b"], "is not an integration id"),
        ([ACME, "--resource", "ATS/users"], "--resource 'ATS/users' is not a path like ats/users"),
    ],
)
def test_an_invalid_argument_is_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert relay.cli.main(["state", "show", *argv]) == EXIT_INVALID
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures("cli_environment")
def test_kafka_unreachable_is_exit_8(capsys: pytest.CaptureFixture[str]) -> None:
    assert relay.cli.main(["state", "show", ACME, "--timeout", "2"]) == EXIT_KAFKA_UNAVAILABLE
    assert "relay state show:" in capsys.readouterr().err

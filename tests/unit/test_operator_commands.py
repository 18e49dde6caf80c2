"""Operators' commands, the pure parts: the command and ack records, the resnapshot rule of the diff engine, the
tombstones of a reset read back, and the scheduler running commands in order with a pair's polls (a real Scheduler
behind the real ReloadGate, its poll a script), acknowledged once per command, or left unacknowledged to the next
owner when handed over; and the owner's acks of the registry changes it applied, as it follows the registry or at a
claim."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from relay import diff
from relay.commands import CommandApplier
from relay.config import Config, load_config
from relay.control import ControlAction, UnreadableAction, registry_ack_id, registry_revision_acked
from relay.diff import ShapeTable
from relay.metrics import Metrics
from relay.pipeline import PollOutcome
from relay.registry import RegistryChange, RegistryEntry
from relay.reload_gate import ReloadGate
from relay.scheduler import Scheduler
from relay.state import Checkpoint, StateStore
from tests.unit.support import quiescent, wait_until

ACME = "personio:acme"
USERS = "ats/users"
EMPLOYEES = "hris/employees"
T0 = "2024-01-01T00:00:00.000Z"
T1 = "2024-01-01T00:00:01.000Z"

# --- The records ---------------------------------------------------------------------------------------------------


def test_a_command_and_its_ack_survive_the_record_format() -> None:
    command = ControlAction("resnapshot", ACME, (USERS,), None, 5, "id-1")
    assert ControlAction.decode(command.encode()) == command
    ack = ControlAction("ack", ACME, (USERS,), None, 6, "id-1", "error", "ats/users: failed: boom")
    assert ControlAction.decode(ack.encode()) == ack
    assert command.dedup_key == "command:id-1"
    assert ack.dedup_key is None
    assert ControlAction("trigger", ACME, (USERS,), "w1", 0).dedup_key == "w1"
    # A trigger's record is as before: no command fields.
    assert set(orjson.loads(ControlAction("trigger", ACME, (USERS,), "w1", 0).encode())) == {
        "v",
        "kind",
        "integration",
        "resources",
        "webhook_id",
        "received_at_ms",
    }


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"kind": "snapshot-everything"}, "written by a newer version"),
        ({"kind": "reset"}, "needs a command_id"),
        ({"kind": "reconcile", "command_id": "x", "resources": [USERS, EMPLOYEES]}, "one resource at most"),
        ({"kind": "ack", "command_id": "x", "outcome": "maybe"}, "outcome must be one of ok, error"),
    ],
)
def test_a_record_this_version_cannot_act_on_is_unreadable_never_a_crash(
    document: dict[str, Any], problem: str
) -> None:
    value = {"v": 1, "integration": ACME, "resources": [], "webhook_id": None, "received_at_ms": 0, **document}
    with pytest.raises(UnreadableAction, match=problem):
        ControlAction.decode(orjson.dumps(value))


# --- The resnapshot rule ---------------------------------------------------------------------------------------------


def record(entity_id: str, *, at: str = T0, deleted_at: str | None = None, name: str = "Ada") -> dict[str, Any]:
    return {"id": entity_id, "changed_at": at, "remote_deleted_at": deleted_at, "name": name}


def feed(
    state: dict[str, bytes], shapes: ShapeTable, *records: dict[str, Any], resnapshot: bool = False
) -> diff.DiffResult:
    result = diff.diff_page(
        state, shapes, list(records), integration=ACME, resource=USERS, snapshot=False, resnapshot=resnapshot
    )
    for shape_id, names in result.new_shapes:
        shapes.add_known(shape_id, names)
    state.update(result.delta)
    return result


def test_a_resnapshot_re_announces_each_live_record_once_after_its_real_change() -> None:
    state: dict[str, bytes] = {}
    shapes = ShapeTable()
    feed(state, shapes, record("same"), record("changed"), record("deleted"), record("stale", at=T1))
    feed(state, shapes, record("deleted", deleted_at=T1))
    result = feed(
        state,
        shapes,
        record("same"),
        record("changed", name="Grace"),
        record("deleted", deleted_at=T1),
        record("stale", at=T0),  # older than what is remembered: not re-announced
        record("new"),
        resnapshot=True,
    )
    events = [(c.entity_id, c.kind, c.snapshot, c.reason) for c in result.changes]
    assert events == [
        ("same", "created", True, "resnapshot"),
        ("changed", "updated", False, None),
        ("changed", "created", True, "resnapshot"),
        ("new", "created", False, None),
        ("new", "created", True, "resnapshot"),
    ]
    assert len({c.event_id for c in result.changes}) == len(result.changes)  # a new version each: new ids
    # Memory holds the re-announced version: the next ordinary poll finds nothing to say.
    assert feed(state, shapes, record("same"), record("changed", name="Grace"), record("new")).changes == []


# --- Reset's tombstones ----------------------------------------------------------------------------------------------


def test_the_tombstones_of_a_reset_forget_the_pair_when_read_back() -> None:
    store = StateStore(2)
    fingerprint = diff.make_fingerprint(b"12345678", changed_at_ms=1, version=1, shape_id=0, deleted=True)
    records = store.records_for(
        ACME, USERS, delta={"u1": fingerprint}, new_shapes=(), checkpoint=Checkpoint(watermark_ms=5, snapshot_done=True)
    )
    store.apply(ACME, USERS, delta={"u1": fingerprint}, new_shapes=(), checkpoint=Checkpoint(watermark_ms=5))
    tombstones = [(key, None) for key in store.tombstone_keys(ACME, USERS)]
    assert tombstones[-1][0] == orjson.dumps(["c", ACME, USERS])  # the checkpoint's last

    restored = StateStore(2)
    restored.restore_records([(r.key, r.value) for r in records])
    assert restored.pair(ACME, USERS).checkpoint.snapshot_done
    restored.restore_records(tombstones)
    assert restored.pair(ACME, USERS).entities == {}
    assert restored.pair(ACME, USERS).checkpoint == Checkpoint()
    # A tombstone of a pair never seen (compacted history) creates nothing.
    restored.restore_records([(orjson.dumps(["e", "other:one", USERS, "u9"]), None)])
    assert ("other:one", USERS) not in dict(restored.pairs())


# --- The scheduler runs commands with the polls ----------------------------------------------------------------------


def config() -> Config:
    return load_config(
        None,
        {
            "RELAY_API_KEY": "k",
            "RELAY_INTEGRATIONS": ACME,
            "RELAY_RESOURCES": f"{USERS},{EMPLOYEES}",
            "RELAY_POLL_INTERVAL_SECONDS": "600",
            "RELAY_POLL_JITTER_FRACTION": "0",
        },
    )


class ScriptedPoller(Scheduler):
    """A real Scheduler behind the real ReloadGate; its polls and resets are a script that records what ran."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, ReloadGate(self._poll_script, self._reload, self._reset_script), Metrics(cfg.resources))
        self._rng = random.Random(7)
        self.ran: list[tuple[str, str]] = []  # (resource, kind)
        self.hold = asyncio.Event()
        self.hold.set()

    async def _poll_script(
        self, integration: str, resource: str, published: Callable[[int], None], kind: str | None = None
    ) -> PollOutcome:
        await self.hold.wait()
        self.ran.append((resource, kind or "scheduled"))
        if kind == "reconcile" and resource == EMPLOYEES:
            raise RuntimeError("the source broke")
        return PollOutcome(kind or "incremental", pages=1, records=3, events=2)  # type: ignore[arg-type]

    async def _reset_script(self, integration: str, resource: str) -> int:
        self.ran.append((resource, "reset"))
        return 3

    async def _reload(self) -> None:
        pass


async def test_commands_wait_for_the_poll_in_progress_run_in_order_and_are_acknowledged_once() -> None:
    poller = ScriptedPoller(config())
    sent: list[ControlAction] = []

    async def send(action: ControlAction) -> None:
        sent.append(action)

    applier = CommandApplier(poller, send)
    runner = asyncio.create_task(poller.run(grace_seconds=5))
    await wait_until(lambda: len(poller.ran) == 2, "the first polls")
    await quiescent()
    poller.hold.clear()
    poller.trigger(ACME, USERS)  # a poll in progress, held
    await quiescent()
    applier.apply(ControlAction("resnapshot", ACME, (USERS,), None, 0, "c1"))
    applier.apply(ControlAction("reset", ACME, (), None, 0, "c2"))
    applier.apply(ControlAction("reconcile", ACME, (), None, 0, "c3"))
    applier.apply(ControlAction("reconcile", "personio:nobody", (), None, 0, "c4"))
    await quiescent()
    assert [(a.command_id, a.outcome) for a in sent] == [("c4", "error")]  # not polled here: at once
    assert ("ats/users", "resnapshot") not in poller.ran  # waits for the poll in progress
    poller.hold.set()
    await wait_until(lambda: len(sent) == 4, "every ack")
    users = [kind for resource, kind in poller.ran if resource == USERS]
    # In order, each as the pair's next poll (the pipeline makes the reconcile after a reset the snapshot it owes).
    assert users == ["scheduled", "scheduled", "resnapshot", "reset", "reconcile"]
    acks = {a.command_id: a for a in sent}
    assert acks["c1"].outcome == "ok"
    assert acks["c1"].message == "ats/users: resnapshot done (3 records read, 2 events)"
    assert acks["c2"].outcome == "ok"
    assert "hris/employees: forgotten (3 entities)" in (acks["c2"].message or "")
    assert acks["c3"].outcome == "error"
    assert "hris/employees: failed: " in (acks["c3"].message or "")
    assert "ats/users: reconciled" in (acks["c3"].message or "")
    poller.stop()
    await asyncio.wait_for(runner, 10)


async def test_a_command_for_a_paused_integration_is_answered_with_an_error() -> None:
    poller = ScriptedPoller(config())
    sent: list[ControlAction] = []

    async def send(action: ControlAction) -> None:
        sent.append(action)

    applier = CommandApplier(poller, send)
    runner = asyncio.create_task(poller.run(grace_seconds=5))
    await wait_until(lambda: len(poller.ran) == 2, "the first polls")
    poller.pause(ACME)
    applier.apply(ControlAction("resnapshot", ACME, (USERS,), None, 0, "c1"))
    await wait_until(lambda: len(sent) == 1, "the ack")
    assert sent[0].outcome == "error"
    assert "paused" in (sent[0].message or "")
    poller.stop()
    await asyncio.wait_for(runner, 10)


async def test_a_command_handed_over_or_stopped_before_it_ran_is_left_to_the_next_owner_without_an_ack() -> None:
    poller = ScriptedPoller(config())
    sent: list[ControlAction] = []

    async def send(action: ControlAction) -> None:
        sent.append(action)

    applier = CommandApplier(poller, send)
    runner = asyncio.create_task(poller.run(grace_seconds=5))
    await wait_until(lambda: len(poller.ran) == 2, "the first polls")
    await quiescent()
    poller.hold.clear()
    poller.trigger(ACME, USERS)  # a poll in progress, held: the command waits behind it
    await quiescent()
    applier.apply(ControlAction("resnapshot", ACME, (), None, 0, "c1"))
    await quiescent()
    # The partition is handed over: the held poll is cancelled after the grace, the commands never run here.
    await poller.disown([(ACME, USERS), (ACME, EMPLOYEES)], 0.01)
    await applier.flush()
    assert sent == []  # no ack: the next owner finds the command unacknowledged and runs it
    assert ("ats/users", "resnapshot") not in poller.ran

    # Owned again, then removed from the registry: a command not run for that gets its error at once.
    poller.own([(ACME, USERS)])
    poller.hold.set()
    await wait_until(lambda: not poller.status[(ACME, USERS)].polling, "the pair to be idle")
    poller.hold.clear()
    poller.trigger(ACME, USERS)
    await quiescent()
    applier.apply(ControlAction("reconcile", ACME, (), None, 0, "c2"))
    await poller.disown([(ACME, USERS)], 0.01, handing_over=False)
    await applier.flush()
    assert [(a.command_id, a.outcome) for a in sent] == [("c2", "error")]
    assert "removed" in (sent[0].message or "")

    # And a relay stopping leaves its queued commands to the next owner too.
    poller.own([(ACME, USERS)])
    await quiescent()
    applier.apply(ControlAction("reset", ACME, (), None, 0, "c3"))  # behind the held poll
    poller.stop()
    poller.hold.set()  # the held poll ends; the stopping pair runs nothing more
    await asyncio.wait_for(runner, 10)
    await applier.flush()
    assert [a.command_id for a in sent] == ["c2"]
    assert ("ats/users", "reset") not in poller.ran


def entry(integration: str, revision: int, *, paused: bool = False, removed: bool = False) -> RegistryEntry:
    return RegistryEntry(integration, None, None, paused, removed, T0, "test", T1, "test", revision)


async def test_the_owner_acknowledges_the_registry_changes_of_the_integrations_it_owns_only() -> None:
    sent: list[ControlAction] = []

    async def send(action: ControlAction) -> None:
        sent.append(action)

    applier = CommandApplier(Scheduler(config(), ReloadGate(None, None), Metrics()), send)  # type: ignore[arg-type]
    changes = [
        RegistryChange(ACME, None, entry(ACME, 7)),
        RegistryChange("personio:elsewhere", None, entry("personio:elsewhere", 8)),
        RegistryChange("personio:paused", entry("personio:paused", 2), entry("personio:paused", 9, paused=True)),
        RegistryChange("personio:gone", entry("personio:gone", 3), None),  # a tombstone: nobody waits for it
    ]
    applier.registry_applied(changes, owns=lambda integration: integration != "personio:elsewhere")
    await applier.flush()
    assert [(a.integration, a.command_id, a.outcome, a.message) for a in sent] == [
        (ACME, registry_ack_id(7), "ok", "polling started"),
        ("personio:paused", registry_ack_id(9), "ok", "polling paused"),
    ]
    assert [registry_revision_acked(a) for a in sent] == [7, 9]
    assert all(ControlAction.decode(a.encode()) == a for a in sent)  # a record older CLIs read (and skip)
    assert registry_revision_acked(ControlAction("ack", ACME, (), None, 0, "c1", "ok", "")) is None


async def test_a_claim_acknowledges_what_it_applied_of_each_integration_by_its_state() -> None:
    sent: list[ControlAction] = []

    async def send(action: ControlAction) -> None:
        sent.append(action)

    applier = CommandApplier(Scheduler(config(), ReloadGate(None, None), Metrics()), send)  # type: ignore[arg-type]
    applier.registry_claimed(
        [entry(ACME, 4), entry("personio:paused", 5, paused=True), entry("personio:gone", 6, removed=True)]
    )
    await applier.flush()
    claimed = "(applied by the partition's new owner as it claimed it)"
    assert [(a.integration, registry_revision_acked(a), a.outcome, a.message) for a in sent] == [
        (ACME, 4, "ok", f"polling started {claimed}"),
        ("personio:paused", 5, "ok", f"polling paused {claimed}"),
        ("personio:gone", 6, "ok", f"polling stopped {claimed}"),
    ]
    assert all(ControlAction.decode(a.encode()) == a for a in sent)

"""The oracle of the fault-injection suite: from the simulator's mutation log, is what the relay published right?

The relay polls *snapshots* of the source, so several mutations between two polls collapse into at most one event
(two updates: one ``updated``; created and deleted in between: nothing; deleted and restored in between: one
``updated``, since ``changed_at`` moved). A per-mutation oracle would therefore be wrong. Instead, per entity
(integration, resource, id), the published sequence must be *possible* and must end in the *final* state:

* **duplicated**: an event id seen before, or an event whose record equals the previous event's record for the same
  entity (content re-announced). Either is what exactly-once forbids.
* **invalid**: the sequence is not a lifecycle (``created``, ``updated``*, ``deleted``, ``created`` (restored), ...),
  ``restored`` is not "announced before", an event's record is not a state the entity really had, or the states do
  not appear in the order the source went through them (order per entity), or an event names an entity the source
  never had.
* **lost**: the final state is not reflected. Live at the end: the last event is ``created``/``updated`` carrying
  exactly the final record. Soft-deleted or hard-deleted at the end: no event at all (never announced) or the last
  event is ``deleted``. Every content change is thereby covered: the final content must have been published.

``changes_expected`` is what the source did: the records live when the oracle started (each owes a snapshot
``created``) plus the mutations logged since.

**Re-announcements** (``data.reason == "resnapshot"``, asked by ``relay resnapshot``) are judged apart, not as
changes: each must be a ``created`` flagged ``snapshot`` (not ``restored``) of an entity live on the consumer's side,
carrying exactly the record its last event carried (so it is neither a duplicate of the original creation nor a
change), and fall inside a resnapshot the scenario asked for (:meth:`Oracle.resnapshot`: from the moment the command
was sent to the moment its acknowledgement came back, by the Kafka record's timestamp). Per resnapshot, an entity
untouched by the source meanwhile is re-announced exactly once if it was live, never if it was deleted; one the
source changed meanwhile at least once if it stayed live, and at most once more than it changed (the source serves a
record changed while a client pages again at the end of the listing).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.simulator import Mutation, Simulator
from tests.integration.harness import Event

EntityKey = tuple[str, str, str]  # integration, resource, entity id
Record = dict[str, Any]

SUMMARIES: list[str] = []
"""One line per scenario, printed again at the end of the pytest run (see ``conftest.py``)."""


def _canonical(record: Record | None) -> bytes | None:
    return None if record is None else orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


@dataclass
class Verdict:
    scenario: str
    changes_expected: int
    events_seen: int
    entities: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    event_ids: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.invalid)

    def summary(self) -> str:
        extra = "".join(f" {name}={value}" for name, value in self.extra.items())
        return (
            f"scenario={self.scenario} changes_expected={self.changes_expected} events_seen={self.events_seen} "
            f"lost={len(self.lost)} duplicated={len(self.duplicated)} invalid={len(self.invalid)} "
            f"entities={self.entities}{extra}"
        )

    def details(self, limit: int = 10) -> str:
        lines = [self.summary()]
        for name in ("lost", "duplicated", "invalid"):
            problems: list[str] = getattr(self, name)
            lines.extend(f"  {name}: {problem}" for problem in problems[:limit])
            if len(problems) > limit:
                lines.append(f"  {name}: ... {len(problems) - limit} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class Resnapshot:
    """A resnapshot of one pair the scenario asked for: the moments (wall clock, ms: the clock of the Kafka records'
    timestamps) and the lengths of the simulator's mutation log when the command was sent and when its
    acknowledgement came back. Whatever it re-announced was published in between."""

    integration: str
    resource: str
    sent_ms: int
    sent_seq: int
    acked_ms: int
    acked_seq: int

    def covers(self, event: Event) -> bool:
        data = event.data
        return (
            (data["integration_id"], data["resource"]) == (self.integration, self.resource)
            and event.timestamp_ms is not None
            and self.sent_ms <= event.timestamp_ms <= self.acked_ms
        )


@dataclass(frozen=True)
class Bounds:
    """How many times one resnapshot may re-announce one entity."""

    low: int
    high: int


# The state of an entity as the oracle compares it: its record as canonical JSON and whether it is deleted, or
# None once hard-deleted.
State = tuple[bytes, bool] | None


def _state(record: Record | None) -> State:
    if record is None:
        return None
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS), record.get("remote_deleted_at") is not None


class Oracle:
    """Create it before the churn starts: the records present then are the initial states.

    The final state of every entity is kept from the mutation log (what ``sim.get`` would answer, without generating
    every record again), since the simulator shares the test's event loop and must keep serving the relay.
    """

    def __init__(self, sim: Simulator, integrations: Sequence[str], resources: Sequence[str] = ("ats/users",)) -> None:
        self.sim = sim
        self.integrations = list(integrations)
        self.resources = list(resources)
        self.start_seq = len(sim.mutations)
        self.initial: dict[EntityKey, bytes | None] = {}
        self._final: dict[EntityKey, State] = {}
        self._applied = self.start_seq
        self.initial_live = 0
        for integration in self.integrations:
            for resource in self.resources:
                for record in sim.records(integration, resource, include_deleted=True):
                    key = (integration, resource, record["id"])
                    self._final[key] = state = _state(record)
                    self.initial[key] = state[0] if state else None
                    self.initial_live += record.get("remote_deleted_at") is None
        # The last event per entity seen by lost(), and how many events it has looked at.
        self._last: dict[EntityKey, tuple[str, bytes | None]] = {}
        self._events_seen = 0
        self._events_id = 0
        self.resnapshots: list[Resnapshot] = []

    @contextmanager
    def resnapshot(self, integration: str, resource: str) -> Iterator[None]:
        """Wrap the sending of a resnapshot command and the wait for its acknowledgement: what it re-announces must
        fall in that window (see the module's docstring)."""
        sent_ms, sent_seq = math.floor(time.time() * 1000), len(self.sim.mutations)
        yield
        acked_ms, acked_seq = math.ceil(time.time() * 1000), len(self.sim.mutations)
        self.resnapshots.append(Resnapshot(integration, resource, sent_ms, sent_seq, acked_ms, acked_seq))

    def _relevant(self, mutation: Mutation) -> bool:
        return mutation.integration in self.integrations and mutation.resource in self.resources

    def _refresh(self) -> None:
        mutations = self.sim.mutations
        for mutation in mutations[self._applied :]:
            if self._relevant(mutation):
                self._final[(mutation.integration, mutation.resource, mutation.id)] = _state(mutation.record)
        self._applied = len(mutations)

    def _histories(self) -> dict[EntityKey, list[bytes | None]]:
        """Every state each entity went through, oldest first (None: hard-deleted)."""
        histories: dict[EntityKey, list[bytes | None]] = defaultdict(list)
        for key, record in self.initial.items():
            histories[key].append(record)
        for mutation in self.sim.mutations[self.start_seq :]:
            if self._relevant(mutation):
                histories[(mutation.integration, mutation.resource, mutation.id)].append(_canonical(mutation.record))
        return histories

    def judge(self, events: Iterable[Event], scenario: str) -> Verdict:
        events = list(events)
        self._refresh()
        histories = self._histories()
        by_entity: dict[EntityKey, list[Event]] = defaultdict(list)
        for event in events:
            by_entity[_key(event)].append(event)
        verdict = Verdict(
            scenario,
            changes_expected=self.initial_live + len(self.sim.mutations) - self.start_seq,
            events_seen=len(events),
            entities=len(histories),
        )
        bounds = {window: self._bounds(window) for window in self.resnapshots}
        for key in sorted(set(histories) | set(by_entity)):
            self._judge_entity(key, by_entity.get(key, []), histories.get(key), verdict.event_ids, verdict)
            self._judge_reannouncements(key, by_entity.get(key, []), bounds, verdict)
        if self.resnapshots:
            verdict.extra["resnapshots"] = len(self.resnapshots)
            verdict.extra["reannounced"] = sum(1 for event in events if _reannounces(event))
        return verdict

    def _bounds(self, window: Resnapshot) -> dict[str, Bounds]:
        """Per entity of the window's pair: how many times that resnapshot may re-announce it (absent: never)."""
        pair = (window.integration, window.resource)
        live_throughout: dict[str, bool] = {
            entity: record is not None and orjson.loads(record).get("remote_deleted_at") is None
            for (integration, resource, entity), record in self.initial.items()
            if (integration, resource) == pair
        }  # until the command was sent: live then
        live_sometime = dict(live_throughout)
        changes: Counter[str] = Counter()
        for seq, mutation in enumerate(self.sim.mutations[self.start_seq : window.acked_seq], self.start_seq):
            if (mutation.integration, mutation.resource) != pair:
                continue
            now_live = mutation.record is not None and mutation.record.get("remote_deleted_at") is None
            if seq < window.sent_seq:
                live_throughout[mutation.id] = live_sometime[mutation.id] = now_live
                continue
            changes[mutation.id] += 1
            live_throughout[mutation.id] = live_throughout.get(mutation.id, False) and now_live
            live_sometime[mutation.id] = live_sometime.get(mutation.id, False) or now_live
        return {
            entity: Bounds(low=1 if live_throughout[entity] else 0, high=1 + changes[entity])
            for entity, sometime in live_sometime.items()
            if sometime
        }

    def _judge_reannouncements(
        self, key: EntityKey, events: list[Event], bounds: dict[Resnapshot, dict[str, Bounds]], verdict: Verdict
    ) -> None:
        """Each re-announcement falls in a resnapshot asked for; each resnapshot re-announced the entity as often as
        the source let it (see the module's docstring)."""
        name = "/".join(key)
        counted: Counter[Resnapshot] = Counter()
        for event in filter(_reannounces, events):
            window = next((w for w in self.resnapshots if w.covers(event)), None)
            if window is None:
                verdict.invalid.append(f"{name}: re-announced (id {event.body['id']}) outside any resnapshot asked")
            else:
                counted[window] += 1
        integration, resource, entity = key
        for number, window in enumerate(self.resnapshots):
            if (window.integration, window.resource) != (integration, resource):
                continue
            allowed = bounds[window].get(entity, Bounds(0, 0))
            if counted[window] > allowed.high:
                verdict.duplicated.append(
                    f"{name}: re-announced {counted[window]} times by resnapshot {number}, at most {allowed.high} due"
                )
            elif counted[window] < allowed.low:
                verdict.lost.append(f"{name}: live throughout resnapshot {number}, and not re-announced by it")

    def lost(self, events: Sequence[Event]) -> int:
        """How many entities do not show their final state yet (for waiting until the relay caught up).

        ``events`` must be the same growing list at every call (only the new ones are looked at)."""
        self._refresh()
        if id(events) != self._events_id:  # another collector: start over
            self._last.clear()
            self._events_seen, self._events_id = 0, id(events)
        for event in events[self._events_seen :]:
            self._last[_key(event)] = (event.kind, _canonical(event.data["record"]))
        self._events_seen = len(events)
        return sum(1 for key, final in self._final.items() if _lost(final, self._last.get(key)))

    def _judge_entity(
        self,
        key: EntityKey,
        events: list[Event],
        history: list[bytes | None] | None,
        seen_ids: set[str],
        verdict: Verdict,
    ) -> None:
        name = "/".join(key)
        if history is None:
            verdict.invalid.append(f"{name}: {len(events)} events for an entity the source never had")
            return
        state, announced, position = "absent", False, -1
        previous: bytes | None = None
        for number, event in enumerate(events):
            event_id = str(event.body["id"])
            record = _canonical(event.data["record"])
            where = f"{name} event {number} ({event.kind}, id {event_id})"
            if event_id in seen_ids:
                verdict.duplicated.append(f"{where}: event id published before")
                continue
            seen_ids.add(event_id)
            if _reannounces(event):  # not a change: what the consumer was told last, told again
                problem = _reannouncement_problem(state, previous, event)
                if problem:
                    verdict.invalid.append(f"{where}: {problem}")
                continue
            if announced and record == previous:
                verdict.duplicated.append(f"{where}: same record as the previous event")
                continue
            previous = record
            problem = _lifecycle_problem(state, announced, event)
            if problem:
                verdict.invalid.append(f"{where}: {problem}")
            state = "deleted" if event.kind == "deleted" else "live"
            announced = True
            # Order: the record must be a state the entity had, later than the one the previous event carried.
            found = next((j for j in range(position + 1, len(history)) if history[j] == record), None)
            if found is None:
                ever = record in history
                verdict.invalid.append(
                    f"{where}: record {'out of order' if ever else 'never a state of this entity'}"
                    + (" (vanished, but not hard-deleted)" if record is None and not ever else "")
                )
            else:
                position = found
        final = self._final.get(key)
        last = (events[-1].kind, _canonical(events[-1].data["record"])) if events else None
        if _lost(final, last):
            status = "hard-deleted" if final is None else "deleted" if final[1] else "live"
            verdict.lost.append(f"{name}: {status} at the end, last published: {last[0] if last else 'no event'}")


def _reannounces(event: Event) -> bool:
    return bool(event.data["reason"] == "resnapshot")


def _reannouncement_problem(state: str, previous: bytes | None, event: Event) -> str | None:
    """What is wrong with a re-announcement (``reason: "resnapshot"``), given what the consumer was told last."""
    data = event.data
    if event.kind != "created" or not data["snapshot"] or data["restored"]:
        return f"a re-announcement must be a created, snapshot and not restored: {event.kind}, {data['snapshot']=}"
    if state != "live":
        return f"re-announced while {state} for the consumer"
    if _canonical(data["record"]) != previous:
        return "re-announced a record other than the one its last event carried"
    return None


def _key(event: Event) -> EntityKey:
    data = event.data
    return data["integration_id"], data["resource"], data["id"]


def _lifecycle_problem(state: str, announced: bool, event: Event) -> str | None:
    data = event.data
    record = data["record"]
    if event.kind == "created":
        if state == "live":
            return "created while live"
        if bool(data["restored"]) != announced:
            return f"restored={data['restored']} although {'' if announced else 'never '}announced before"
        if record is None or record.get("remote_deleted_at") is not None:
            return "created with a deleted record"
    elif event.kind == "updated":
        if state != "live":
            return f"updated while {state}"
        if record is None or record.get("remote_deleted_at") is not None:
            return "updated with a deleted record"
    elif event.kind == "deleted":
        if state != "live":
            return f"deleted while {state}"
        if record is None and data["reason"] != "vanished":
            return "deleted without a record and not vanished"
        if record is not None and record.get("remote_deleted_at") is None:
            return "deleted with a live record"
    else:
        return f"unknown kind {event.kind!r}"
    return None


def _lost(final: State, last: tuple[str, bytes | None] | None) -> bool:
    """Whether the last event published (kind, canonical record) fails to reflect the entity's final state."""
    if final is None or final[1]:  # hard- or soft-deleted: never announced, or announced as deleted
        return last is not None and last[0] != "deleted"
    return last is None or last[0] == "deleted" or last[1] != final[0]

"""What ``relay state show`` reports, pure: the state of one integration's pairs as read back from the state topic
(a :class:`~relay.state.StateStore` filled by :mod:`relay.state_cli`), the owner of its partition found in the
consumer group's description, and both as text or JSON. No I/O, no clock (``now_ms`` is passed in).

What belongs here: the report and its two renderings, the decoding of a group description into an owner, and the
one-line summary of an entity's fingerprint. Reading Kafka is :mod:`relay.state_cli`'s.

Nothing here prints a secret: the report holds only what the state topic and the group description hold (entity ids,
fingerprints, checkpoints, member ids and client hosts); an in-progress poll's cursor, opaque to the relay and
possibly meaningful to the source, is said to be held, never printed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from relay import diff
from relay.registry import RegistryEntry
from relay.state import Checkpoint, PairState
from relay.timestamps import format_timestamp_ms

DEFAULT_ENTITY_LIMIT: Final = 1000
SHORT_HASH_HEX: Final = 8  # hex digits of the 64-bit content hash shown per entity
_FINGERPRINT_HEADER_BYTES: Final = 25  # relay.diff: hash, changed_at, version, shape, flags; then 2 bytes a field


# --- Entities -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntitySummary:
    """One remembered entity, as ``--entities`` lists it."""

    id: str
    state: str  # live, deleted, vanished (deleted because a reconciliation no longer found it)
    version: int  # events emitted for it so far
    changed_at_ms: int | None
    content_hash: str  # the first SHORT_HASH_HEX hex digits of the 64-bit content hash
    fields: int  # top-level fields remembered (0 once deleted)

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.state,
            "version": self.version,
            "changed_at": None if self.changed_at_ms is None else format_timestamp_ms(self.changed_at_ms),
            "hash": self.content_hash,
            "fields": self.fields,
        }


def summarize_fingerprint(entity_id: str, fingerprint: bytes) -> EntitySummary:
    """The summary of one entity's fingerprint (layout in :mod:`relay.diff`)."""
    deleted = diff.is_deleted(fingerprint)
    state = ("vanished" if diff.is_vanished(fingerprint) else "deleted") if deleted else "live"
    return EntitySummary(
        id=entity_id,
        state=state,
        version=diff.version(fingerprint),
        changed_at_ms=diff.changed_at_ms(fingerprint),
        content_hash=f"{diff.content_hash(fingerprint):016x}"[:SHORT_HASH_HEX],
        fields=0 if deleted else max(0, (len(fingerprint) - _FINGERPRINT_HEADER_BYTES) // 2),
    )


def entity_summaries(state: PairState, limit: int) -> tuple[tuple[EntitySummary, ...], int]:
    """The first ``limit`` entities of a pair by id, summarized, and how many were left out."""
    ids = sorted(state.entities)
    shown = tuple(summarize_fingerprint(entity_id, state.entities[entity_id]) for entity_id in ids[:limit])
    return shown, max(0, len(ids) - limit)


# --- Owner ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """A member of the consumer group, as Kafka describes it."""

    member_id: str
    client_id: str
    client_host: str
    partitions: frozenset[tuple[str, int]]  # (topic, partition) assigned to it

    def as_json(self) -> dict[str, object]:
        return {"member_id": self.member_id, "client_id": self.client_id, "client_host": self.client_host}


@dataclass(frozen=True, slots=True)
class GroupView:
    """The consumer group of the fleet (``RELAY_GROUP_ID``): its state and members."""

    group_id: str
    state: str  # Kafka's: Stable, PreparingRebalance, CompletingRebalance, Empty, Dead
    members: tuple[Member, ...] = ()

    def owner_of(self, topic: str, partition: int) -> Member | None:
        """The member the group assigned ``partition`` of ``topic`` to; None when none has it (no member, or a
        rebalance under way)."""
        for member in self.members:
            if (topic, partition) in member.partitions:
                return member
        return None


def group_view(
    group_id: str, state: str, members: Iterable[tuple[str, str, str, Sequence[tuple[str, Sequence[int]]]]]
) -> GroupView:
    """A :class:`GroupView` from a described group's state and its members as (member id, client id, client host,
    assignment as (topic, partitions) pairs)."""
    return GroupView(
        group_id,
        state,
        tuple(
            Member(
                member_id,
                client_id,
                client_host,
                frozenset((topic, partition) for topic, partitions in assignment for partition in partitions),
            )
            for member_id, client_id, client_host, assignment in members
        ),
    )


# --- The report -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResourceReport:
    """One pair of the integration: what its state says (an empty state when it has none yet)."""

    resource: str
    has_state: bool
    checkpoint: Checkpoint
    live: int
    deleted: int
    in_registry: bool  # polled for, according to the registry
    entities: tuple[EntitySummary, ...] | None = None  # with --entities
    entities_left_out: int = 0

    @classmethod
    def of(
        cls, resource: str, state: PairState | None, *, in_registry: bool, entity_limit: int | None
    ) -> ResourceReport:
        if state is None:
            return cls(resource, False, Checkpoint(), 0, 0, in_registry, () if entity_limit is not None else None)
        entities, left_out = (None, 0) if entity_limit is None else entity_summaries(state, entity_limit)
        return cls(
            resource,
            True,
            state.checkpoint,
            state.live_entities,
            len(state.entities) - state.live_entities,
            in_registry,
            entities,
            left_out,
        )


@dataclass(frozen=True, slots=True)
class StateReport:
    integration: str
    entry: RegistryEntry | None  # None: the registry does not hold it
    registry_topic: str
    state_topic: str
    partition: int
    records: int  # state records of this integration read
    group: GroupView
    resources: tuple[ResourceReport, ...] = field(default=())

    @property
    def owner(self) -> Member | None:
        return self.group.owner_of(self.state_topic, self.partition)

    @property
    def has_state(self) -> bool:
        return any(resource.has_state for resource in self.resources)


def resources_to_show(stored: Iterable[str], polled: Iterable[str], only: str | None) -> tuple[tuple[str, bool], ...]:
    """The resources to report, each with whether the registry polls it: those polled first (in the registry's
    order), then those with state only (removed from its resources, say), by name; only ``only``, when given, with
    state or not."""
    polled = tuple(polled)
    if only is not None:
        return ((only, only in polled),)
    return tuple((name, name in polled) for name in [*polled, *sorted(set(stored) - set(polled))])


# --- Rendering ------------------------------------------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    """``seconds`` for people: 45 s, 12 min, 3.5 h, 2.0 d (negative: from now, as 'in ...' would be)."""
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 120:
        return f"{sign}{seconds:.0f} s"
    if seconds < 7200:
        return f"{sign}{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{sign}{seconds / 3600:.1f} h"
    return f"{sign}{seconds / 86_400:.1f} d"


def _when(epoch_ms: int | None, now_ms: int, *, never: str = "never") -> str:
    if epoch_ms is None:
        return never
    return f"{format_timestamp_ms(epoch_ms)} ({duration_text((now_ms - epoch_ms) / 1000)} ago)"


def checkpoint_text(checkpoint: Checkpoint, now_ms: int) -> str:
    done = "snapshot done" if checkpoint.snapshot_done else "no snapshot completed yet"
    poll = checkpoint.in_progress
    if poll is None:
        return f"{done}; no poll in progress"
    since = f", changes since {poll.updated_after}" if poll.updated_after else ""
    return (
        f"{done}; {poll.kind} poll in progress (cursor held, {poll.pages} page(s) committed, started "
        f"{_when(poll.started_at_ms, now_ms)}{since})"
    )


def owner_text(report: StateReport) -> str:
    owner = report.owner
    if owner is not None:
        return f"{owner.member_id} (client {owner.client_id}, host {owner.client_host})"
    if not report.group.members:
        return f"none (group {report.group.group_id!r} has no member)"
    return f"none (group {report.group.group_id!r} is {report.group.state}: partition {report.partition} unassigned)"


def registry_text(report: StateReport, polled: Sequence[str]) -> str:
    entry = report.entry
    if entry is None:
        return f"not in the registry ({report.registry_topic})"
    return (
        f"{entry.state} in {report.registry_topic} (category {entry.category or '-'}, resources "
        f"{','.join(polled) or '-'}{' (default)' if entry.resources is None else ''}; updated {entry.updated_at} by "
        f"{entry.updated_by})"
    )


def render_text(report: StateReport, now_ms: int, *, polled: Sequence[str] = ()) -> list[str]:
    """The report as lines of text."""
    lines = [
        f"integration {report.integration}: {registry_text(report, polled)}",
        f"state: partition {report.partition} of {report.state_topic}, {report.records} record(s) of it",
        f"owner: {owner_text(report)}",
    ]
    if report.entry is None:
        lines.append(
            "note: the registry does not hold this integration"
            + (": this state is left from before (or from a registry tombstone)" if report.has_state else "")
        )
    if not report.resources:
        lines.append("no state for this integration" + ("" if report.entry is None else " and no resource polled"))
    for resource in report.resources:
        lines.append(f"{resource.resource}{'' if resource.in_registry else ' (not polled: not in its resources)'}")
        if not resource.has_state:
            lines.append("  no state yet: its first poll will be a snapshot")
            continue
        checkpoint = resource.checkpoint
        lines += [
            f"  checkpoint      {checkpoint_text(checkpoint, now_ms)}",
            f"  watermark       {_watermark_text(checkpoint.watermark_ms, now_ms)}",
            f"  entities        {resource.live} live, {resource.deleted} deleted",
            f"  last reconcile  {_when(checkpoint.last_reconcile_ms, now_ms)}",
        ]
        if resource.entities is not None:
            lines += _entity_lines(resource)
    return lines


def _watermark_text(watermark_ms: int | None, now_ms: int) -> str:
    if watermark_ms is None:
        return "none (no poll completed)"
    return f"{format_timestamp_ms(watermark_ms)} (lag {duration_text((now_ms - watermark_ms) / 1000)})"


def _entity_lines(resource: ResourceReport) -> list[str]:
    assert resource.entities is not None
    if not resource.entities:
        return ["  no entities"]
    rows = [("ID", "STATE", "VERSION", "CHANGED_AT", "HASH", "FIELDS")]
    rows += [
        (
            e.id,
            e.state,
            str(e.version),
            "-" if e.changed_at_ms is None else format_timestamp_ms(e.changed_at_ms),
            e.content_hash,
            str(e.fields),
        )
        for e in resource.entities
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if resource.entities_left_out:
        lines.append(f"  ... and {resource.entities_left_out} more (--limit)")
    return lines


def render_json(report: StateReport, now_ms: int, *, polled: Sequence[str] = ()) -> dict[str, Any]:
    """The report as a JSON object (``--json``)."""
    owner = report.owner
    return {
        "integration": report.integration,
        "in_registry": report.entry is not None,
        "registry": None if report.entry is None else report.entry.as_json(),
        "polled_resources": list(polled),
        "state_topic": report.state_topic,
        "partition": report.partition,
        "records": report.records,
        "group": {"id": report.group.group_id, "state": report.group.state, "members": len(report.group.members)},
        "owner": None if owner is None else owner.as_json(),
        "resources": [_resource_json(resource, now_ms) for resource in report.resources],
    }


def _resource_json(resource: ResourceReport, now_ms: int) -> dict[str, Any]:
    checkpoint = resource.checkpoint
    poll = checkpoint.in_progress
    document: dict[str, Any] = {
        "resource": resource.resource,
        "polled": resource.in_registry,
        "has_state": resource.has_state,
        "snapshot_done": checkpoint.snapshot_done,
        "in_progress": None
        if poll is None
        else {
            "kind": poll.kind,
            "pages": poll.pages,
            "started_at": format_timestamp_ms(poll.started_at_ms),
            "updated_after": poll.updated_after,
        },
        "watermark": None if checkpoint.watermark_ms is None else format_timestamp_ms(checkpoint.watermark_ms),
        "lag_seconds": None if checkpoint.watermark_ms is None else round((now_ms - checkpoint.watermark_ms) / 1000, 3),
        "live": resource.live,
        "deleted": resource.deleted,
        "last_reconcile": None
        if checkpoint.last_reconcile_ms is None
        else format_timestamp_ms(checkpoint.last_reconcile_ms),
    }
    if resource.entities is not None:
        document["entities"] = [entity.as_json() for entity in resource.entities]
        document["entities_left_out"] = resource.entities_left_out
    return document

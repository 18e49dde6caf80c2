"""The registry of integrations, pure: its record (:class:`RegistryEntry` and its encoding), the fold of the registry
topic's records into a :class:`Registry` (an immutable mapping of integration id to entry) with the changes it made,
the edits an operator asks for (:func:`add`, :func:`remove`, :func:`pause`, :func:`resume`), seeding from
``RELAY_INTEGRATIONS`` (:func:`seed`), the resources an entry is polled for (:class:`DefaultResources`) and what the
owner of an integration does when its entry changes (:func:`plan_change`). No I/O:
:mod:`relay.registry_topic` reads and writes the topic, :mod:`relay.registry_cli` is ``relay integrations``.

**Order is the registry's.** The topic (``RELAY_INTEGRATIONS_TOPIC``) is compacted and keyed by integration id, so all
the records of one integration sit in one partition, in the order Kafka appended them. An integration's entry is its
last record by offset: the one compaction keeps, so every reader agrees before and after compaction. Neither the
writers' clocks (``updated_at``, informational) nor the order in which a reader receives records matter: an entry's
``revision`` is the offset of its record, and a record at or below the offset already folded for its integration (a
redelivery, a re-read) changes nothing. A writer that read an older entry still wins if it writes last: the registry
holds whole entries, each written from the latest one its writer had read.

**A removal is a record** (``removed: true``), never a tombstone: compaction would drop a tombstone, and seeding would
then add the integration again. A tombstone written by hand forgets the integration (seeding may add it again).

**A malformed record is skipped**, logged with its partition and offset; the integration keeps its entry before it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, get_args

import orjson

from relay.config_kinds import is_integration_id, is_resource_path
from relay.errors import UnknownIntegration
from relay.timestamps import format_timestamp_ms, parse_timestamp_ms

if TYPE_CHECKING:
    from relay.config import Config

log = logging.getLogger(__name__)

Category = Literal["ats", "hris"]
CATEGORIES: Final[tuple[Category, ...]] = get_args(Category)
EntryState = Literal["active", "paused", "removed"]
RECORD_VERSION: Final = 1
NOT_WRITTEN: Final = -1  # the revision of an entry not yet in the registry
MAX_RESOURCES: Final = 256
MAX_BY_LENGTH: Final = 256


class UnreadableEntry(ValueError):
    """A registry record this version cannot read; the message says why, never the whole record."""


def now_text() -> str:
    """The current time as the registry writes it (``2026-01-02T03:04:05.678Z``)."""
    return format_timestamp_ms(round(time.time() * 1000))


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """One integration as the registry holds it."""

    integration: str
    category: Category | None
    resources: tuple[str, ...] | None  # None: the defaults of its category, as each relay configures them
    paused: bool
    removed: bool
    added_at: str
    added_by: str
    updated_at: str
    updated_by: str
    revision: int = NOT_WRITTEN  # the registry offset of the record it comes from; not in the record itself

    @property
    def state(self) -> EntryState:
        return "removed" if self.removed else "paused" if self.paused else "active"

    def key(self) -> bytes:
        return self.integration.encode()

    def encode(self) -> bytes:
        """The record value: compact JSON with a version field (the revision is the record's offset, not in it)."""
        document = self.as_json()
        del document["revision"]
        return orjson.dumps({"v": RECORD_VERSION, **document})

    def as_json(self) -> dict[str, object]:
        """The entry as a JSON object, revision included (``relay integrations --json``)."""
        return {
            "integration": self.integration,
            "category": self.category,
            "resources": None if self.resources is None else list(self.resources),
            "paused": self.paused,
            "removed": self.removed,
            "added_at": self.added_at,
            "added_by": self.added_by,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "revision": self.revision,
        }

    def edited(self, *, at: str, by: str, **changes: Any) -> RegistryEntry:
        """This entry with ``changes``, as written at ``at`` by ``by`` (not yet in the registry)."""
        return dataclasses.replace(self, **changes, updated_at=at, updated_by=by, revision=NOT_WRITTEN)

    @classmethod
    def decode(cls, key: bytes, value: bytes, offset: int) -> RegistryEntry:
        """The entry in a record; raises :class:`UnreadableEntry` for anything else."""
        document = _json_object(value)
        if document.get("v") != RECORD_VERSION:
            raise UnreadableEntry(f"unknown record version {str(document.get('v'))[:20]!r}")
        integration = document.get("integration")
        if not isinstance(integration, str) or not is_integration_id(integration):
            raise UnreadableEntry("integration must be an integration id")
        if integration.encode() != key:
            raise UnreadableEntry(f"the record's key is not its integration {integration[:128]!r}")
        return cls(
            integration=integration,
            category=_category(document.get("category")),
            resources=_resources(document.get("resources")),
            paused=_flag(document, "paused"),
            removed=_flag(document, "removed"),
            added_at=_time(document, "added_at"),
            added_by=_by(document, "added_by"),
            updated_at=_time(document, "updated_at"),
            updated_by=_by(document, "updated_by"),
            revision=offset,
        )


def _json_object(value: bytes) -> dict[str, object]:
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise UnreadableEntry("the record is not JSON") from None
    if not isinstance(document, dict):
        raise UnreadableEntry("the record is not a JSON object")
    return document


def _category(value: object) -> Category | None:
    for category in CATEGORIES:
        if value == category:
            return category
    if value is not None:
        raise UnreadableEntry(f"category must be one of {', '.join(CATEGORIES)} or null, not {str(value)[:40]!r}")
    return None


def _resources(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= MAX_RESOURCES
        or not all(isinstance(resource, str) and is_resource_path(resource) for resource in value)
        or len(set(value)) != len(value)
    ):
        raise UnreadableEntry("resources must be null or a list of distinct resource paths like ats/users")
    return tuple(value)


def _flag(document: Mapping[str, object], name: str) -> bool:
    value = document.get(name)
    if not isinstance(value, bool):
        raise UnreadableEntry(f"{name} must be true or false")
    return value


def _time(document: Mapping[str, object], name: str) -> str:
    value = document.get(name)
    try:
        if isinstance(value, str):
            parse_timestamp_ms(value)
            return value
    except ValueError:
        pass
    raise UnreadableEntry(f"{name} must be an RFC 3339 time")


def _by(document: Mapping[str, object], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_BY_LENGTH or not value.isprintable():
        raise UnreadableEntry(f"{name} must be printable text of 1 to {MAX_BY_LENGTH} characters")
    return value


# --- The fold -------------------------------------------------------------------------------------------------------


class TopicRecord(Protocol):
    """What the fold reads of a Kafka record (an aiokafka ``ConsumerRecord`` is one)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """What one fold did to one integration: its entry before and after (None: not in the registry)."""

    integration: str
    before: RegistryEntry | None
    after: RegistryEntry | None

    @property
    def kind(self) -> Literal["added", "removed", "forgotten", "paused", "resumed", "updated"]:
        """The change in one word, for logs and for the running relay (which acts on ``after`` anyway)."""
        before, after = self.before, self.after
        if after is None:
            return "forgotten"
        if before is None or (before.removed and not after.removed):
            return "added"
        if after.removed and not before.removed:
            return "removed"
        if after.paused != before.paused:
            return "paused" if after.paused else "resumed"
        return "updated"


class Registry(Mapping[str, RegistryEntry]):
    """The registry of integrations as read up to some position of its topic: integration id -> entry, removed
    entries included (:meth:`active` leaves them out). Immutable: :meth:`fold` makes a new one."""

    __slots__ = ("_entries", "_positions", "_seen")

    def __init__(self) -> None:
        self._entries: dict[str, RegistryEntry] = {}
        # Per integration, where its last record folded sits (partition, offset), tombstones included: a record at or
        # before it in the same partition is one this registry has already folded.
        self._seen: dict[str, tuple[int, int]] = {}
        self._positions: dict[int, int] = {}

    def __getitem__(self, integration: str) -> RegistryEntry:
        return self._entries[integration]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({len(self._entries)} entries, positions={self._positions})"

    @property
    def positions(self) -> Mapping[int, int]:
        """Per partition of the topic, the offset of the next record to fold: where to go on reading."""
        return dict(self._positions)

    def moved_to(self, positions: Mapping[int, int]) -> Registry:
        """This registry as read up to ``positions`` too (per partition; never backwards): where a read that found no
        more records ended, so that following it goes on from there."""
        moved = self._copy()
        for partition, position in positions.items():
            moved._positions[partition] = max(moved._positions.get(partition, 0), position)
        return moved

    def _copy(self) -> Registry:
        copied = Registry()
        copied._entries = dict(self._entries)
        copied._seen = dict(self._seen)
        copied._positions = dict(self._positions)
        return copied

    def active(self) -> tuple[RegistryEntry, ...]:
        """The entries not removed (paused ones included), by integration id."""
        return tuple(sorted((e for e in self._entries.values() if not e.removed), key=lambda e: e.integration))

    def fold(self, records: Iterable[TopicRecord], *, topic: str = "") -> tuple[Registry, tuple[RegistryChange, ...]]:
        """A new registry with ``records`` folded in, and what changed, one :class:`RegistryChange` per integration
        whose entry changed. ``topic`` only names the topic in the warning about a malformed record."""
        folded = self._copy()
        before: dict[str, RegistryEntry | None] = {}
        for record in records:
            if (integration := folded._fold_one(record, topic)) is not None and integration not in before:
                before[integration] = self._entries.get(integration)
        changes = tuple(
            RegistryChange(integration, old, new)
            for integration, old in before.items()
            if old != (new := folded._entries.get(integration))
        )
        return folded, changes

    def _fold_one(self, record: TopicRecord, topic: str) -> str | None:
        """Fold one record in place (only while :meth:`fold` builds this registry); return its integration, if it
        took effect."""
        partition, offset = record.partition, record.offset
        self._positions[partition] = max(self._positions.get(partition, 0), offset + 1)
        try:
            integration = _integration_of(record.key)
        except UnreadableEntry as exc:
            _skipped(topic, partition, offset, str(exc))
            return None
        seen = self._seen.get(integration)
        if seen is not None and seen[0] == partition and offset <= seen[1]:
            return None  # folded already: a redelivery, or a re-read
        if seen is not None and seen[0] != partition:
            log.warning(
                f"registry: integration {integration[:128]!r} has records in partitions {seen[0]} and {partition} of "
                f"{topic or 'the registry topic'}: its partition count changed, so the order between them is the "
                "order they were read in"
            )
        if record.value is None:
            self._entries.pop(integration, None)
        else:
            assert record.key is not None  # _integration_of checked it
            try:
                self._entries[integration] = RegistryEntry.decode(record.key, record.value, offset)
            except UnreadableEntry as exc:
                _skipped(topic, partition, offset, str(exc))
                return None
        self._seen[integration] = (partition, offset)
        return integration


EMPTY: Final = Registry()


def fold(records: Iterable[TopicRecord], *, topic: str = "") -> Registry:
    """The registry that ``records`` (in any order, repeated or not) make."""
    return EMPTY.fold(records, topic=topic)[0]


def _integration_of(key: bytes | None) -> str:
    if key is None:
        raise UnreadableEntry("the record has no key")
    try:
        integration = key.decode()
    except UnicodeDecodeError:
        raise UnreadableEntry("the record's key is not UTF-8") from None
    if not is_integration_id(integration):
        raise UnreadableEntry(f"the record's key {integration[:128]!r} is not an integration id")
    return integration


def _skipped(topic: str, partition: int, offset: int, why: str) -> None:
    # Said in the message itself, not only in extra fields: `relay integrations` prints warnings as bare lines.
    log.warning(
        f"registry: skipped the unreadable record at partition {partition} offset {offset} of "
        f"{topic or 'the registry topic'}: {why}",
        extra={"topic": topic, "partition": partition, "offset": offset, "error": why},
    )


# --- Edits ----------------------------------------------------------------------------------------------------------


def check_resources(category: Category | None, resources: tuple[str, ...] | None) -> None:
    """Raise ValueError, naming the culprit, unless ``resources`` are distinct resource paths of ``category``."""
    if resources is None:
        return
    if not 0 < len(resources) <= MAX_RESOURCES:
        raise ValueError(f"list 1 to {MAX_RESOURCES} resources")
    for resource in resources:
        if not is_resource_path(resource):
            raise ValueError(f"{resource!r} is not a resource path like ats/users (a-z, 0-9, _, - between slashes)")
        if category is not None and not resource.startswith(f"{category}/"):
            raise ValueError(f"{resource!r} is not a resource of an {category.upper()} integration ({category}/...)")
    if len(set(resources)) != len(resources):
        raise ValueError("a resource is listed more than once")


def check_integration_id(integration: str) -> None:
    """Raise ValueError unless ``integration`` can be an integration id."""
    if not integration or not is_integration_id(integration):
        raise ValueError(f"{integration!r} is not an integration id (printable, no spaces or commas)")


def add(
    registry: Registry,
    integration: str,
    *,
    category: Category | None = None,
    resources: tuple[str, ...] | None = None,
    at: str,
    by: str,
) -> RegistryEntry | None:
    """The entry to write to add ``integration`` (again, if it was removed), or to change the category and resources
    given of one already there; None when it is there already with them. Raises ValueError for an invalid id or
    resources, or resources not of the category."""
    check_integration_id(integration)
    current = registry.get(integration)
    if current is None or current.removed:
        check_resources(category, resources)
        return RegistryEntry(integration, category, resources, False, False, at, by, at, by)
    changes: dict[str, Any] = {}
    if category is not None and category != current.category:
        changes["category"] = category
    if resources is not None and resources != current.resources:
        changes["resources"] = resources
    check_resources(category or current.category, resources or current.resources)
    return current.edited(at=at, by=by, **changes) if changes else None


def remove(registry: Registry, integration: str, *, at: str, by: str) -> RegistryEntry | None:
    """The entry to write to remove ``integration``; None when it is removed already. Raises UnknownIntegration when
    the registry never held it."""
    current = registry.get(integration)
    if current is None:
        raise _unknown(integration)
    return None if current.removed else current.edited(at=at, by=by, removed=True)


def pause(registry: Registry, integration: str, *, at: str, by: str) -> RegistryEntry | None:
    """The entry to write to pause ``integration``; None when it is paused already. Raises UnknownIntegration when
    the registry does not hold it, or holds it as removed."""
    current = _present(registry, integration)
    return None if current.paused else current.edited(at=at, by=by, paused=True)


def resume(registry: Registry, integration: str, *, at: str, by: str) -> RegistryEntry | None:
    """The entry to write to resume ``integration``; None when it is not paused. Raises UnknownIntegration when the
    registry does not hold it, or holds it as removed."""
    current = _present(registry, integration)
    return current.edited(at=at, by=by, paused=False) if current.paused else None


def _present(registry: Registry, integration: str) -> RegistryEntry:
    current = registry.get(integration)
    if current is None:
        raise _unknown(integration)
    if current.removed:
        raise UnknownIntegration(
            f"integration {integration[:128]!r} was removed from the registry (at {current.updated_at} by "
            f"{current.updated_by}); add it again first",
            integration=integration,
        )
    return current


def _unknown(integration: str) -> UnknownIntegration:
    return UnknownIntegration(f"integration {integration[:128]!r} is not in the registry", integration=integration)


def seed(registry: Registry, integrations: Iterable[str], *, at: str, by: str) -> tuple[RegistryEntry, ...]:
    """The entries that add each of ``integrations`` (``RELAY_INTEGRATIONS``) the registry has never heard of, each
    once, in order: with no category and no resources of their own, so polled for ``RELAY_RESOURCES`` as before the
    registry. One removed is heard of, and stays removed."""
    fresh = dict.fromkeys(integration for integration in integrations if integration not in registry)
    return tuple(RegistryEntry(integration, None, None, False, False, at, by, at, by) for integration in fresh)


# --- Resources ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DefaultResources:
    """The resources of an integration that names none of its own, by category: ``RELAY_RESOURCES_ATS``,
    ``RELAY_RESOURCES_HRIS``, each falling back to ``RELAY_RESOURCES`` when unset (and for no category)."""

    default: tuple[str, ...]
    ats: tuple[str, ...] | None = None
    hris: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, config: Config) -> DefaultResources:
        return cls(config.resources, config.resources_ats, config.resources_hris)

    def of(self, category: Category | None) -> tuple[str, ...]:
        by_category = {"ats": self.ats, "hris": self.hris}.get(category) if category is not None else None
        return self.default if by_category is None else by_category

    def resources_of(self, entry: RegistryEntry) -> tuple[str, ...]:
        """The resources ``entry``'s integration is polled for."""
        return self.of(entry.category) if entry.resources is None else entry.resources

    def pairs(self, registry: Registry) -> tuple[tuple[str, str], ...]:
        """Every (integration, resource) pair of the integrations not removed (paused ones included: pausing a pair
        is the scheduler's business), in order."""
        return tuple(
            (entry.integration, resource) for entry in registry.active() for resource in self.resources_of(entry)
        )


# --- What a running relay does about a change -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairsPlan:
    """What the owner of some integrations does when the registry goes from one state to the next: the pairs to
    start polling (``own``, paused for the integrations in ``paused``), those to stop polling (``disown``), and the
    integrations whose pairs it keeps but pauses or resumes."""

    own: tuple[tuple[str, str], ...] = ()
    disown: tuple[tuple[str, str], ...] = ()
    paused: frozenset[str] = frozenset()  # of the integrations of ``own``: those to own paused
    pause: tuple[str, ...] = ()
    resume: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.own or self.disown or self.pause or self.resume)


def plan_change(
    before: Registry,
    after: Registry,
    defaults: DefaultResources,
    *,
    owned: Callable[[str], bool],
    integrations: Iterable[str] | None = None,
) -> PairsPlan:
    """What the owner of the integrations for which ``owned`` is true does when the registry goes from ``before`` to
    ``after``: added pairs are owned, removed ones disowned (a removed integration loses all of them, a narrower
    resource list some), a pause or resume applies to the pairs it keeps. ``integrations``: only these (those a
    :class:`RegistryChange` names), by default every one of either registry."""
    names = sorted(set(before) | set(after) if integrations is None else set(integrations))
    own: list[tuple[str, str]] = []
    disown: list[tuple[str, str]] = []
    paused: set[str] = set()
    pause_: list[str] = []
    resume_: list[str] = []
    for integration in names:
        if not owned(integration):
            continue
        old, new = _polled(before.get(integration), defaults), _polled(after.get(integration), defaults)
        own += [(integration, resource) for resource in new if resource not in old]
        disown += [(integration, resource) for resource in old if resource not in new]
        now_paused = (entry := after.get(integration)) is not None and entry.paused
        if now_paused and any(resource not in old for resource in new):
            paused.add(integration)
        was_paused = (entry := before.get(integration)) is not None and entry.paused
        if any(resource in old for resource in new) and now_paused != was_paused:
            (pause_ if now_paused else resume_).append(integration)
    return PairsPlan(tuple(own), tuple(disown), frozenset(paused), tuple(pause_), tuple(resume_))


def _polled(entry: RegistryEntry | None, defaults: DefaultResources) -> tuple[str, ...]:
    """The resources polled for ``entry``'s integration: none when it is not in the registry or removed."""
    return () if entry is None or entry.removed else defaults.resources_of(entry)

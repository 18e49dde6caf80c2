"""The simulator's in-memory world: integrations, their records, every mutation, in plain Python (no I/O).

``Simulator`` is the Python API. Tests of the relay drive it directly (``sim.update(...)``) and read
``sim.mutations`` to derive exactly which events a correct relay must publish; the HTTP server and the ``/_sim/``
control API are thin layers over it.

Around it: ``store.py`` keeps the records of each (integration, resource); ``mutations.py`` says what each mutation
does to a record and keeps the log; ``errors.py`` has the exceptions. This module keeps the integrations, seeds
their records, and answers the queries.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from relay.simulator.churn import Churn
from relay.simulator.clock import Clock, to_ms, wall_clock
from relay.simulator.errors import InvalidMutation, NotFound, SimulatorError
from relay.simulator.faults import FaultInjector
from relay.simulator.mutations import CHURN_WEIGHTS, Mutation, MutationKind, MutationLog
from relay.simulator.ratelimit import RateLimiter
from relay.simulator.records import RESOURCES, Record, RecordSeed, record_id
from relay.simulator.store import PEEK_LIMIT, Collection, Entry, KeyIndex

# What this module defined before store.py, mutations.py and errors.py were split out of it, still importable here.
__all__ = [
    "CHURN_WEIGHTS",
    "DEFAULT_API_KEY",
    "DEFAULT_HISTORY_DAYS",
    "PEEK_LIMIT",
    "Collection",
    "Entry",
    "IntegrationState",
    "InvalidMutation",
    "KeyIndex",
    "Mutation",
    "MutationKind",
    "NotFound",
    "Record",
    "Simulator",
    "SimulatorError",
]

DEFAULT_API_KEY = "sim-api-key"
DEFAULT_HISTORY_DAYS = 30.0


class IntegrationState(StrEnum):
    ACTIVE = "active"
    SETUP_PENDING = "setup_pending"  # 409 INTEGRATION.SETUP_SYNC_PENDING
    INACTIVE = "inactive"  # 403 INTEGRATION.INACTIVE


def _copy(record: Record) -> Record:
    """A deep copy for callers, who may modify what they are given (orjson: faster than copy.deepcopy)."""
    copied: Record = orjson.loads(orjson.dumps(record))
    return copied


class Simulator:
    """A Kombo-style API's data, with every mutation logged.

    ``users`` records of ``ats/users`` (and ``sizes[resource]`` of each other resource, 0 by default) are seeded for
    each integration, with modification times spread over the ``history_days`` before now, deterministically from
    ``seed``. Seeded records are the initial state and are not in the mutation log; everything after is.

    ``rate_limit`` requests per ``rate_window`` seconds per API key (see ``ratelimit.py``); ``retry_after`` decides
    whether a 429 carries ``Retry-After``. ``clock`` returns the current aware UTC datetime (default: the wall clock).
    """

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        integrations: Iterable[str] = ("personio:acme",),
        users: int = 100,
        seed: int = 1,
        clock: Clock | None = None,
        *,
        sizes: Mapping[str, int] | None = None,
        rate_limit: int = 10_000,
        rate_window: float = 60.0,
        retry_after: bool = True,
        history_days: float = DEFAULT_HISTORY_DAYS,
    ) -> None:
        self.api_key = api_key
        self.seed_value = seed
        self.clock: Clock = clock or wall_clock
        self.history_days = history_days
        self.faults = FaultInjector(seed)
        self.rate_limiter = RateLimiter(rate_limit, rate_window, self.now_ms, retry_after=retry_after)
        self.churn: Churn | None = None
        self._log = MutationLog(self.now_ms, seed)
        self._states: dict[str, IntegrationState] = {}
        self._collections: dict[tuple[str, str], Collection] = {}
        default_sizes = {**{name: 0 for name in RESOURCES}, **dict(sizes or {}), "ats/users": users}
        self._seed_integrations(list(dict.fromkeys(integrations)), default_sizes)

    # -- time and the log ------------------------------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock()

    def now_ms(self) -> int:
        return to_ms(self.clock())

    @property
    def mutations(self) -> list[Mutation]:
        """The mutation log, oldest first: ``mutations[i].seq == i + 1`` (shared: read it, never modify it)."""
        return self._log.mutations

    # -- integrations ----------------------------------------------------------------------------------------------

    @property
    def integrations(self) -> list[str]:
        return list(self._states)

    def integration_state(self, integration: str) -> IntegrationState | None:
        """The state of ``integration``, or None if there is no such integration (the API answers 404)."""
        return self._states.get(integration)

    def set_integration_state(self, integration: str, state: IntegrationState | str) -> None:
        """``active``; ``setup_pending`` (409 ``INTEGRATION.SETUP_SYNC_PENDING``); ``inactive`` (403
        ``INTEGRATION.INACTIVE``). The data stays and can still be mutated."""
        self._require_integration(integration)
        try:
            self._states[integration] = IntegrationState(state)
        except ValueError:
            raise SimulatorError(f"unknown integration state {state!r}") from None

    def add_integration(
        self,
        integration: str,
        *,
        users: int | None = None,
        sizes: Mapping[str, int] | None = None,
        state: IntegrationState | str = IntegrationState.ACTIVE,
    ) -> None:
        """Connect a new integration with seeded records (its initial state, not logged): ``users`` users (or
        ``sizes["ats/users"]``, else none) and ``sizes[resource]`` of each other resource."""
        if integration in self._states:
            raise InvalidMutation(f"integration {integration} exists")
        try:
            initial = IntegrationState(state)
        except ValueError:
            raise SimulatorError(f"unknown integration state {state!r}") from None
        counts = {**{name: 0 for name in RESOURCES}, **dict(sizes or {})}
        if users is not None:
            counts["ats/users"] = users
        self._seed_integrations([integration], counts)
        self._states[integration] = initial

    def remove_integration(self, integration: str) -> None:
        """Disconnect an integration: its data is gone, and the API answers 404 ``PLATFORM.INTEGRATION_NOT_FOUND``."""
        self._require_integration(integration)
        del self._states[integration]
        for key in [k for k in self._collections if k[0] == integration]:
            del self._collections[key]

    def _require_integration(self, integration: str) -> None:
        if integration not in self._states:
            raise NotFound(f"no integration {integration}")

    def collection(self, integration: str, resource: str) -> Collection:
        self._require_integration(integration)
        if resource not in RESOURCES:
            raise NotFound(f"no resource {resource}; the simulator serves {', '.join(RESOURCES)}")
        return self._collections[(integration, resource)]

    def _seed_integrations(self, integrations: list[str], counts: Mapping[str, int]) -> None:
        for name, count in counts.items():
            if name not in RESOURCES:
                raise NotFound(f"no resource {name}; the simulator serves {', '.join(RESOURCES)}")
            if count < 0:
                raise SimulatorError(f"{name}: cannot seed {count} records")
        now = self.now_ms()
        total = sum(counts.values()) * len(integrations)
        history_ms = int(self.history_days * 86_400_000)
        # Seeded modification times are spread evenly over the history, strictly increasing, all before now.
        spacing = max(1, history_ms // max(total, 1))
        # A collection's own order is all that must increase, so an integration added later is seeded in the
        # past too (older than other integrations' recent changes), like a newly connected system with history.
        ms = now - total * spacing
        for integration in integrations:
            self._states[integration] = IntegrationState.ACTIVE
            population = dict(counts)
            for spec in RESOURCES.values():
                collection = Collection(spec, integration, self.seed_value, population)
                self._collections[(integration, spec.name)] = collection
                ms = self._seed_collection(collection, counts[spec.name], ms, spacing)

    def _seed_collection(self, collection: Collection, count: int, ms: int, spacing: int) -> int:
        """Add ``count`` seeded records, stored as entries only, modified at ``ms``, ``ms + spacing``, ...

        The hot loop of start-up (1M records): method calls are hoisted or inlined on purpose.
        """
        spec, integration, salt, population = (
            collection.spec,
            collection.integration,
            self.seed_value,
            collection.population,
        )
        index_keys, add = spec.seed_index_keys, collection.add_seeded
        seq = self._log.reserve(count, ms + (count - 1) * spacing)
        for number in range(count):
            seq += 1
            entry = Entry(record_id(salt, integration, spec.name, number), number, seq, ms)
            add(entry, index_keys(RecordSeed(salt, integration, spec.name, number, ms, population)))
            ms += spacing
        collection.next_number = count
        return ms

    # -- mutations (see ``mutations.py``) ------------------------------------------------------------------------------

    def create(self, integration: str, resource: str, fields: Mapping[str, Any] | None = None) -> Record:
        """A new record (generated, then ``fields`` applied); logged as ``created``. Returns a copy of it."""
        return _copy(self._log.create(self.collection(integration, resource), fields).record or {})

    def seed(self, integration: str, resource: str, count: int) -> list[str]:
        """Create ``count`` records now (each logged as ``created``); returns their ids."""
        collection = self.collection(integration, resource)
        return [self._log.create(collection, None).id for _ in range(count)]

    def update(self, integration: str, resource: str, ident: str, fields: Mapping[str, Any] | None = None) -> Record:
        """Change own fields (random ones when ``fields`` is None): ``changed_at`` moves; logged as ``updated``.

        Setting fields to the values they have is no change: nothing moves and nothing is logged.
        """
        collection = self.collection(integration, resource)
        mutation = self._log.update(collection, collection.get(ident), fields)
        return _copy(mutation.record if mutation and mutation.record else collection.record(collection.get(ident)))

    def change_nested(self, integration: str, resource: str, ident: str, value: list[Any] | None = None) -> Record:
        """Change only the record's nested list (``system_roles`` for users; a random change when ``value`` is None):
        ``changed_at`` stays, but the record now matches ``updated_after``; logged as ``nested_updated``."""
        collection = self.collection(integration, resource)
        mutation = self._log.change_nested(collection, collection.get(ident), value)
        return _copy(mutation.record or {})

    def delete(self, integration: str, resource: str, ident: str) -> Record:
        """Soft delete: ``remote_deleted_at`` and ``changed_at`` are set to now; the record is hidden unless
        ``include_deleted=true``. Logged as ``deleted``."""
        collection = self.collection(integration, resource)
        return _copy(self._log.delete(collection, collection.get(ident)).record or {})

    def restore(self, integration: str, resource: str, ident: str) -> Record:
        """Undo a soft delete: ``remote_deleted_at`` is cleared, ``changed_at`` moves. Logged as ``restored``."""
        collection = self.collection(integration, resource)
        return _copy(self._log.restore(collection, collection.get(ident)).record or {})

    def hard_delete(self, integration: str, resource: str, ident: str) -> None:
        """The record vanishes, even from ``include_deleted=true``. Logged as ``hard_deleted`` with no record."""
        collection = self.collection(integration, resource)
        self._log.hard_delete(collection, collection.get(ident))

    # -- reading ---------------------------------------------------------------------------------------------------

    def get(self, integration: str, resource: str, ident: str) -> Record | None:
        """A copy of the record as it is now (deleted or not), or None if it does not exist (any more)."""
        collection = self.collection(integration, resource)
        entry = collection.by_id.get(ident)
        return _copy(collection.record(entry)) if entry else None

    def records(self, integration: str, resource: str, *, include_deleted: bool = True) -> Iterator[Record]:
        """Every record as it is now, in modification order (shared: read them, never modify them)."""
        collection = self.collection(integration, resource)
        for entry in collection.entries():
            if include_deleted or not entry.deleted:
                yield collection.record(entry)

    def count(self, integration: str, resource: str, *, include_deleted: bool = False) -> int:
        """How many records exist (soft-deleted ones only with ``include_deleted``)."""
        collection = self.collection(integration, resource)
        return len(collection.by_id) - (0 if include_deleted else collection.deleted_count)

    def mutations_since(self, since: int, limit: int = 1000) -> list[Mutation]:
        """Log entries with ``seq > since``, oldest first, at most ``limit``."""
        since = max(since, 0)
        return self.mutations[since : since + limit]

    # -- churn -----------------------------------------------------------------------------------------------------

    def random_mutation(self, rng: random.Random | None = None) -> Mutation | None:
        """One random mutation of a random record of a random non-empty collection, of a kind drawn by
        ``CHURN_WEIGHTS``; None if there is nothing to change. This is what the churn does, one step at a time."""
        return self._log.random_mutation(self._collections.values(), rng)

    def start_churn(self, rate: float) -> Churn:
        """Start (or re-rate) a steady churn of ``rate`` random mutations per second, as a task of the running
        event loop (so call it from a coroutine, e.g. the test or the server's loop)."""
        if self.churn is not None and self.churn.running:
            self.churn.rate = rate
            return self.churn
        self.churn = Churn(self, rate)
        self.churn.start()
        return self.churn

    async def stop_churn(self) -> None:
        if self.churn is not None:
            await self.churn.stop()

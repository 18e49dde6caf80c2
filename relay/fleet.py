"""The replicas of one relay as a fleet: who owns which state partition, and the handover of one.

Rule: ownership lives here and moves only through Kafka's consumer-group protocol. Replicas join one group
(``RELAY_GROUP_ID``) over the state topic; the group assigns its partitions; a replica polls exactly the integrations
placed in the partitions it owns (``murmur2(integration) % RELAY_STATE_TOPIC_PARTITIONS``). Nothing else coordinates:
no leader of our own, no database.

* Claiming a partition opens its producer (``{RELAY_TRANSACTIONAL_ID}-{partition}``), which fences the previous
  owner's for that partition; then reads the partition's state to its end, and the last window of its control
  partition; then polls its pairs, the operators' commands no owner acknowledged first, and acknowledges the changes of
  the registry it applied that no owner acknowledged (made while the partition changed owner). The claim runs beside the
  group's protocol, not in its assignment callback, so the member heartbeats however long the state takes to read
  (aiokafka heartbeats only between callbacks); the group's next decision cancels a claim still reading.
* Handing one over stops taking pages for its pairs, lets pages in flight commit within
  ``RELAY_SHUTDOWN_GRACE_SECONDS`` (else aborts them), waits for the acks of the commands that ran, closes the
  producer and forgets the state.
* aiokafka speaks the group protocol's eager form only (every member gives up all its partitions at each rebalance;
  cooperative rebalancing is not implemented there), so the sticky assignor keeps partitions where they were and a
  partition that comes back to the replica that held it is claimed again: its state is read anew, since another
  replica may have owned it in between.
* The owner of a partition also tombstones the state of its integrations removed from the registry longer than
  ``RELAY_REMOVED_STATE_RETENTION`` ago (:mod:`relay.retention`), under the same lock as claims and handovers: at each
  claim, at each registry change, and on a timer; after a failed write, the next of these reads the partition's state
  again first when none of its pairs is polled (its producer commits nothing until then).
* A partition whose producer was fenced (a replica that was paused past its session timeout and woke up: a zombie)
  is lost at once: its pairs stop, nothing of theirs is committed, and the group's next assignment says what to own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from relay.commands import CommandApplier
from relay.config import Config, relay_identity
from relay.control import ControlAction, ControlChannel
from relay.errors import (
    Fenced,
    KafkaAuthenticationFailed,
    KafkaAuthorizationFailed,
    KafkaUnavailable,
    SinkError,
    StateError,
)
from relay.metrics import Metrics
from relay.partition_sinks import PartitionSinks
from relay.pipeline import Pipeline
from relay.registry import (
    EMPTY,
    DefaultResources,
    EntryState,
    PairsPlan,
    Registry,
    RegistryChange,
    RegistryEntry,
    plan_change,
)
from relay.retention import due_for_tombstones
from relay.scheduler import BY_REGISTRY, Scheduler
from relay.sink import authorization_failed
from relay.state import StateStore

log = logging.getLogger(__name__)

ReadState = Callable[[set[int]], Awaitable[None]]


class StateReading(Protocol):
    """How a claim reads its partitions' state, given the relay's own reading of them (``read``). The relay reads
    directly; a test's fake takes its time, as the restore of a large state does."""

    async def __call__(self, partitions: set[int], read: ReadState) -> None: ...


class Ownership:
    """The partitions this replica owns, and what claiming and handing over one does to the rest of the relay."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        sinks: PartitionSinks,
        pipeline: Pipeline,
        scheduler: Scheduler,
        metrics: Metrics,
        read_state: ReadState,
    ) -> None:
        self._config = config
        self._store = store
        self._sinks = sinks
        self._pipeline = pipeline
        self._scheduler = scheduler
        self._metrics = metrics
        self._read_state = read_state
        self.owned: frozenset[int] = frozenset()
        self.control: ControlChannel | None = None  # in a fleet: the webhook triggers of the owned partitions
        self.commands: CommandApplier | None = None  # in a fleet: runs the operators' commands of the owned ones
        # The registry of integrations as this replica last applied it: what its partitions' pairs are. Changed only
        # under the lock, by apply_registry (the registry read at start, then each change the relay follows).
        self.registry: Registry = EMPTY
        self._defaults = DefaultResources.from_config(config)
        self.settled = False  # the group assigned this replica its partitions (maybe none) and they are restored
        self._changing = asyncio.Lock()  # one change of ownership at a time: a claim, a handover, a loss
        # A claim is under way and owns nothing of its partitions yet: cancelling it leaves them as if it had failed.
        self.restoring = False
        self._losing: set[asyncio.Task[None]] = set()
        # Owned partitions where writing tombstones failed: their producers commit nothing until their state was read
        # again (relay.sink), which _forget_removed does itself when none of their pairs is polled.
        self._unread: set[int] = set()

    def pairs_of(self, partitions: Iterable[int]) -> list[tuple[str, str]]:
        """The pairs of the integrations of the registry placed in ``partitions`` (removed ones have none; paused ones
        do: they are owned, paused)."""
        wanted = set(partitions)
        return [
            (entry.integration, resource)
            for entry in self.registry.active()
            if self._store.partition_of(entry.integration) in wanted
            for resource in self._defaults.resources_of(entry)
        ]

    def resources_of(self, integration: str) -> tuple[str, ...]:
        """The resources the registry says ``integration`` is polled for, wherever it is placed; empty when the
        registry does not hold it or holds it as removed."""
        entry = self.registry.get(integration)
        return () if entry is None or entry.removed else self._defaults.resources_of(entry)

    def is_paused(self, integration: str) -> bool:
        """Whether the registry holds ``integration`` paused."""
        entry = self.registry.get(integration)
        return entry is not None and entry.paused

    def _entries_in(self, partitions: set[int]) -> list[RegistryEntry]:
        """The registry's entries (removed ones included) of the integrations placed in ``partitions``."""
        return [entry for entry in self.registry.values() if self._store.partition_of(entry.integration) in partitions]

    def owned_states(self) -> dict[str, EntryState]:
        """The integrations of the owned partitions the registry holds (removed ones left out), and their state."""
        return {
            entry.integration: entry.state
            for entry in self.registry.active()
            if self._store.partition_of(entry.integration) in self.owned
        }

    def _paused(self) -> frozenset[str]:
        return frozenset(entry.integration for entry in self.registry.active() if entry.paused)

    async def apply_registry(self, registry: Registry, changes: Iterable[RegistryChange] | None = None) -> PairsPlan:
        """Make the registry ``registry``: for the integrations of the owned partitions, poll the pairs added, stop
        those removed (as a handover of just those pairs does), pause and resume; for the others, only remember it,
        so that a later claim polls what it says. ``changes``: the integrations that changed, if known (by default
        every one is compared). Returns what it did."""
        async with self._changing:
            plan = plan_change(
                self.registry,
                registry,
                self._defaults,
                owned=lambda integration: self._store.partition_of(integration) in self.owned,
                integrations=None if changes is None else (change.integration for change in changes),
            )
            self.registry = registry
            if plan.disown:
                integrations = {integration for integration, _ in plan.disown}
                self._pipeline.halt(integrations)
                try:
                    await self._scheduler.disown(plan.disown, self._config.shutdown_grace_seconds, handing_over=False)
                finally:
                    self._pipeline.unhalt(integrations)
            if plan.own:
                self._pipeline.unhalt(integration for integration, _ in plan.own)
                self._scheduler.own(plan.own, paused=plan.paused)
            for integration in plan.pause:
                self._scheduler.pause(integration, by=BY_REGISTRY)
            for integration in plan.resume:
                self._scheduler.resume(integration, by=BY_REGISTRY)
            if plan:
                log.info(
                    "registry applied",
                    extra={
                        "polled": sorted({i for i, _ in plan.own}),
                        "stopped": sorted({i for i, _ in plan.disown}),
                        "paused": list(plan.pause),
                        "resumed": list(plan.resume),
                        "pairs_added": len(plan.own),
                        "pairs_removed": len(plan.disown),
                    },
                )
            await self._forget_removed()
            return plan

    async def claim(self, partitions: Iterable[int]) -> None:
        """Own ``partitions``: fence their previous owners, read their state, poll their pairs.

        While :attr:`restoring`, it may be cancelled: it then owns nothing of them, as after a failure. Past that (the
        partitions owned, their pairs polled), let it finish."""
        self.restoring = True
        try:
            await self._claim(partitions)
        finally:
            self.restoring = False

    async def _claim(self, partitions: Iterable[int]) -> None:
        async with self._changing:
            fresh = set(partitions) - self.owned
            if not fresh:
                self.settled = True
                return
            started = time.monotonic()
            unanswered: list[ControlAction] = []
            try:
                await self._sinks.open(fresh)
                await self._read_state(fresh)
                if self.control is not None:  # the commands no owner acknowledged: run before anything newer
                    unanswered = await self.control.own(fresh)
            except BaseException:
                # Half a claim owns nothing: close what was opened, forget what was read, so a retry starts clean.
                await self._sinks.close(fresh)
                self._store.drop(fresh)
                raise
            self._sinks.state_read(fresh)
            self._unread -= fresh
            pairs = self.pairs_of(fresh)
            self._pipeline.unhalt(integration for integration, _ in pairs)
            self.owned = self.owned | fresh
            self.restoring = False  # owned: no await since the state was read, none until the pairs are polled
            self._scheduler.own(pairs, paused=self._paused())
            # Queued before the pairs' first polls start (no await since they were owned): a resnapshot the former
            # owner left in progress is resumed by the command, not done once by a scheduled poll and then again.
            if self.commands is not None:
                for action in unanswered:
                    self.commands.apply(action)
                if self.control is not None:  # for `relay integrations`, waiting for an ack the former owner never sent
                    applied = self._entries_in(fresh)
                    self.commands.registry_claimed(self.control.registry_unacknowledged(applied))
            self.settled = True
            self._metrics.owned_partitions.set(len(self.owned))
            self._metrics.partition_handover.observe(time.monotonic() - started)
            log.info("state partitions claimed", extra={"partitions": sorted(fresh), "pairs": len(pairs)})
            await self._forget_removed()

    async def forget_removed(self) -> None:
        """Tombstone the state of the integrations of the owned partitions removed from the registry longer than
        RELAY_REMOVED_STATE_RETENTION ago (a timer calls this; claims and registry changes do it too)."""
        async with self._changing:
            await self._forget_removed()

    async def _forget_removed(self) -> None:
        """:meth:`forget_removed`, under the lock: no claim, handover or registry change (a removed integration added
        again) runs meanwhile, and a removed integration's pairs are not polled. A failure is logged: the next claim,
        registry change or timer tries again. After a failed commit the partition's new producer commits nothing
        until its state was read again: a poll of one of its pairs does that (the relay's reload), and for a
        partition none of whose pairs is polled (its integrations all removed) the next try does it first, as a
        claim does."""
        retention = self._config.removed_state_retention
        if retention is None:  # kept for ever: not even a look at what is remembered
            return
        self._unread &= self.owned
        for partition in sorted(self._unread):
            if not self._polls_in(partition) and await self._read_state_again(partition):
                self._unread.discard(partition)
        due = due_for_tombstones(
            self.registry, self._store.held(self.owned), now_ms=round(time.time() * 1000), retention_seconds=retention
        )
        for removed in due:
            try:
                entities = [await self._pipeline.forget(removed.integration, r) for r in removed.resources]
            except (SinkError, KafkaError, OSError) as error:
                self._unread.add(self._store.partition_of(removed.integration))
                log.warning(
                    "cannot tombstone the state of a removed integration yet; trying again later",
                    extra={"integration": removed.integration, "error": f"{type(error).__name__}: {error}"},
                )
                continue
            self._metrics.removed_state_tombstoned.inc()
            log.info(
                "state of a removed integration tombstoned",
                extra={
                    "integration": removed.integration,
                    "removed_at": removed.removed_at,
                    "retention_seconds": retention,
                    "resources": list(removed.resources),
                    "entities": sum(entities),
                },
            )

    def _polls_in(self, partition: int) -> bool:
        """Whether the scheduler holds a pair of ``partition`` (polled or paused: a resume may start a poll)."""
        return any(self._store.partition_of(integration) == partition for integration, _ in self._scheduler.status)

    async def _read_state_again(self, partition: int) -> bool:
        """Read the state of ``partition`` again, as a claim does, after a failed commit of tombstones: its producer
        started anew first (which completes or aborts the transaction in doubt), then its state read, so that it
        commits again. Only for a partition none of whose pairs the scheduler holds: a poll would diff against the
        memory replaced. False (logged) when Kafka is not reachable: the next try reads it."""
        self._store.drop({partition})
        try:
            await self._sinks.start([partition])
            await self._read_state({partition})
        except Fenced:  # another replica claimed it meanwhile: ours no more
            self.lost(partition)
            return False
        except (SinkError, KafkaError, OSError) as error:
            log.warning(
                "cannot read a state partition again before tombstoning its removed integrations; trying again later",
                extra={"partition": partition, "error": f"{type(error).__name__}: {error}"},
            )
            return False
        self._sinks.state_read([partition])
        log.info("state partition read again after a failed write of tombstones", extra={"partition": partition})
        return True

    async def hand_over(self, partitions: Iterable[int], grace_seconds: float | None = None) -> None:
        """Give ``partitions`` up: stop their polls (pages in flight get the grace to commit), close their producers,
        forget their state."""
        async with self._changing:
            gone = set(partitions) & self.owned
            if not gone:
                return
            grace = self._config.shutdown_grace_seconds if grace_seconds is None else grace_seconds
            # What the scheduler polls of them: the registry's pairs of these partitions, as applied.
            pairs = [pair for pair in self._scheduler.status if self._store.partition_of(pair[0]) in gone]
            if self.control is not None:
                await self.control.disown(gone)
            self._pipeline.halt(integration for integration, _ in pairs)
            await self._scheduler.disown(pairs, grace)
            if self.commands is not None:  # the acks of what ran here, on the topic before the next owner reads it
                await self.commands.flush()
            await self._sinks.close(gone)
            self._store.drop(gone)
            self.owned = self.owned - gone
            self._metrics.owned_partitions.set(len(self.owned))
            log.info("state partitions handed over", extra={"partitions": sorted(gone), "pairs": len(pairs)})

    def lost(self, partition: int) -> None:
        """A partition's producer was fenced: another replica owns it. Stop its pairs now, commit nothing more."""
        if partition in self.owned:
            losing = asyncio.get_running_loop().create_task(self.hand_over([partition], 0.0), name=f"lose {partition}")
            self._losing.add(losing)  # held until done: the event loop keeps only a weak reference to a task
            losing.add_done_callback(self._losing.discard)

    def unsettle(self) -> None:
        self.settled = False


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type hints
    """The group's decisions, handed to :class:`Ownership` in the order the protocol promises: every member gives up
    its partitions before any member is given new ones.

    A claim runs in a task of its own, not in the assignment's callback: aiokafka starts the member's heartbeats only
    once that callback returns, and a claim reads its partitions' state, which takes longer than a session timeout
    when the state is large (a million entities: 7 to 11 s). Heartbeatless for that long, the member was evicted, and
    lost the partitions it had just claimed at its next heartbeat, to claim them again, for ever. The callback only
    pauses the assignment (nothing is read through it) and starts the claim; nothing is polled or committed for those
    partitions until the claim has read their state and fenced their former owners' producers, as before. The next
    decision of the group (or a stop) cancels a claim still reading (it owns nothing then) or awaits one that already
    owns, before anything is handed over.

    A claim that fails is kept: as partitions still to claim (Kafka unavailable for a while: :class:`Membership`
    retries) or as the error the replica must stop for.
    """

    def __init__(self, ownership: Ownership, consumer: AIOKafkaConsumer, metrics: Metrics) -> None:
        self._ownership = ownership
        self._consumer = consumer
        self._metrics = metrics
        self.generation: int | None = None
        self.unclaimed: frozenset[int] = frozenset()  # assigned in this generation, their claim failed
        self.fatal: BaseException | None = None
        self._decisions = 0  # counts the group's decisions: a claim's failure is kept only if none came since
        self.attention = asyncio.Event()  # set when a claim failed (fatal or to retry): Membership acts on it
        self._claiming: asyncio.Task[None] | None = None  # the claim of this generation's partitions, under way

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._decisions += 1
        self._ownership.unsettle()
        self._metrics.rebalances.inc()
        self.unclaimed = frozenset()
        await self.stop_claiming()
        await self._ownership.hand_over(tp.partition for tp in revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # The state topic is this group's subscription only to be assigned: nothing is read through it.
        self._consumer.pause(*assigned)
        self.generation = getattr(getattr(self._consumer, "_coordinator", None), "generation", None)
        self._decisions += 1
        await self.stop_claiming()  # none: the revocation before this assignment stopped it
        self.start_claim(frozenset(tp.partition for tp in assigned))

    def start_claim(self, partitions: frozenset[int]) -> asyncio.Task[None]:
        """Claim ``partitions`` in the background, for the group's latest decision."""
        claiming = asyncio.get_running_loop().create_task(
            self.claim(partitions, self._decisions), name=f"claim {sorted(partitions)}"
        )
        self._claiming = claiming
        return claiming

    async def retry(self) -> None:
        """Claim again the partitions whose claim failed (unless one is under way), and wait for it to end."""
        if self._claiming is None or self._claiming.done():
            await asyncio.wait([self.start_claim(self.unclaimed)])

    async def stop_claiming(self) -> None:
        """End the claim under way: cancelled while it reads the state (it owns nothing of its partitions then),
        awaited once it owns them (their handover comes next)."""
        claiming, self._claiming = self._claiming, None
        if claiming is None:
            return
        if not claiming.done() and self._ownership.restoring:
            claiming.cancel()
        await asyncio.wait([claiming])

    async def claim(self, partitions: frozenset[int], decision: int | None = None) -> None:
        """Claim ``partitions`` for the group's decision ``decision`` (by default the latest); keep its failure."""
        decision = self._decisions if decision is None else decision
        if decision != self._decisions:
            return  # the group moved these partitions before the claim started
        try:
            await self._ownership.claim(partitions)
        except FATAL_CLAIM_ERRORS as error:
            self.fatal = error
            self.attention.set()
        except (KafkaUnavailable, KafkaError, OSError) as error:
            if decision != self._decisions:
                return  # the group moved these partitions meanwhile: retrying could fence their new owner
            self.unclaimed = partitions
            self.attention.set()
            log.warning(
                "cannot claim the state partitions assigned; retrying",
                extra={"partitions": sorted(partitions), "error": str(error)},
            )
        except Exception:  # what aiokafka did with what a callback raised (the claim ran in one): log, go on
            log.exception("claiming the state partitions assigned failed", extra={"partitions": sorted(partitions)})
        else:
            if decision == self._decisions:
                self.unclaimed = frozenset()


# What no retry mends: the state cannot be read by this version, or Kafka refuses this relay. The replica stops (its
# exit code says which) rather than hold partitions it cannot poll.
FATAL_CLAIM_ERRORS = (StateError, KafkaAuthorizationFailed, KafkaAuthenticationFailed)
# How often an idle member looks at its consumer: what the group's protocol needs (heartbeats, rebalances and their
# callbacks) runs in aiokafka's background tasks, so this only surfaces the consumer's errors, and marks the member
# active well within max_poll_interval_ms. A failed claim or a stop does not wait for it.
CHECK_SECONDS = 5.0


class Membership:
    """This replica's seat in the group: joins it, keeps it alive, and leaves it cleanly at a stop."""

    def __init__(self, config: Config, ownership: Ownership, metrics: Metrics) -> None:
        self._config = config
        self._ownership = ownership
        session_ms = int(config.group_session_timeout_seconds * 1000)
        self._consumer = AIOKafkaConsumer(
            **config.kafka_client_kwargs(),
            group_id=config.group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 3),
            # Every partition is paused: its fetcher has nothing to fetch, and what it waits for (a resume, a new
            # assignment) wakes it anyway. aiokafka's default (200 ms) woke every idle replica 5 times a second.
            consumer_timeout_ms=int(CHECK_SECONDS * 1000),
            # A retry of a failed claim (in run()) reads its partitions' state between two looks at the consumer:
            # give it the time a large restore takes. (A claim no longer runs in the group's callback.)
            max_poll_interval_ms=30 * 60 * 1000,
            rebalance_timeout_ms=int((config.shutdown_grace_seconds + 60) * 1000),
            partition_assignment_strategy=(StickyPartitionAssignor,),
        )
        self._listener = RebalanceListener(ownership, self._consumer, metrics)
        self._stopping = asyncio.Event()

    @property
    def member_id(self) -> str | None:
        return getattr(getattr(self._consumer, "_coordinator", None), "member_id", None)

    @property
    def generation(self) -> int | None:
        return self._listener.generation

    async def run(self) -> None:
        """Join the group and keep the seat until :meth:`stop`; raise what a claim met that no retry mends."""
        self._consumer.subscribe(topics=[self._config.state_topic], listener=self._listener)
        await self._consumer.start()
        retry = Backoff(first=1.0, most=30.0)
        try:
            while not self._stopping.is_set():
                self._listener.attention.clear()
                # Every partition is paused: this returns nothing at once, raises the consumer's errors, and tells
                # the group this member is active.
                await self._consumer.getmany(timeout_ms=0)
                if self._listener.fatal is not None:
                    raise self._listener.fatal
                if self._listener.unclaimed and retry.due():
                    await self._listener.retry()
                    if self._listener.unclaimed:
                        retry.failed()
                    else:
                        retry.reset()
                wait = CHECK_SECONDS
                if self._listener.unclaimed:
                    wait = min(wait, retry.remaining())
                await self._attention(wait)
        finally:
            await self._leave()

    def stop(self) -> None:
        self._stopping.set()
        self._listener.attention.set()

    async def _attention(self, seconds: float) -> None:
        """Wait ``seconds``, or less if a claim failed or a stop came meanwhile."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listener.attention.wait(), seconds)

    async def _leave(self) -> None:
        # aiokafka does not call on_partitions_revoked when it stops: end the claim under way and hand over first,
        # then leave the group, so that the next owner's producer finds nothing of ours in flight.
        try:
            await self._listener.stop_claiming()
            await self._ownership.hand_over(self._ownership.owned)
        finally:
            await self._consumer.stop()


class Backoff:
    """When to try again after a failure: at once the first time, then after ``first`` seconds, doubling to
    ``most``."""

    def __init__(self, first: float, most: float) -> None:
        self._first = first
        self._most = most
        self.delay = 0.0
        self._next = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def remaining(self) -> float:
        """Seconds until :meth:`due` (0 if it is already)."""
        return max(0.0, self._next - time.monotonic())

    def failed(self) -> None:
        self.delay = min(self._most, max(self._first, self.delay * 2))
        self._next = time.monotonic() + self.delay

    def reset(self) -> None:
        self.delay = 0.0
        self._next = 0.0


async def fence_single_instance_writer(config: Config, legacy_transactional_id: str) -> None:
    """Fence the one producer a relay of the releases before the fleet wrote with, so that it cannot commit while
    this fleet's producers (``{id}-{partition}``, other ids) do: during a rolling upgrade both run for a while."""
    producer = AIOKafkaProducer(
        **config.kafka_client_kwargs(), transactional_id=legacy_transactional_id, enable_idempotence=True
    )
    try:
        await producer.start()  # InitProducerId: bumps the epoch, aborts what the old instance left open
    except KafkaError as error:
        if refused := authorization_failed(error, config, doing="write", transactional_id=legacy_transactional_id):
            raise refused from error
        raise KafkaUnavailable(
            f"cannot fence the single-instance writer {legacy_transactional_id!r}: {error}"
        ) from error
    finally:
        await producer.stop()


def legacy_transactional_id(config: Config) -> str:
    """The transactional id the single instance of the releases before the fleet used: the one set by hand, or the
    default derived then (it hashed the integrations and resources too).

    The integrations hashed are RELAY_INTEGRATIONS as set now: those releases required it, so a deployment upgrading
    from one still sets it (and its first start seeds the registry from it). Unset, there is no such instance to
    fence: the id hashes an empty list, which no relay of those releases used. So keep RELAY_INTEGRATIONS as it was
    until the old instance is gone; dropping it afterwards changes nothing but this id, fencing nobody."""
    if config.transactional_id != relay_identity(config.source_url, config.topic_prefix, config.state_topic):
        return config.transactional_id  # set by hand: the fleet's producers are named after it
    identity: list[Any] = [
        config.source_url,
        config.topic_prefix,
        config.state_topic,
        sorted(config.integrations),
        sorted(config.resources),
    ]
    return "change-relay-" + hashlib.sha256(orjson.dumps(identity)).hexdigest()[:16]

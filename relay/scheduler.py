"""When each (integration, resource) pair is polled, and what a failed poll means for it.

Rule: this module decides *when* and *whether*: the pair loops, their wake-ups (timer, webhook trigger, stop), pauses,
the global limit on polls at once, backoff after a failure, and each pair's health. *How* a pair is polled is an
operation it is given (:class:`relay.pipeline.Pipeline` behind :class:`relay.reload_gate.ReloadGate` in the service,
a script in tests): it never sees a page, a record or a Kafka transaction. What an error means is
:data:`relay.verdicts.VERDICTS`'s to say; every error gets a verdict, so only a shutdown ends a pair's loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from relay.config import Config
from relay.logs import redact
from relay.metrics import Metrics
from relay.slots import Slot, current_slot
from relay.verdicts import INTERNAL_ERROR, Verdict, as_relay_error, verdict_on

log = logging.getLogger(__name__)

# Scheduled polls start on a grid of this many seconds (or of WAKE_GRID_FRACTION of the poll interval, if that is
# finer), so that the pairs due within one step are polled together, in one burst: waking an idle process is most of
# what an idle poll costs (bare aiohttp making an idle fleet's requests, 1,000 pairs every 10 s: 1.89% of a core on a
# 0.1 s grid, 1.34% on 0.5 s, 1.35% on 1 s). A poll moves to the nearest step, so the grid spreads each interval by
# at most half a step (2.5% of it, within RELAY_POLL_JITTER_FRACTION's default 10%) and leaves its mean as it is.
# RELAY_MAX_CONCURRENT_POLLS still bounds the burst, and a webhook's poll does not wait for the grid.
WAKE_GRID_SECONDS = 0.5
WAKE_GRID_FRACTION = 0.05
# Who paused an integration: a pair polls only while nobody holds it paused. The registry of integrations (relay
# integrations pause, kept across restarts) and Kombo's integration-state webhooks (RELAY_FOLLOW_INTEGRATION_STATE,
# in memory) pause independently: a webhook's ACTIVE does not resume what an operator paused, nor the reverse.
BY_REGISTRY = "registry"
BY_WEBHOOK = "webhook"

Clock = Callable[[], float]


class PollPair(Protocol):
    """One whole poll of a pair; ``published(n)`` is told the events of each page as soon as they committed. Raises
    the error that ended the poll early, if any. Called with a fourth argument, the kind an operator's command asks
    for (``resnapshot``, ``reconcile``, or ``reset``: no poll, the pair is forgotten), only for such a command."""

    def __call__(
        self, integration: str, resource: str, published: Callable[[int], None], /, *kind: str
    ) -> Awaitable[object]: ...


# An operator's command is done for one pair: told the pair's resource, the error that ended it (None: it succeeded)
# and what the operation returned.
CommandDone = Callable[[str, BaseException | None, object], None]


@dataclass(slots=True)
class PairCommand:
    """An operator's command for one pair, run as the pair's next poll (``relay resnapshot``, ``relay reconcile``,
    ``relay state reset``)."""

    kind: str
    done: CommandDone


# ----------------------------------------------------------------------------------------------- waiting


class Wakeup:
    """A pair's trigger: a flag set by webhooks and cleared when a poll starts, and the one sleep it cuts short.

    Every pair of a fleet sleeps between its polls, so the sleep is the cheapest asyncio has: one future, resolved by
    a timer or by :meth:`set` / :meth:`wake` (:meth:`Scheduler.stop` wakes every pair). Only the pair's own task sleeps
    on it.
    """

    __slots__ = ("_flag", "_sleeper")

    def __init__(self) -> None:
        self._flag = False
        self._sleeper: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        self.wake()

    def clear(self) -> None:
        self._flag = False

    def wake(self) -> None:
        """End the sleep in progress, if any, leaving the flag as it is (a stop is not a trigger)."""
        if self._sleeper is not None:
            _resolve(self._sleeper)

    async def sleep_until(self, deadline: float, alarms: Alarms | None = None) -> None:
        """Sleep until ``deadline`` (the event loop's clock), or less if set or woken meanwhile; not at all if the flag
        is already set. With ``alarms``, the sleep shares the timer of every other one that ends at ``deadline``."""
        if self._flag:
            return
        assert self._sleeper is None, "one sleeper at a time: the pair's own task"
        loop = asyncio.get_running_loop()
        self._sleeper = sleeper = loop.create_future()
        timer = None
        if alarms is None:
            timer = loop.call_at(deadline, _resolve, sleeper)
        else:
            alarms.at(deadline, sleeper)
        try:
            await sleeper
        finally:
            if timer is not None:
                timer.cancel()
            self._sleeper = None


class Alarms:
    """One event-loop timer per deadline, shared by every sleep that ends then. The pairs of a fleet sleep until
    deadlines on the wake grid, about fifty pairs to a deadline per 1,000 pairs at a 10 s interval: fifty times fewer
    timers to keep in the loop's heap, none to cancel (a sleep cut short leaves its resolved future to the timer)."""

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due: dict[float, list[asyncio.Future[None]]] = {}

    def at(self, deadline: float, future: asyncio.Future[None]) -> None:
        """Resolve ``future`` at ``deadline`` (the event loop's clock), unless it is done by then."""
        waiting = self._due.get(deadline)
        if waiting is None:
            waiting = self._due[deadline] = []
            asyncio.get_running_loop().call_at(deadline, self._ring, deadline)
        waiting.append(future)

    def _ring(self, deadline: float) -> None:
        for future in self._due.pop(deadline, ()):
            _resolve(future)


def nearest_on_grid(loop_time: float, step: float) -> float:
    """The multiple of ``step`` nearest to ``loop_time``. All the times within half a step of it give the very same
    float, so the timers set for them fire in the same turn of the event loop."""
    return round(loop_time / step) * step


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # already woken, or cancelled with its task
        future.set_result(None)


@dataclass(slots=True)
class PairStatus:
    """What ``/status`` reports for one pair; updated after every poll."""

    integration: str
    resource: str
    healthy: bool = True
    last_success_at: float | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    last_error_log_url: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    events_published: int = 0
    polls: int = 0
    next_poll_at: float | None = None
    polling: bool = False
    paused: bool = False  # paused_by is not empty
    paused_by: set[str] = field(default_factory=set)
    trigger: Wakeup = field(default_factory=Wakeup)
    # time.monotonic() of the first trigger (webhook) not yet served by a poll, for relay_webhook_to_event_seconds
    triggered_at: float | None = None
    retired: bool = False  # handed over to another replica: the pair's loop ends
    commands: deque[PairCommand] = field(default_factory=deque)  # operators' commands, run in order as its polls

    def published(self, events: int) -> None:
        self.events_published += events


class Commits(Protocol):
    """Which pairs have a page in flight to Kafka (:class:`relay.pipeline.CommitsInFlight`)."""

    def committing(self, integration: str, resource: str) -> bool: ...

    def next_end(self) -> asyncio.Future[None]: ...


PairTasks = dict[tuple[str, str], asyncio.Task[None]]


async def _end_within(tasks: PairTasks, grace_seconds: float, commits: Commits | None) -> None:
    """Let the pairs' ``tasks`` end within ``grace_seconds``, then cancel those still running, and wait for them all.

    The grace is for pages being committed. With ``commits`` to tell which pairs have one in flight, a task whose
    pair has none is cancelled at once, and one whose pair has as soon as its last page ends: it waits only on the
    source (or a slot), and waiting would gain nothing but a partition nobody polls and a slow SIGTERM. The pipeline,
    told to stop at its next page, ends on its own a poll whose page committed. Checked and cancelled in one turn of
    the event loop, a poll cannot begin a commit in between: one cancelled then never started its transaction."""
    if not tasks:
        return
    if commits is None:
        _, pending = await asyncio.wait(tasks.values(), timeout=grace_seconds)
    else:
        pending = await _those_still_committing_after(tasks, grace_seconds, commits)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


async def _those_still_committing_after(
    tasks: PairTasks, grace_seconds: float, commits: Commits
) -> set[asyncio.Task[None]]:
    """Cancel each of ``tasks`` once its pair has no page in flight, for ``grace_seconds``; return those left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_seconds
    running = dict(tasks)
    while True:
        for pair, task in list(running.items()):
            if task.done():
                del running[pair]
            elif not commits.committing(*pair):
                task.cancel()
                del running[pair]
        remaining = deadline - loop.time()
        if not running or remaining <= 0:
            return set(running.values())
        await asyncio.wait(
            [*running.values(), commits.next_end()], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )


# ----------------------------------------------------------------------------------------------- the scheduler


class Scheduler:
    """Polls every configured pair on its own schedule, under a global concurrency limit."""

    def __init__(
        self,
        config: Config,
        poll: PollPair,
        metrics: Metrics,
        *,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        on_stop: Callable[[], None] | None = None,
        pairs: Iterable[tuple[str, str]] | None = None,
        commits: Commits | None = None,
    ) -> None:
        """``pairs`` are polled from the start: by default every configured one; in a fleet, none until owned.
        ``commits`` tells which pairs have a page in flight to Kafka: at a stop or a handover, the polls of the others
        are cancelled at once; without it (an operation whose commits it cannot see), every poll gets the grace."""
        self._config = config
        self._poll = poll
        self._commits = commits
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_stop = on_stop
        self._secrets = config.secret_values()  # masked in what /status shows of an error
        self._places = asyncio.Semaphore(config.max_concurrent_polls)
        self._stopping = asyncio.Event()
        self._wake_grid = min(WAKE_GRID_SECONDS, config.poll_interval_seconds * WAKE_GRID_FRACTION)
        self._alarms = Alarms()  # the pairs' sleeps, one timer per step of the wake grid
        self.fatal: BaseException | None = None
        if pairs is None:
            pairs = [(integration, resource) for integration in config.integrations for resource in config.resources]
        self.status: dict[tuple[str, str], PairStatus] = {}
        self._by_integration: dict[str, dict[str, PairStatus]] = {}  # the same statuses, by integration and resource
        for pair in pairs:
            self._add_status(PairStatus(*pair))
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._running = False

    async def run(self, grace_seconds: float | None = None) -> None:
        """Poll until :meth:`stop`; return early (with :attr:`fatal` set) when an operator must act.

        After a stop, a poll in progress gets ``grace_seconds`` to commit its page; then it is cancelled, which aborts
        its transaction. A poll with no page in flight to Kafka is cancelled at once (see :func:`_end_within`). Either
        way the committed checkpoint says where the next run resumes.
        """
        grace = self._config.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self._update_health_gauge()
        self._running = True
        for status in self.status.values():
            self._start_pair(status)
        try:
            await self._stopping.wait()
        finally:
            self.stop()
            await _end_within(dict(self._tasks), grace, self._commits)
            for status in self.status.values():
                _fail_commands(status, CommandHandedOver("the relay stopped before the command ran"))

    def own(self, pairs: Iterable[tuple[str, str]], *, paused: Container[str] = ()) -> None:
        """Poll ``pairs`` from now on (their partition is this replica's now, or the registry added them), each
        starting within its jitter; those of the integrations in ``paused`` are paused by the registry."""
        for pair in pairs:
            if pair not in self.status:
                status = PairStatus(*pair)
                if pair[0] in paused:
                    status.paused_by.add(BY_REGISTRY)
                    status.paused = True
                self._add_status(status)
                if self._running and not self._stopping.is_set():
                    self._start_pair(status)
        self._update_health_gauge()

    def _add_status(self, status: PairStatus) -> None:
        self.status[(status.integration, status.resource)] = status
        self._by_integration.setdefault(status.integration, {})[status.resource] = status

    def _drop_status(self, status: PairStatus) -> None:
        self.status.pop((status.integration, status.resource), None)
        resources = self._by_integration.get(status.integration)
        if resources is not None and resources.get(status.resource) is status:
            del resources[status.resource]
            if not resources:
                del self._by_integration[status.integration]

    async def disown(
        self, pairs: Iterable[tuple[str, str]], grace_seconds: float, *, handing_over: bool = True
    ) -> None:
        """Stop polling ``pairs``: no new poll starts, a poll in progress with a page in flight to Kafka gets
        ``grace_seconds`` to end (the pipeline was told to stop it at its next page), then it is cancelled, which
        aborts its transaction; one with none (waiting on the source) is cancelled at once. Their commands not
        run yet are told :class:`CommandHandedOver` when ``handing_over`` (the partition's next owner runs them),
        else (the registry removed the pairs) :class:`CommandNotRun`."""
        statuses = [status for pair in pairs if (status := self.status.get(pair)) is not None]
        for status in statuses:
            status.retired = True
            status.trigger.wake()
        tasks = {}
        for status in statuses:
            pair = (status.integration, status.resource)
            if (task := self._tasks.get(pair)) is not None:
                tasks[pair] = task
        await _end_within(tasks, grace_seconds, self._commits)
        for status in statuses:
            if handing_over:
                _fail_commands(status, CommandHandedOver("the partition was handed over before the command ran"))
            else:
                _fail_commands(status, CommandNotRun("the integration's pair was removed before the command ran"))
            self._drop_status(status)
            self._tasks.pop((status.integration, status.resource), None)
        self._update_health_gauge()

    def _start_pair(self, status: PairStatus) -> None:
        pair = (status.integration, status.resource)
        self._tasks[pair] = asyncio.create_task(self._run_pair(status), name=f"poll {pair}")

    def stop(self) -> None:
        self._stopping.set()
        if self._on_stop is not None:
            self._on_stop()
        for status in self.status.values():  # wake every sleeping pair now, not at the end of its interval
            status.trigger.wake()

    # ------------------------------------------------------------------------------------------- triggers, pauses

    def trigger(self, integration: str, resource: str, *, received_at: float | None = None) -> bool:
        """Ask for an immediate poll of a pair (webhooks use this); False when the pair is not configured.

        Triggers coalesce: any number of them before the pair's poll starts give that one poll, and any number while
        it runs give exactly one follow-up (the flag is cleared when a poll starts, not when the pair wakes).
        ``received_at`` (``time.monotonic()``) is when the webhook arrived, for the webhook-to-event latency.
        """
        status = self.status.get((integration, resource))
        if status is None:
            return False
        if status.triggered_at is None:
            status.triggered_at = time.monotonic() if received_at is None else received_at
        status.trigger.set()
        return True

    def command(self, integration: str, resource: str | None, kind: str, done: CommandDone) -> list[str]:
        """Queue an operator's command for the pairs of ``integration`` (those of ``resource`` only, when given):
        each runs as its pair's next poll, once the poll in progress ended, and ``done`` is told the outcome per
        pair. Returns the resources it was queued for; none when no such pair is polled here."""
        statuses = self._pairs_of(integration)
        if resource is not None:
            statuses = [status for status in statuses if status.resource == resource]
        for status in statuses:
            status.commands.append(PairCommand(kind, done))
            status.trigger.set()
        return [status.resource for status in statuses]

    def resources_of(self, integration: str) -> tuple[str, ...]:
        """The resources polled for ``integration`` (each integration has its own); empty when it is not polled
        here."""
        return tuple(self._by_integration.get(integration, ()))

    def is_paused(self, integration: str) -> bool:
        """Whether ``integration`` is paused (pauses apply to all its pairs), by anyone."""
        return any(status.paused for status in self._pairs_of(integration))

    def pause(self, integration: str, *, by: str = BY_WEBHOOK) -> bool:
        """Stop polling ``integration`` (a poll in progress finishes) until :meth:`resume` by the same ``by``
        (:data:`BY_WEBHOOK`, :data:`BY_REGISTRY`); False if it is not polled here."""
        pairs = self._pairs_of(integration)
        was_paused = any(s.paused for s in pairs)
        for status in pairs:
            status.paused_by.add(by)
            status.paused = True
        if pairs and not was_paused:
            log.info("integration paused", extra={"integration": integration, "by": by})
        return bool(pairs)

    def resume(self, integration: str, *, by: str = BY_WEBHOOK) -> bool:
        """Lift ``by``'s pause of ``integration``; once nobody holds it paused, poll it again at once (to catch up on
        what changed while paused). False if it is not polled here."""
        pairs = self._pairs_of(integration)
        was_paused = any(s.paused for s in pairs)
        for status in pairs:
            status.paused_by.discard(by)
            status.paused = bool(status.paused_by)
        resumed = was_paused and not any(s.paused for s in pairs)
        if resumed:
            for status in pairs:
                self.trigger(integration, status.resource)
            log.info("integration resumed", extra={"integration": integration, "by": by})
        elif was_paused:
            held = sorted({reason for s in pairs for reason in s.paused_by})
            log.info("integration still paused", extra={"integration": integration, "by": by, "paused_by": held})
        return bool(pairs)

    def _pairs_of(self, integration: str) -> list[PairStatus]:
        return list(self._by_integration.get(integration, {}).values())

    # ------------------------------------------------------------------------------------------- one pair's loop

    async def _run_pair(self, status: PairStatus) -> None:
        # Spread the first polls over the first interval's jitter so a fleet of integrations does not start in step.
        delay = self._rng.uniform(0, self._config.poll_interval_seconds * self._config.poll_jitter_fraction)
        while not self._stopping.is_set() and not status.retired:
            await self._sleep_or_trigger(status, delay)
            if self._stopping.is_set() or status.retired:
                return
            if status.paused:  # by a webhook; resume() triggers the pair
                _fail_commands(
                    status, CommandNotRun("the integration is paused: resume it, then send the command again")
                )
                status.trigger.clear()
                status.triggered_at = None
                delay = self._jittered_interval()
                continue
            slot = Slot(self._places)
            current_slot.set(slot)  # the pair's own task: the source lends it back while it waits
            async with slot.held():
                if self._stopping.is_set() or status.retired:
                    return
                delay = await self._poll_counted(status)

    async def _sleep_or_trigger(self, status: PairStatus, delay: float) -> None:
        """Wait ``delay`` seconds (to the nearest step of the wake grid), or less if the pair is triggered or the
        scheduler stops (:meth:`stop` wakes it)."""
        if delay <= 0:
            status.next_poll_at = self._clock()
            return
        now = asyncio.get_running_loop().time()
        deadline = nearest_on_grid(now + delay, self._wake_grid)
        status.next_poll_at = self._clock() + (deadline - now)
        if not self._stopping.is_set():
            await status.trigger.sleep_until(deadline, self._alarms)

    async def _poll_counted(self, status: PairStatus) -> float:
        """Poll once, counting what started the poll and, for a webhook, the time until its events committed."""
        # Cleared as the poll starts: triggers that came while the pair waited for a slot are served by this poll, and
        # triggers during it leave the flag set for exactly one follow-up.
        triggered_at = status.triggered_at if status.trigger.is_set() else None
        status.trigger.clear()
        status.triggered_at = None
        command = status.commands.popleft() if status.commands else None
        series = self._metrics.for_resource(status.resource)
        series.polls_triggered["schedule" if triggered_at is None else "webhook"].inc()
        events_before = status.events_published
        delay = await self._poll_and_judge(status, command)
        if triggered_at is not None and status.events_published > events_before:
            series.webhook_to_event.observe(time.monotonic() - triggered_at)
        if command is not None and (status.commands or command.kind == "reset"):
            status.trigger.set()  # the next command, or the snapshot after a reset, at once
        return delay

    async def _poll_and_judge(self, status: PairStatus, command: PairCommand | None = None) -> float:
        """Poll once (as ``command`` asks, if given); return the delay until the next poll of this pair, as its
        verdict says after a failure."""
        status.polling = True
        try:
            if command is None:
                result = await self._poll(status.integration, status.resource, status.published)
            else:
                result = await self._poll(status.integration, status.resource, status.published, command.kind)
        except Exception as raised:  # a bug in one pair's poll must not end its loop, nor touch any other pair
            if command is not None:
                command.done(status.resource, raised, None)
            return self._judged(status, as_relay_error(raised), verdict_on(raised))
        except BaseException as raised:  # cancelled: the grace period after a stop is over
            if command is not None:
                command.done(status.resource, raised, None)
            raise
        finally:
            status.polling = False
        if command is not None:
            command.done(status.resource, None, result)
        self._succeeded(status)
        return self._jittered_interval()

    # ------------------------------------------------------------------------------------------- after a poll

    def _succeeded(self, status: PairStatus) -> None:
        was_healthy, status.healthy = status.healthy, True
        status.consecutive_failures = 0
        status.last_success_at = self._clock()
        if not was_healthy:  # the gauge counts over every pair: recount only when a pair's health changed
            self._update_health_gauge()

    def _judged(self, status: PairStatus, error: BaseException, verdict: Verdict) -> float:
        self._failed(status, error, verdict)
        if verdict.then == "back_off":
            return self._backoff_delay(status)
        if verdict.then == "retry_soon":
            return self._kafka_retry_delay(status)
        self._stop_for_good(status, error, verdict.message)
        return 0

    def _stop_for_good(self, status: PairStatus, error: BaseException, message: str) -> None:
        """An error no retry can mend: say it loudly, and stop every pair; the relay exits with its code."""
        log.critical(
            message, extra={"integration": status.integration, "resource": status.resource, "error": str(error)}
        )
        self.fatal = error
        self.stop()

    def _failed(self, status: PairStatus, error: BaseException, verdict: Verdict) -> None:
        status.consecutive_failures += 1
        status.last_error_at = self._clock()
        status.last_error_message = redact(
            f"{type(error).__name__}: {error}" if verdict is INTERNAL_ERROR else str(error), self._secrets
        )
        status.last_error_code = getattr(error, "code", type(error).__name__)
        status.last_error_log_url = getattr(error, "log_url", None)
        status.healthy = False
        self._update_health_gauge()
        log.log(
            logging.ERROR if verdict is INTERNAL_ERROR else logging.WARNING,
            "poll failed",
            extra={
                "integration": status.integration,
                "resource": status.resource,
                "outcome": verdict.outcome,
                "code": status.last_error_code,
                "log_url": status.last_error_log_url,
                "error": status.last_error_message,
                "consecutive_failures": status.consecutive_failures,
            },
            # An internal error is a bug of ours, or a surprise from a library: its traceback is what finds it.
            exc_info=error if verdict is INTERNAL_ERROR else None,
        )

    def _backoff_delay(self, status: PairStatus) -> float:
        """A failing integration waits longer and longer, but never less than one interval (plus jitter)."""
        ceiling = min(
            self._config.integration_backoff_max_seconds,
            self._config.poll_interval_seconds * 2 ** min(status.consecutive_failures - 1, 16),
        )
        return max(self._config.poll_interval_seconds, self._rng.uniform(ceiling / 2, ceiling))

    def _kafka_retry_delay(self, status: PairStatus) -> float:
        """Kafka trouble is not the integration's fault: retry soon, so nothing waits long once Kafka is back."""
        ceiling = min(30.0, self._config.poll_interval_seconds, 0.5 * 2 ** min(status.consecutive_failures, 6))
        return self._rng.uniform(ceiling / 2, ceiling)

    def _jittered_interval(self) -> float:
        spread = self._config.poll_interval_seconds * self._config.poll_jitter_fraction
        return self._config.poll_interval_seconds + self._rng.uniform(-spread, spread)

    def _update_health_gauge(self) -> None:
        polled = {s.integration for s in self.status.values()}
        unhealthy_integrations = {s.integration for s in self.status.values() if not s.healthy}
        self._metrics.integrations.labels("unhealthy").set(len(unhealthy_integrations))
        self._metrics.integrations.labels("healthy").set(len(polled) - len(unhealthy_integrations))


def _fail_commands(status: PairStatus, why: CommandNotRun) -> None:
    """Tell the commands waiting for ``status``'s pair that they will not run here."""
    while status.commands:
        status.commands.popleft().done(status.resource, why, None)


class CommandNotRun(Exception):
    """An operator's command that was never run: the pair was paused, removed, handed over or stopped first."""


class CommandHandedOver(CommandNotRun):
    """An operator's command not run here because the pair's partition changes owner (a handover, a stop): the next
    owner runs it (see :mod:`relay.commands`)."""

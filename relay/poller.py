"""One poll of one (integration, resource) pair, page by page, and the loop that schedules it.

A poll is one of three kinds:

* ``snapshot``: the first poll of a pair without state; a full fetch (``include_deleted=true``, no
  ``updated_after``). It emits ``created`` (flagged ``snapshot``) for every live record, or nothing when
  ``RELAY_INITIAL_SNAPSHOT=skip``.
* ``incremental``: ``updated_after`` = the source's time at the start of the last completed poll minus
  ``RELAY_OVERLAP_SECONDS``. The overlap makes late commits on the source's side safe; the diff makes the re-fetched
  records free of duplicates.
* ``reconcile``: every ``RELAY_RECONCILE_INTERVAL_SECONDS``, a full fetch that also finds remembered entities that
  vanished outright (hard deletes) and emits ``deleted`` (reason ``vanished``) for them, unless the fetch was
  incomplete or too many would vanish at once.

Each page is one unit of work: its events, the state it changes and the pair's checkpoint (including the cursor of
the next page, so a restart resumes a long snapshot where it stopped) go to Kafka in one transaction, and only then
into memory. If the source rejects a saved cursor the poll restarts from the watermark.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aiokafka.errors import KafkaError

from relay import diff
from relay.config import Config
from relay.errors import (
    AuthenticationError,
    CursorRejected,
    Fenced,
    IntegrationError,
    InvalidPage,
    KafkaAuthorizationFailed,
    KafkaUnavailable,
    RelayError,
    SinkError,
    SourceError,
    StateError,
)
from relay.events import to_kafka_message
from relay.heap import HeapTrimmer
from relay.metrics import Metrics
from relay.sink import KafkaSink, OutMessage
from relay.source import Page, SourceClient
from relay.state import Checkpoint, InProgress, PollKind, StateStore, complete_poll

log = logging.getLogger(__name__)

# An incremental page that changed nothing commits no transaction: its checkpoint (the watermark moved) stays in
# memory until the pair's next transaction, or until it has waited this long.
CHECKPOINT_DEFER_SECONDS = 300.0
# Records diffed, and events serialized, between two yields to the event loop while the previous page commits.
PREPARE_SLICE = 50
# Pages of one pair sent to the sink and not yet committed: enough for the sink to group several pages per
# transaction while the source keeps sending, few enough to bound what a poll holds in memory (their messages).
MAX_PAGES_IN_FLIGHT = 4
# Scheduled polls start on a grid of this many seconds (or of 1% of the poll interval, if that is finer), so that the
# pairs due within one step are polled together, in one turn of the event loop. Waking an idle process is most of what
# an idle poll costs: on the benchmark machine a request alone in its wake-up took about 1.1 ms of CPU, one of ten
# about 0.5 ms. RELAY_MAX_CONCURRENT_POLLS still bounds the burst, and a webhook's poll does not wait for the grid.
WAKE_GRID_SECONDS = 0.1

Clock = Callable[[], float]
StateReload = Callable[[], Awaitable[None]]


class Wakeup:
    """A pair's trigger: a flag set by webhooks and cleared when a poll starts, and the one sleep it cuts short.

    Every pair of a fleet sleeps between its polls, so the sleep is the cheapest asyncio has: one future, resolved by
    a timer or by :meth:`set` / :meth:`wake` (:meth:`Poller.stop` wakes every pair). Only the pair's own task sleeps on
    it.
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

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (the event loop's clock), or less if set or woken meanwhile; not at all if the flag
        is already set."""
        if self._flag:
            return
        assert self._sleeper is None, "one sleeper at a time: the pair's own task"
        loop = asyncio.get_running_loop()
        self._sleeper = sleeper = loop.create_future()
        timer = loop.call_at(deadline, _resolve, sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleeper = None


def next_on_grid(loop_time: float, step: float) -> float:
    """The first multiple of ``step`` at or after ``loop_time``. All the times within one step give the very same
    float, so the timers set for them fire in the same turn of the event loop."""
    return math.ceil(loop_time / step) * step


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
    paused: bool = False
    trigger: Wakeup = field(default_factory=Wakeup)
    # time.monotonic() of the first trigger (webhook) not yet served by a poll, for relay_webhook_to_event_seconds
    triggered_at: float | None = None


@dataclass(slots=True)
class PollOutcome:
    kind: PollKind
    pages: int = 0
    records: int = 0
    events: int = 0
    interrupted: bool = False


def iso_ms(epoch_ms: int) -> str:
    """Kombo's timestamp format: ``2024-01-02T03:04:05.678Z``."""
    seconds, millis = divmod(epoch_ms, 1000)
    return f"{_iso_seconds(seconds)}.{millis:03d}Z"


# Watermarks are the source's Date header, to the second, and the pairs polled in the same second share one.
@functools.lru_cache(maxsize=256)
def _iso_seconds(epoch_seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_seconds))


class Poller:
    """Polls every configured pair on its own schedule, under a global concurrency limit."""

    def __init__(
        self,
        config: Config,
        source: SourceClient,
        sink: KafkaSink,
        store: StateStore,
        metrics: Metrics,
        *,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        reload_state: StateReload | None = None,
        heap: HeapTrimmer | None = None,
    ) -> None:
        self._config = config
        self._source = source
        self._sink = sink
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(config.max_concurrent_polls)
        self._stopping = asyncio.Event()
        self._stopped: asyncio.Future[None] | None = None  # the same, as a future to wait on with others
        self._reload_state = reload_state
        self._heap = heap
        # After a failed commit the transaction may still have committed (the answer, not the commit, was lost),
        # so memory may be behind Kafka. Polls then pause until the state is read back from the state topic.
        self._state_suspect = False
        self._active_polls = 0
        self._draining = 0  # polls waiting for the polls in flight to end, to read the state back
        # Pairs whose checkpoint in memory is ahead of the state topic (see CHECKPOINT_DEFER_SECONDS): since when.
        self._deferred_since: dict[tuple[str, str], float] = {}
        self._gate = asyncio.Condition()
        self._wake_grid = min(WAKE_GRID_SECONDS, config.poll_interval_seconds / 100)
        self.fatal: BaseException | None = None
        self.status: dict[tuple[str, str], PairStatus] = {
            (integration, resource): PairStatus(integration, resource)
            for integration in config.integrations
            for resource in config.resources
        }

    # ----------------------------------------------------------------------------------------------- scheduling

    async def run(self, grace_seconds: float | None = None) -> None:
        """Poll until :meth:`stop`; return early (with :attr:`fatal` set) when an operator must act.

        After a stop, a page in flight gets ``grace_seconds`` to commit; then it is cancelled, which aborts its
        transaction. Either way the committed checkpoint says where the next run resumes.
        """
        grace = self._config.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self._update_health_gauge()
        tasks = [asyncio.create_task(self._run_pair(status), name=f"poll {key}") for key, status in self.status.items()]
        try:
            await self._stopping.wait()
        finally:
            self.stop()
            _, pending = await asyncio.wait(tasks, timeout=grace) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stopping.set()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        for status in self.status.values():  # wake every sleeping pair now, not at the end of its interval
            status.trigger.wake()

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

    def resources_of(self, integration: str) -> tuple[str, ...]:
        """The resources polled for ``integration``; empty when it is not configured."""
        return self._config.resources if (integration, self._config.resources[0]) in self.status else ()

    def is_paused(self, integration: str) -> bool:
        status = self.status.get((integration, self._config.resources[0]))  # pauses apply to all its pairs
        return status is not None and status.paused

    def pause(self, integration: str) -> bool:
        """Stop polling ``integration`` (a poll in progress finishes) until :meth:`resume`; False if unknown."""
        pairs = [s for (i, _), s in self.status.items() if i == integration]
        for status in pairs:
            status.paused = True
        if pairs:
            log.info("integration paused", extra={"integration": integration})
        return bool(pairs)

    def resume(self, integration: str) -> bool:
        """Poll ``integration`` again, at once (to catch up on what changed while paused); False if unknown."""
        pairs = [s for (i, _), s in self.status.items() if i == integration]
        was_paused = any(s.paused for s in pairs)
        for status in pairs:
            status.paused = False
            if was_paused:
                self.trigger(integration, status.resource)
        if was_paused:
            log.info("integration resumed", extra={"integration": integration})
        return bool(pairs)

    async def _run_pair(self, status: PairStatus) -> None:
        # Spread the first polls over the first interval's jitter so a fleet of integrations does not start in step.
        delay = self._rng.uniform(0, self._config.poll_interval_seconds * self._config.poll_jitter_fraction)
        while not self._stopping.is_set():
            await self._sleep_or_trigger(status, delay)
            if self._stopping.is_set():
                return
            if status.paused:  # by a webhook; resume() triggers the pair
                status.trigger.clear()
                status.triggered_at = None
                delay = self._jittered_interval()
                continue
            async with self._slots:
                if self._stopping.is_set():
                    return
                delay = await self._poll_counted(status)

    async def _poll_counted(self, status: PairStatus) -> float:
        """Poll once, counting what started the poll and, for a webhook, the time until its events committed."""
        # Cleared as the poll starts: triggers that came while the pair waited for a slot are served by this poll, and
        # triggers during it leave the flag set for exactly one follow-up.
        triggered_at = status.triggered_at if status.trigger.is_set() else None
        status.trigger.clear()
        status.triggered_at = None
        series = self._metrics.for_resource(status.resource)
        series.polls_triggered["schedule" if triggered_at is None else "webhook"].inc()
        events_before = status.events_published
        delay = await self._poll_and_record(status)
        if triggered_at is not None and status.events_published > events_before:
            series.webhook_to_event.observe(time.monotonic() - triggered_at)
        return delay

    async def _sleep_or_trigger(self, status: PairStatus, delay: float) -> None:
        """Wait ``delay`` seconds (rounded up to the wake grid), or less if the pair is triggered or the poller stops
        (:meth:`stop` wakes it)."""
        if delay <= 0:
            status.next_poll_at = self._clock()
            return
        now = asyncio.get_running_loop().time()
        deadline = next_on_grid(now + delay, self._wake_grid)
        status.next_poll_at = self._clock() + (deadline - now)
        if not self._stopping.is_set():
            await status.trigger.sleep_until(deadline)

    async def _enter_poll(self) -> None:
        if not self._state_suspect and not self._gate.locked():
            self._active_polls += 1  # no reload pending or running: nothing to wait for, so no lock to take
            return
        async with self._gate:
            if self._state_suspect and self._reload_state is not None:
                self._draining += 1
                try:
                    await self._gate.wait_for(lambda: self._active_polls == 0)
                finally:
                    self._draining -= 1
                await self._reload_state()
                self._state_suspect = False
            self._active_polls += 1

    async def _leave_poll(self) -> None:
        self._active_polls -= 1
        if self._draining:  # a poll waits for the last one in flight to end (even once the state was read back)
            async with self._gate:
                self._gate.notify_all()

    async def _poll_and_record(self, status: PairStatus) -> float:
        """Poll once; return the delay until the next poll of this pair."""
        status.polling = True
        try:
            await self._enter_poll()
            try:
                await self.poll_once(status.integration, status.resource)
            finally:
                await self._leave_poll()
        except IntegrationError as error:
            return self._failed(status, error, outcome="integration_error", backoff=True)
        except AuthenticationError as error:
            return self._stop_for_good(
                status, error, "source_error", "the source refused the API key; check RELAY_API_KEY"
            )
        except Fenced as error:
            return self._stop_for_good(
                status, error, "kafka_error", "fenced by another instance with the same transactional id; stopping"
            )
        except KafkaAuthorizationFailed as error:
            return self._stop_for_good(status, error, "kafka_error", "Kafka refused this relay's principal; stopping")
        except StateError as error:  # reading the state back after a failed commit met records it cannot read
            return self._stop_for_good(status, error, "kafka_error", "cannot read the state topic; stopping")
        except InvalidPage as error:
            return self._failed(status, error, outcome="invalid_page", backoff=True)
        except SourceError as error:
            return self._failed(status, error, outcome="source_error", backoff=True)
        except SinkError as error:
            self._state_suspect = True
            self._failed(status, error, outcome="kafka_error", backoff=False)
            return self._kafka_retry_delay(status)
        except (OSError, KafkaError) as error:  # reading the state back failed: Kafka is still away
            self._failed(status, KafkaUnavailable(str(error)), outcome="kafka_error", backoff=False)
            return self._kafka_retry_delay(status)
        finally:
            status.polling = False
        was_healthy, status.healthy = status.healthy, True
        status.consecutive_failures = 0
        status.last_success_at = self._clock()
        if not was_healthy:  # the gauge counts over every pair: recount only when a pair's health changed
            self._update_health_gauge()
        return self._jittered_interval()

    def _stop_for_good(self, status: PairStatus, error: RelayError, outcome: str, message: str) -> float:
        """An error no retry can mend: count it, say it loudly, and stop every pair; the relay exits with its code."""
        self._failed(status, error, outcome=outcome, backoff=False)
        log.critical(
            message, extra={"integration": status.integration, "resource": status.resource, "error": str(error)}
        )
        self.fatal = error
        self.stop()
        return 0

    def _failed(self, status: PairStatus, error: Exception, *, outcome: str, backoff: bool) -> float:
        status.consecutive_failures += 1
        status.last_error_at = self._clock()
        status.last_error_message = str(error)
        status.last_error_code = getattr(error, "code", type(error).__name__)
        status.last_error_log_url = getattr(error, "log_url", None)
        status.healthy = False
        self._update_health_gauge()
        log.warning(
            "poll failed",
            extra={
                "integration": status.integration,
                "resource": status.resource,
                "outcome": outcome,
                "code": status.last_error_code,
                "log_url": status.last_error_log_url,
                "error": str(error),
                "consecutive_failures": status.consecutive_failures,
            },
        )
        if not backoff:
            return 0
        ceiling = min(
            self._config.integration_backoff_max_seconds,
            self._config.poll_interval_seconds * 2 ** min(status.consecutive_failures - 1, 16),
        )
        # A failing integration waits longer and longer, but never less than one interval (plus jitter).
        return max(self._config.poll_interval_seconds, self._rng.uniform(ceiling / 2, ceiling))

    def _kafka_retry_delay(self, status: PairStatus) -> float:
        """Kafka trouble is not the integration's fault: retry soon, so nothing waits long once Kafka is back."""
        ceiling = min(30.0, self._config.poll_interval_seconds, 0.5 * 2 ** min(status.consecutive_failures, 6))
        return self._rng.uniform(ceiling / 2, ceiling)

    def _jittered_interval(self) -> float:
        spread = self._config.poll_interval_seconds * self._config.poll_jitter_fraction
        return self._config.poll_interval_seconds + self._rng.uniform(-spread, spread)

    def _update_health_gauge(self) -> None:
        unhealthy_integrations = {s.integration for s in self.status.values() if not s.healthy}
        self._metrics.integrations.labels("unhealthy").set(len(unhealthy_integrations))
        self._metrics.integrations.labels("healthy").set(len(self._config.integrations) - len(unhealthy_integrations))

    # ----------------------------------------------------------------------------------------------- one poll

    def next_kind(self, checkpoint: Checkpoint) -> PollKind:
        if not checkpoint.snapshot_done:
            return "snapshot"
        interval = self._config.reconcile_interval_seconds
        if interval > 0 and (
            checkpoint.last_reconcile_ms is None
            or self._clock() * 1000 - checkpoint.last_reconcile_ms >= interval * 1000
        ):
            return "reconcile"
        return "incremental"

    async def poll_once(self, integration: str, resource: str) -> PollOutcome:
        """Run one whole poll of a pair (all its pages); raise the error that stopped it, if any."""
        checkpoint = self._store.pair(integration, resource).checkpoint
        outcome = PollOutcome(self.next_kind(checkpoint))
        try:
            return await self._poll(integration, resource, checkpoint, outcome)
        finally:
            if self._heap is not None:  # a failed poll freed what it fetched as well
                self._heap.processed(outcome.records)

    async def _poll(self, integration: str, resource: str, checkpoint: Checkpoint, outcome: PollOutcome) -> PollOutcome:
        kind = outcome.kind
        started = time.monotonic()
        try:
            await self._poll_pages(integration, resource, kind, checkpoint, outcome)
        except CursorRejected:
            self._metrics.polls.labels(resource, kind, "cursor_rejected").inc()
            log.warning(
                "the source rejected the saved cursor; restarting the poll from the watermark",
                extra={"integration": integration, "resource": resource, "kind": kind},
            )
            fresh = replace(self._store.pair(integration, resource).checkpoint, in_progress=None)
            self._store.set_checkpoint(integration, resource, fresh)
            await self._poll_pages(integration, resource, kind, fresh, outcome)
        except SourceError as error:
            label = "integration_error" if isinstance(error, IntegrationError) else "source_error"
            self._metrics.polls.labels(
                resource, kind, "invalid_page" if isinstance(error, InvalidPage) else label
            ).inc()
            raise
        except SinkError:
            self._metrics.polls.labels(resource, kind, "kafka_error").inc()
            raise
        if outcome.interrupted:
            log.info("poll interrupted by shutdown", extra={"integration": integration, "resource": resource})
            return outcome
        seconds = time.monotonic() - started
        series = self._metrics.for_resource(resource)
        series.polls_succeeded[kind].inc()
        series.poll_duration[kind].observe(seconds)
        series.last_success.set(self._clock())
        # A fleet's idle polls (an incremental poll that found nothing) would be most of the log: DEBUG for those,
        # and their record is not even built while DEBUG is off.
        level = logging.INFO if outcome.events or kind != "incremental" else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "poll finished",
                extra={
                    "integration": integration,
                    "resource": resource,
                    "kind": kind,
                    "pages": outcome.pages,
                    "records": outcome.records,
                    "events": outcome.events,
                    "seconds": round(seconds, 3),
                },
            )
        return outcome

    async def _poll_pages(
        self, integration: str, resource: str, kind: PollKind, checkpoint: Checkpoint, outcome: PollOutcome
    ) -> None:
        resume = checkpoint.in_progress
        # A reconciliation needs every id of one complete fetch in memory, so it cannot resume after a restart.
        if resume is not None and (resume.kind != kind or kind == "reconcile"):
            resume = None
        cursor = resume.cursor if resume else None
        updated_after = resume.updated_after if resume else self._updated_after(kind, checkpoint)
        started_at_ms = resume.started_at_ms if resume else None
        pages_before = resume.pages if resume else 0
        seen: set[str] | None = set() if kind == "reconcile" else None
        page_number = pages_before
        # Two overlaps keep the relay busy while the source or Kafka answer: the next page is fetched while this one is
        # diffed, and pages are diffed and serialized while earlier ones commit (against memory as it will be once
        # they have: see _Unapplied). Up to MAX_PAGES_IN_FLIGHT pages wait for Kafka at once; the sink commits those
        # that arrive during a transaction together in the next one. Pages are applied to memory in order, each once
        # it committed; a failed commit stops the poll before any later page is applied.
        prefetched: asyncio.Task[Page] | None = None
        in_flight: deque[tuple[_Prepared, asyncio.Task[None] | None]] = deque()
        unapplied = _Unapplied()
        try:
            while True:
                if self._stopping.is_set():
                    await self._apply_committed(integration, resource, in_flight, unapplied, outcome, wait_all=True)
                    outcome.interrupted = True  # the committed checkpoint says where the next run resumes
                    return
                if prefetched is None:
                    page = await self._source.fetch_page(
                        integration, resource, updated_after=updated_after, cursor=cursor, page_number=page_number
                    )
                else:
                    if not await self._done_unless_stopping(prefetched):
                        continue  # stopping: the page was not needed after all; the loop's top ends the poll
                    page = prefetched.result()
                    prefetched = None
                if page.next_cursor is not None:
                    prefetched = asyncio.create_task(
                        self._source.fetch_page(
                            integration,
                            resource,
                            updated_after=updated_after,
                            cursor=page.next_cursor,
                            page_number=page_number + 1,
                        )
                    )
                if started_at_ms is None:
                    started_at_ms = (
                        page.source_time_ms if page.source_time_ms is not None else int(self._clock() * 1000)
                    )
                if seen is not None:
                    seen.update(record["id"] for record in page.records)
                last = page.next_cursor is None
                if last:
                    # The last page completes the poll from the checkpoint every earlier page leaves behind.
                    await self._apply_committed(integration, resource, in_flight, unapplied, outcome, wait_all=True)
                    new_checkpoint = complete_poll(
                        self._store.pair(integration, resource).checkpoint, kind=kind, started_at_ms=started_at_ms
                    )
                else:
                    assert page.next_cursor is not None
                    new_checkpoint = replace(
                        self._store.pair(integration, resource).checkpoint,
                        in_progress=InProgress(kind, page.next_cursor, updated_after, started_at_ms, page_number + 1),
                    )
                prepared = await self._prepare_page(integration, resource, kind, page, new_checkpoint, unapplied)
                page_number += 1
                if last:  # nothing left to overlap with: commit in this task
                    await self._commit_page(integration, resource, prepared, seen, outcome)
                    self._metrics.watermark.labels(resource).set(started_at_ms / 1000)
                    return
                await self._apply_committed(
                    integration,
                    resource,
                    in_flight,
                    unapplied,
                    outcome,
                    wait_all=False,
                    room_for_one=True,
                )
                messages = self._messages_to_commit(integration, resource, prepared, None)
                committing = None if messages is None else asyncio.create_task(self._sink.commit(messages))
                in_flight.append((prepared, committing))
                unapplied.add(prepared)
                # Let the commit hand its batches to the producer, and the producer its first request to Kafka, before
                # the next page's diff holds the event loop: Kafka then works while the relay does.
                for _ in range(3):
                    await asyncio.sleep(0)
                cursor = page.next_cursor
        except asyncio.CancelledError:
            for _, committing in in_flight:  # the grace period is over: abort the transactions in flight
                if committing is not None:
                    committing.cancel()
                    committing.add_done_callback(_retrieve)
            raise
        except SinkError:
            raise
        except BaseException as error:
            # A fetch or a diff failed: the pages before it may still commit, and must be waited for and applied.
            try:
                await self._apply_committed(integration, resource, in_flight, unapplied, outcome, wait_all=True)
            except SinkError as sink_error:
                raise sink_error from error
            raise
        finally:
            if prefetched is not None:  # stopped, or a page failed: the next one is not wanted
                prefetched.cancel()
                prefetched.add_done_callback(_retrieve)

    async def _done_unless_stopping(self, fetching: asyncio.Task[Page]) -> bool:
        """Wait for a page being fetched; False if the relay began to stop first (a slow source must not hold up a
        shutdown: the committed checkpoint says where the next run resumes)."""
        if not fetching.done():
            if self._stopped is None:
                self._stopped = asyncio.get_running_loop().create_future()
                if self._stopping.is_set():
                    self._stopped.set_result(None)
            await asyncio.wait((fetching, self._stopped), return_when=asyncio.FIRST_COMPLETED)
        return fetching.done()

    async def _apply_committed(
        self,
        integration: str,
        resource: str,
        in_flight: deque[tuple[_Prepared, asyncio.Task[None] | None]],
        unapplied: _Unapplied,
        outcome: PollOutcome,
        *,
        wait_all: bool,
        room_for_one: bool = False,
    ) -> None:
        """Apply the pages of ``in_flight`` that committed, oldest first: all of them (``wait_all``), or those done
        already plus, with ``room_for_one``, as many as needed to leave room for one more page in flight.

        Raises the first page's commit error; the pages behind it are then not applied (the sink failed them too)."""
        while in_flight:
            prepared, committing = in_flight[0]
            must_wait = wait_all or (room_for_one and len(in_flight) >= MAX_PAGES_IN_FLIGHT)
            if committing is not None and not committing.done() and not must_wait:
                return
            in_flight.popleft()
            if committing is not None:
                try:
                    await committing
                except BaseException:
                    for _, later in in_flight:
                        if later is not None:
                            later.cancel()
                            later.add_done_callback(_retrieve)
                    in_flight.clear()
                    raise
            unapplied.remove(prepared)
            self._apply_page(integration, resource, prepared, committed=committing is not None, outcome=outcome)

    def _updated_after(self, kind: PollKind, checkpoint: Checkpoint) -> str | None:
        if kind != "incremental" or checkpoint.watermark_ms is None:
            return None
        return iso_ms(max(0, checkpoint.watermark_ms - int(self._config.overlap_seconds * 1000)))

    async def _prepare_page(
        self,
        integration: str,
        resource: str,
        kind: PollKind,
        page: Page,
        checkpoint: Checkpoint,
        unapplied: _Unapplied,
    ) -> _Prepared:
        """Diff a page and serialize its events. ``unapplied`` holds the earlier pages still committing: the diff
        sees memory as it will be once they are applied (their fingerprints and shapes)."""
        pair = self._store.pair(integration, resource)
        entities: Mapping[str, bytes] = pair.entities
        shapes = pair.shapes
        if unapplied.delta:
            entities = _Overlay(unapplied.delta, pair.entities)
        if unapplied.shapes:
            shapes = _with_shapes(pair.shapes, unapplied.shapes)
        page_diff = diff.PageDiff(
            entities,
            shapes,
            integration=integration,
            resource=resource,
            snapshot=kind == "snapshot",
            emit_snapshot=self._config.initial_snapshot == "emit",
        )
        # Diffed and serialized in slices, yielding in between: a page's work holds the event loop for tens of
        # milliseconds, and the previous page's transaction needs the loop for each of its round trips to Kafka.
        records = page.records
        for start in range(0, len(records), PREPARE_SLICE):
            if start:
                await asyncio.sleep(0)
            page_diff.feed(records[start : start + PREPARE_SLICE])
        result = page_diff.result()
        changes = list(result.changes)
        now_ms = int(self._clock() * 1000)
        messages: list[OutMessage] = []
        for start in range(0, len(changes), PREPARE_SLICE):
            await asyncio.sleep(0)
            messages.extend(self._event_messages(integration, resource, changes[start : start + PREPARE_SLICE], now_ms))
        # Only what the commit and the counters need is kept: the records and changes go now, not once the page has
        # committed, which holds several pages in flight to their messages.
        return _Prepared(
            kind,
            len(records),
            checkpoint,
            result.suppressed_by_reason(),
            _events_by_kind(changes),
            dict(result.delta),
            list(result.new_shapes),
            messages,
        )

    async def _commit_page(
        self,
        integration: str,
        resource: str,
        prepared: _Prepared,
        reconcile_seen: set[str] | None,
        outcome: PollOutcome,
    ) -> None:
        """Commit a prepared page (with the vanished entities after a reconciliation's last page), then remember it."""
        messages = self._messages_to_commit(integration, resource, prepared, reconcile_seen)
        if messages is not None:
            await self._sink.commit(messages)
        self._apply_page(integration, resource, prepared, committed=messages is not None, outcome=outcome)

    def _messages_to_commit(
        self, integration: str, resource: str, prepared: _Prepared, reconcile_seen: set[str] | None
    ) -> list[OutMessage] | None:
        """What a prepared page commits: its events and state records; None when it needs no transaction at all."""
        pair = self._store.pair(integration, resource)
        kind, checkpoint, delta, messages = prepared.kind, prepared.checkpoint, prepared.delta, prepared.messages
        if reconcile_seen is not None:
            changes_v, delta_v = self._vanished(integration, resource, pair.entities, delta, reconcile_seen)
            for event_kind, count in _events_by_kind(changes_v).items():
                prepared.events_by_kind[event_kind] = prepared.events_by_kind.get(event_kind, 0) + count
            delta.update(delta_v)
            messages.extend(self._event_messages(integration, resource, changes_v, int(self._clock() * 1000)))
        if (
            kind == "incremental"
            and not prepared.events_by_kind
            and not delta
            and not prepared.new_shapes
            and self._may_defer((integration, resource))
        ):
            # Nothing changed: no transaction. Only the watermark moved; it is kept in memory and persisted with the
            # pair's next transaction, or within CHECKPOINT_DEFER_SECONDS. A persisted watermark that lags is safe:
            # after a restart the pair re-fetches a little more, and the diff drops what it already announced.
            return None
        state_records = self._store.records_for(
            integration, resource, delta=delta, new_shapes=prepared.new_shapes, checkpoint=checkpoint
        )
        messages.extend(
            OutMessage(self._config.state_topic, r.key, r.value, partition=r.partition) for r in state_records
        )
        return messages

    def _apply_page(
        self, integration: str, resource: str, prepared: _Prepared, *, committed: bool, outcome: PollOutcome
    ) -> None:
        """Remember a page once its transaction committed (or, ``committed`` False, once it needed none)."""
        pair_key = (integration, resource)
        if committed:
            pair = self._store.pair(integration, resource)
            delta = prepared.delta
            self._deferred_since.pop(pair_key, None)
            added = sum(1 for entity_id in delta if entity_id not in pair.entities)
            self._store.apply(
                integration, resource, delta=delta, new_shapes=prepared.new_shapes, checkpoint=prepared.checkpoint
            )
            if added:
                self._metrics.entities.labels(resource).inc(added)
        else:
            self._store.set_checkpoint(integration, resource, prepared.checkpoint)
        self._count(resource, prepared)
        events = sum(prepared.events_by_kind.values())
        outcome.pages += 1
        outcome.records += prepared.records
        outcome.events += events
        self.status[pair_key].events_published += events

    def _may_defer(self, pair_key: tuple[str, str]) -> bool:
        """Whether an unchanged page's checkpoint may stay unpersisted (for at most CHECKPOINT_DEFER_SECONDS)."""
        now = time.monotonic()
        return now - self._deferred_since.setdefault(pair_key, now) < CHECKPOINT_DEFER_SECONDS

    def _vanished(
        self,
        integration: str,
        resource: str,
        entities: dict[str, bytes],
        delta: dict[str, bytes],
        seen: set[str],
    ) -> tuple[list[diff.Change], dict[str, bytes]]:
        merged = {**entities, **delta} if delta else entities
        result = diff.find_vanished(
            merged,
            seen,
            integration=integration,
            resource=resource,
            complete=True,
            max_vanish_fraction=self._config.reconcile_max_vanish_fraction,
        )
        if result.refused is not None:
            self._metrics.vanish_refused.labels(resource, result.refused).inc()
            log.warning(
                "reconciliation refused to emit vanish-deletes",
                extra={
                    "integration": integration,
                    "resource": resource,
                    "reason": result.refused,
                    "would_vanish": result.would_vanish,
                },
            )
            return [], {}
        return list(result.changes), dict(result.delta)

    def _event_messages(
        self, integration: str, resource: str, changes: list[diff.Change], now_ms: int
    ) -> list[OutMessage]:
        messages: list[OutMessage] = []
        topics: dict[str, str] = {}
        tombstones = self._config.emit_tombstones
        for change in changes:
            message = to_kafka_message(change, integration=integration, resource=resource, detected_at_ms=now_ms)
            topic = topics.get(change.kind)
            if topic is None:
                topic = topics[change.kind] = self._config.topic_for(resource, change.kind)
            messages.append(OutMessage(topic, message.key, message.value, message.headers))
            if tombstones and change.kind == "deleted":
                messages.append(OutMessage(topic, message.key, None))
        return messages

    def _count(self, resource: str, prepared: _Prepared) -> None:
        series = self._metrics.for_resource(resource)
        for change_kind, count in prepared.events_by_kind.items():
            series.events_published[change_kind].inc(count)
        for reason, count in prepared.suppressed_by_reason.items():
            if count:
                series.events_suppressed[reason].inc(count)


def _events_by_kind(changes: list[diff.Change]) -> dict[str, int]:
    per_kind: dict[str, int] = {}
    for change in changes:
        per_kind[change.kind] = per_kind.get(change.kind, 0) + 1
    return per_kind


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a discarded prefetch's outcome as seen, so asyncio does not log "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


@dataclass(slots=True)
class _Prepared:
    """A page diffed and its events serialized, not yet committed."""

    kind: PollKind
    records: int
    checkpoint: Checkpoint
    suppressed_by_reason: dict[str, int]
    events_by_kind: dict[str, int]
    delta: dict[str, bytes]
    new_shapes: list[tuple[int, diff.Shape]]
    messages: list[OutMessage]


class _Unapplied:
    """What the pages still committing will change, in page order: their fingerprints (a later page's win) and their
    new shapes. A page leaves once it is applied to memory, except the fingerprints a later page overwrote."""

    __slots__ = ("delta", "shapes")

    def __init__(self) -> None:
        self.delta: dict[str, bytes] = {}
        self.shapes: list[tuple[int, diff.Shape]] = []

    def add(self, prepared: _Prepared) -> None:
        self.delta.update(prepared.delta)
        self.shapes.extend(prepared.new_shapes)

    def remove(self, prepared: _Prepared) -> None:
        delta = self.delta
        for entity_id, fingerprint in prepared.delta.items():
            if delta.get(entity_id) is fingerprint:  # the same object: no later page changed this entity
                del delta[entity_id]
        if prepared.new_shapes:
            gone = {shape_id for shape_id, _ in prepared.new_shapes}
            self.shapes = [shape for shape in self.shapes if shape[0] not in gone]


class _Overlay(Mapping[str, bytes]):
    """Remembered fingerprints with a page's delta (not yet committed) laid over them: what the next page of the
    same pair is diffed against while that page commits. Read-only; nothing is copied."""

    __slots__ = ("_base", "_top")

    def __init__(self, top: Mapping[str, bytes], base: Mapping[str, bytes]) -> None:
        self._top = top
        self._base = base

    def get(self, key: str, default: Any = None) -> Any:
        found = self._top.get(key)
        return self._base.get(key, default) if found is None else found

    def __getitem__(self, key: str) -> bytes:
        found = self._top.get(key)
        return self._base[key] if found is None else found

    def __contains__(self, key: object) -> bool:
        return key in self._top or key in self._base

    def __iter__(self) -> Iterator[str]:
        yield from self._top
        yield from (key for key in self._base if key not in self._top)

    def __len__(self) -> int:
        return len(self._base) + sum(1 for key in self._top if key not in self._base)


def _with_shapes(shapes: diff.ShapeTable, pending: list[tuple[int, diff.Shape]]) -> diff.ShapeTable:
    """A copy of ``shapes`` that also knows ``pending`` (shapes of a page not yet committed)."""
    copy = diff.ShapeTable()
    for shape_id, names in (*shapes.shape_records(), *pending):
        copy.add_known(shape_id, names)
    return copy

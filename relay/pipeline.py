"""One poll of one (integration, resource) pair, page by page: fetch, diff, serialize, commit, remember.

Rule: everything between "poll this pair now" and "that poll ended" lives here, and nothing about *when* polls happen
(that is :mod:`relay.scheduler`'s). A poll is a :class:`PairPoll`, an object that lives as long as the poll and holds
its pair, kind, cursor and pages in flight; :class:`Pipeline` holds what polls share (source, sink, memory, metrics)
and what outlives one poll (the deferred checkpoints).

A poll is one of three kinds:

* ``snapshot``: the first poll of a pair without state; a full fetch (``include_deleted=true``, no
  ``updated_after``). It emits ``created`` (flagged ``snapshot``) for every live record, or nothing when
  ``RELAY_INITIAL_SNAPSHOT=skip``.
* ``incremental``: ``updated_after`` = the source's time at the start of the last completed poll minus
  ``RELAY_OVERLAP_SECONDS``. The overlap makes late commits on the source's side safe; the diff makes the re-fetched
  records free of duplicates.
* ``reconcile``: every ``RELAY_RECONCILE_INTERVAL_SECONDS`` (or at once, asked by ``relay reconcile``), a full
  fetch that also finds remembered entities that vanished outright (hard deletes) and emits ``deleted`` (reason
  ``vanished``) for them, unless the fetch was incomplete or too many would vanish at once.
* ``resnapshot``: asked by ``relay resnapshot``; a reconciliation that also re-announces every live record (a
  ``created`` flagged ``snapshot``, reason ``resnapshot``: see :mod:`relay.diff`). Unlike a reconciliation it resumes
  after a restart from its last committed page (then without looking for hard deletes: the ids of the pages before
  are not known any more).

An operator's ``relay state reset`` is no poll but runs like one (:meth:`Pipeline.reset`): the pair's entities and
checkpoint are forgotten, by tombstones committed on the state topic, so that its next poll is a snapshot. The pairs of
an integration removed from the registry longer than ``RELAY_REMOVED_STATE_RETENTION`` ago are forgotten entirely in
the same way, shapes included (:meth:`Pipeline.forget`, asked by the owner: :mod:`relay.retention`).

Each page is one unit of work: its events, the state it changes and the pair's checkpoint (including the cursor of
the next page, so a restart resumes a long snapshot where it stopped) go to Kafka in one transaction, and only then
into memory. If the source rejects a saved cursor the poll restarts from the watermark.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from relay.config import Config
from relay.errors import CursorRejected, InvalidPage, SinkError
from relay.heap import HeapTrimmer
from relay.metrics import Metrics
from relay.pages import DeferredCheckpoints, PageMaker
from relay.pending import Prepared, Unapplied
from relay.sink import Committer, OutMessage
from relay.source import Page, SourceClient
from relay.state import Checkpoint, InProgress, PollKind, StateStore
from relay.tasks import retrieve
from relay.timestamps import format_timestamp_ms
from relay.verdicts import verdict_on

log = logging.getLogger(__name__)

# Pages of one pair sent to the sink and not yet committed: enough for the sink to group several pages per
# transaction while the source keeps sending, few enough to bound what a poll holds in memory (their messages).
MAX_PAGES_IN_FLIGHT = 4

# Tombstones of a removed integration's pair committed per transaction: a pair of a million entities is forgotten in
# several transactions, each well within RELAY_KAFKA_COMMIT_TIMEOUT_SECONDS. The checkpoint's comes last, so a pair
# half forgotten (a failure between two) still has its checkpoint, and the next try forgets the rest.
FORGET_KEYS_PER_TRANSACTION = 50_000

# The source's Date header and this relay's clock may differ by this much before the Date is taken for untrue.
MAX_SOURCE_CLOCK_SKEW_MS = 15 * 60 * 1000

Clock = Callable[[], float]
Published = Callable[[int], None]


@dataclass(slots=True)
class PollOutcome:
    kind: PollKind
    pages: int = 0
    records: int = 0
    events: int = 0
    interrupted: bool = False


def _ignore(events: int) -> None:
    pass


Pair = tuple[str, str]


class CommitsInFlight:
    """Per pair, the pages handed to Kafka and not yet remembered (committed and applied to memory, or failed).

    What a stop or a handover waits for (:meth:`relay.scheduler.Scheduler.disown`): the grace is for these, so that
    a page being committed is not done again by the next owner. A poll with none is waiting on the source (or for a
    slot, or reading the state back): cancelling it at once loses nothing, since what it fetched was never sent.
    A page counts from the moment its commit is asked for (before any await) until memory knows its outcome, so a
    cancellation decided while a pair has none can never land inside a transaction or between a commit and memory.
    """

    __slots__ = ("_ended", "_pages")

    def __init__(self) -> None:
        self._pages: dict[Pair, int] = {}
        self._ended: asyncio.Future[None] | None = None  # resolved when a pair's last page in flight ends

    def committing(self, integration: str, resource: str) -> bool:
        return (integration, resource) in self._pages

    def next_end(self) -> asyncio.Future[None]:
        """A future resolved when the next pair's last page in flight ends (to look again at what still commits)."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
        return self._ended

    def began(self, pair: Pair) -> None:
        self._pages[pair] = self._pages.get(pair, 0) + 1

    def ended(self, pair: Pair) -> None:
        left = self._pages[pair] - 1
        if left:
            self._pages[pair] = left
            return
        del self._pages[pair]
        ended, self._ended = self._ended, None
        if ended is not None and not ended.done():
            ended.set_result(None)

    @contextmanager
    def page(self, pair: Pair) -> Iterator[None]:
        """One page of ``pair`` in flight for the duration of the block: its commit, and what memory does after."""
        self.began(pair)
        try:
            yield
        finally:
            self.ended(pair)


class Pipeline:
    """Runs whole polls of pairs against one source, one sink and one store of what is remembered."""

    def __init__(
        self,
        config: Config,
        source: SourceClient,
        sink: Committer,
        store: StateStore,
        metrics: Metrics,
        *,
        clock: Clock = time.time,
        heap: HeapTrimmer | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.sink = sink
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._heap = heap
        self.stopping = asyncio.Event()
        self._halted: set[str] = set()  # integrations being handed over to another replica
        self._interrupted: asyncio.Future[None] | None = None  # resolved at each stop or halt, for waits to look up
        self.deferred = DeferredCheckpoints()  # they outlive a poll
        self.commits = CommitsInFlight()  # what a stop or a handover gives its grace to

    def stop(self) -> None:
        """Let the polls in progress end at their next page: what committed says where the next run resumes."""
        self.stopping.set()
        self._interrupt()

    def halt(self, integrations: Iterable[str]) -> None:
        """Let the polls of ``integrations`` end at their next page, as at a stop (their partition is handed over)."""
        self._halted.update(integrations)
        self._interrupt()

    def unhalt(self, integrations: Iterable[str]) -> None:
        self._halted.difference_update(integrations)

    def is_stopping(self, integration: str) -> bool:
        return self.stopping.is_set() or integration in self._halted

    def _interrupt(self) -> None:
        interrupted, self._interrupted = self._interrupted, None
        if interrupted is not None and not interrupted.done():
            interrupted.set_result(None)

    def next_kind(self, checkpoint: Checkpoint, requested: PollKind | None = None) -> PollKind:
        """The kind of a pair's next poll: ``requested`` by an operator's command (``reconcile``, ``resnapshot``)
        once the pair has a snapshot; a resnapshot in progress (resumed after a restart); or as scheduled."""
        if not checkpoint.snapshot_done:
            return "snapshot"
        if requested is not None:
            return requested
        if checkpoint.in_progress is not None and checkpoint.in_progress.kind == "resnapshot":
            return "resnapshot"
        interval = self.config.reconcile_interval_seconds
        if interval > 0 and (
            checkpoint.last_reconcile_ms is None
            or self.clock() * 1000 - checkpoint.last_reconcile_ms >= interval * 1000
        ):
            return "reconcile"
        return "incremental"

    async def poll_once(
        self, integration: str, resource: str, published: Published = _ignore, kind: PollKind | None = None
    ) -> PollOutcome:
        """Run one whole poll of a pair (all its pages); raise the error that stopped it, if any.

        ``published`` is told the number of events of each page as soon as that page is remembered (committed).
        ``kind``: the kind an operator's command asks for (see :meth:`next_kind`)."""
        checkpoint = self.store.pair(integration, resource).checkpoint
        outcome = PollOutcome(self.next_kind(checkpoint, kind))
        try:
            started = time.monotonic()
            await self._poll_restarting_on_rejected_cursor(integration, resource, checkpoint, outcome, published)
            if outcome.interrupted:
                log.info("poll interrupted by shutdown", extra={"integration": integration, "resource": resource})
            else:
                self._finished(integration, resource, outcome, time.monotonic() - started)
            return outcome
        finally:
            if self._heap is not None:  # a failed poll freed what it fetched as well
                self._heap.processed(outcome.records)

    async def _poll_restarting_on_rejected_cursor(
        self, integration: str, resource: str, checkpoint: Checkpoint, outcome: PollOutcome, published: Published
    ) -> None:
        kind = outcome.kind
        try:
            try:
                await PairPoll(self, integration, resource, checkpoint, outcome, published).run()
            except CursorRejected:
                self.metrics.polls.labels(resource, kind, "cursor_rejected").inc()
                log.warning(
                    "the source rejected the saved cursor; restarting the poll from the watermark",
                    extra={"integration": integration, "resource": resource, "kind": kind},
                )
                fresh = replace(self.store.pair(integration, resource).checkpoint, in_progress=None)
                self.store.set_checkpoint(integration, resource, fresh)
                await PairPoll(self, integration, resource, fresh, outcome, published).run()
        except Exception as error:
            self.metrics.polls.labels(resource, kind, verdict_on(error).outcome).inc()
            raise

    async def reset(self, integration: str, resource: str) -> int:
        """Forget a pair (``relay state reset``): tombstones for its entities and its checkpoint, committed in one
        transaction by its partition's producer, then memory. Its next poll is a snapshot, as if never polled
        (``RELAY_INITIAL_SNAPSHOT`` applies). Returns the number of entities forgotten."""
        pair = self.store.pair(integration, resource)
        entities = len(pair.entities)
        partition = self.store.partition_of(integration)
        state_topic = self.config.state_topic
        messages = [
            OutMessage(state_topic, key, None, partition=partition)
            for key in self.store.tombstone_keys(integration, resource)
        ]
        with self.commits.page((integration, resource)):
            await self.sink.commit(messages)
            self.store.forget(integration, resource)
            self.deferred.persisted((integration, resource))
        self.metrics.entities.labels(resource).dec(entities)
        log.info("pair reset", extra={"integration": integration, "resource": resource, "entities": entities})
        return entities

    async def forget(self, integration: str, resource: str) -> int:
        """Forget a pair entirely (its integration was removed from the registry longer than
        ``RELAY_REMOVED_STATE_RETENTION`` ago: :mod:`relay.retention`): tombstones for every key of its state, shapes
        included, committed by its partition's producer (a zombie cannot write them) in transactions of at most
        FORGET_KEYS_PER_TRANSACTION keys, its checkpoint's in the last; then memory forgets it. Its next poll, if the
        integration is added again, is a snapshot. Returns the number of entities forgotten."""
        pair = self.store.pair(integration, resource)
        entities = len(pair.entities)
        partition = self.store.partition_of(integration)
        keys = self.store.every_key(integration, resource)
        for start in range(0, len(keys), FORGET_KEYS_PER_TRANSACTION):
            chunk = keys[start : start + FORGET_KEYS_PER_TRANSACTION]
            await self.sink.commit(
                [OutMessage(self.config.state_topic, key, None, partition=partition) for key in chunk]
            )
        self.store.discard(integration, resource)
        self.deferred.persisted((integration, resource))
        self.metrics.entities.labels(resource).dec(entities)
        return entities

    def _finished(self, integration: str, resource: str, outcome: PollOutcome, seconds: float) -> None:
        kind = outcome.kind
        series = self.metrics.for_resource(resource)
        series.polls_succeeded[kind].inc()
        series.poll_duration[kind].observe(seconds)
        series.last_success.set(self.clock())
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

    async def done_unless_stopping(self, fetching: asyncio.Task[Page], integration: str) -> bool:
        """Wait for a page being fetched; False if the relay, or the poll of ``integration``, began to stop first (a
        slow source must not hold up a shutdown or a handover: the committed checkpoint says where to resume)."""
        while not fetching.done() and not self.is_stopping(integration):
            if self._interrupted is None:
                self._interrupted = asyncio.get_running_loop().create_future()
            await asyncio.wait((fetching, self._interrupted), return_when=asyncio.FIRST_COMPLETED)
        return fetching.done()

    def updated_after(self, kind: PollKind, checkpoint: Checkpoint) -> str | None:
        if kind != "incremental" or checkpoint.watermark_ms is None:
            return None
        return format_timestamp_ms(max(0, checkpoint.watermark_ms - int(self.config.overlap_seconds * 1000)))


class PairPoll:
    """One poll of one pair, from its checkpoint to its last page.

    Two overlaps keep the relay busy while the source or Kafka answer: the next page is fetched while this one is
    diffed, and pages are diffed and serialized while earlier ones commit (against memory as it will be once they
    have: see :class:`relay.pending.Unapplied`). Up to MAX_PAGES_IN_FLIGHT pages wait for Kafka at once; the sink
    commits those that arrive during a transaction together in the next one. Pages are applied to memory in order,
    each once it committed; a failed commit stops the poll before any later page is applied.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        integration: str,
        resource: str,
        checkpoint: Checkpoint,
        outcome: PollOutcome,
        published: Published,
    ) -> None:
        self._pipeline = pipeline
        self._store = pipeline.store
        self.integration = integration
        self.resource = resource
        self._pair = (integration, resource)
        self._commits = pipeline.commits
        self.kind = kind = outcome.kind
        self.outcome = outcome
        self._published = published
        resume = checkpoint.in_progress
        # A reconciliation needs every id of one complete fetch in memory, so it cannot resume after a restart. A
        # resnapshot can: it then skips the search for hard deletes.
        if resume is not None and (resume.kind != kind or kind == "reconcile"):
            resume = None
        self._cursor = resume.cursor if resume else None
        self._updated_after = resume.updated_after if resume else pipeline.updated_after(kind, checkpoint)
        self._started_at_ms = resume.started_at_ms if resume else None
        self._page_number = resume.pages if resume else 0
        full = kind == "reconcile" or (kind == "resnapshot" and resume is None)
        self._seen: set[str] | None = set() if full else None
        # Cursors this poll was sent to: a source that hands one out again would page in a circle for ever.
        self._cursors: set[str] = set() if self._cursor is None else {self._cursor}
        self._prefetched: asyncio.Task[Page] | None = None
        self._in_flight: deque[tuple[Prepared, asyncio.Task[None] | None]] = deque()
        self._unapplied = Unapplied()
        self._pages = PageMaker(
            pipeline.config,
            pipeline.store,
            pipeline.metrics,
            pipeline.clock,
            pipeline.deferred,
            integration=integration,
            resource=resource,
            kind=kind,
        )

    # ------------------------------------------------------------------------------------------- the page loop

    async def run(self) -> None:
        try:
            while True:
                if self._pipeline.is_stopping(self.integration):
                    await self._apply_committed(wait_all=True)
                    self.outcome.interrupted = True  # the committed checkpoint says where the next run resumes
                    return
                page = await self._next_page()
                if page is None:
                    continue  # stopping: the page was not needed after all; the loop's top ends the poll
                self._check_bounds(page)
                self._prefetch_after(page)
                self._note(page)
                if page.next_cursor is None:
                    await self._commit_last(page)
                    return
                await self._send(page, page.next_cursor)
        except asyncio.CancelledError:
            self._abort_in_flight()  # the grace period is over: abort the transactions in flight
            raise
        except BaseException as error:
            # A fetch, a diff or a page's own check failed: the pages before it may still commit, and must be waited
            # for and applied. (After a failed commit there is nothing left to wait for: it failed the pages after
            # it, and they left the pages in flight.)
            try:
                await self._apply_committed(wait_all=True)
            except SinkError as sink_error:
                raise sink_error from error
            raise
        finally:
            if self._prefetched is not None:  # stopped, or a page failed: the next one is not wanted
                self._prefetched.cancel()
                self._prefetched.add_done_callback(retrieve)

    async def _next_page(self) -> Page | None:
        """The next page: fetched now (the first), or the one prefetched; None if the relay began to stop first."""
        if self._prefetched is None:
            return await self._fetch(self._cursor, self._page_number)
        if not await self._pipeline.done_unless_stopping(self._prefetched, self.integration):
            return None
        page = self._prefetched.result()
        self._prefetched = None
        return page

    def _fetch(self, cursor: str | None, page_number: int) -> Coroutine[Any, Any, Page]:
        return self._pipeline.source.fetch_page(
            self.integration, self.resource, updated_after=self._updated_after, cursor=cursor, page_number=page_number
        )

    def _check_bounds(self, page: Page) -> None:
        """A poll ends: a source whose cursors loop or never end must not hold a poll slot, and Kafka, for ever."""
        number = self._page_number
        cursor = page.next_cursor
        if cursor is not None and cursor in self._cursors:
            raise self._unbounded("RELAY.CURSOR_LOOP", f"page {number} sent a next cursor this poll had already used")
        limit = self._pipeline.config.max_pages_per_poll
        if cursor is not None and number + 1 >= limit:
            raise self._unbounded(
                "RELAY.TOO_MANY_PAGES", f"page {number} has a next page, past RELAY_MAX_PAGES_PER_POLL={limit} pages"
            )
        if cursor is not None:
            self._cursors.add(cursor)

    def _unbounded(self, code: str, problem: str) -> InvalidPage:
        return InvalidPage(
            f"{problem}; the poll stops here, and resumes from its last committed page after a back-off",
            code=code,
            integration=self.integration,
            resource=self.resource,
        )

    def _prefetch_after(self, page: Page) -> None:
        if page.next_cursor is not None:
            self._prefetched = asyncio.create_task(self._fetch(page.next_cursor, self._page_number + 1))

    def _note(self, page: Page) -> None:
        """Count the page, and take the poll's start time from its first page and the ids a reconciliation saw."""
        self._page_number += 1
        if self._started_at_ms is None:
            self._started_at_ms = self._poll_start_ms(page.source_time_ms)
        if self._seen is not None:
            self._seen.update(record["id"] for record in page.records)

    def _poll_start_ms(self, source_time_ms: int | None) -> int:
        """The source's clock at the first page (its Date header), which the next poll's updated_after counts from;
        the relay's own clock when the source gave none, or one that cannot be true (a Date far in the future would
        move the watermark past changes not yet made, which later polls would then never ask for)."""
        now_ms = int(self._pipeline.clock() * 1000)
        if source_time_ms is None:
            return now_ms
        if abs(source_time_ms - now_ms) > MAX_SOURCE_CLOCK_SKEW_MS:
            log.warning(
                "the source's Date header is far from this relay's clock; the relay's clock is used",
                extra={"integration": self.integration, "resource": self.resource, "skew_ms": source_time_ms - now_ms},
            )
            return now_ms
        return source_time_ms

    async def _commit_last(self, page: Page) -> None:
        """The last page completes the poll from the checkpoint every earlier page leaves behind; nothing is left to
        overlap with, so it commits in this task."""
        assert self._started_at_ms is not None
        await self._apply_committed(wait_all=True)
        checkpoint = self._checkpoint().completed(kind=self.kind, started_at_ms=self._started_at_ms)
        prepared = await self._pages.prepare(page, checkpoint, self._unapplied)
        messages = self._pages.messages_to_commit(prepared, self._seen)
        with self._commits.page(self._pair):
            if messages is not None:
                await self._pipeline.sink.commit(messages)
            self._apply(prepared, committed=messages is not None)

    async def _send(self, page: Page, next_cursor: str) -> None:
        """Prepare a page that has more after it and hand it to the sink, leaving its commit in flight."""
        assert self._started_at_ms is not None
        in_progress = InProgress(self.kind, next_cursor, self._updated_after, self._started_at_ms, self._page_number)
        prepared = await self._pages.prepare(
            page, replace(self._checkpoint(), in_progress=in_progress), self._unapplied
        )
        await self._apply_committed(wait_all=False, room_for_one=True)
        messages = self._pages.messages_to_commit(prepared, None)
        committing = None
        if messages is not None:
            self._commits.began(self._pair)  # ends once applied or given up (_apply_committed, _abort_in_flight)
            committing = asyncio.create_task(self._pipeline.sink.commit(messages))
        self._in_flight.append((prepared, committing))
        self._unapplied.add(prepared)
        # Let the commit hand its batches to the producer, and the producer its first request to Kafka, before the
        # next page's diff holds the event loop: Kafka then works while the relay does.
        for _ in range(3):
            await asyncio.sleep(0)

    def _checkpoint(self) -> Checkpoint:
        return self._store.pair(self.integration, self.resource).checkpoint

    # ------------------------------------------------------------------------------------------- one page

    async def _apply_committed(self, *, wait_all: bool, room_for_one: bool = False) -> None:
        """Apply the pages in flight that committed, oldest first: all of them (``wait_all``), or those done already
        plus, with ``room_for_one``, as many as needed to leave room for one more page in flight.

        Raises the first page's commit error; the pages behind it are then not applied (the sink failed them too)."""
        in_flight = self._in_flight
        while in_flight:
            prepared, committing = in_flight[0]
            must_wait = wait_all or (room_for_one and len(in_flight) >= MAX_PAGES_IN_FLIGHT)
            if committing is not None and not committing.done() and not must_wait:
                return
            in_flight.popleft()
            try:
                if committing is not None:
                    try:
                        await committing
                    except BaseException:
                        self._abort_in_flight()
                        raise
                self._unapplied.remove(prepared)
                self._apply(prepared, committed=committing is not None)
            finally:
                if committing is not None:  # memory knows its outcome now
                    self._commits.ended(self._pair)

    def _abort_in_flight(self) -> None:
        for _, committing in self._in_flight:
            if committing is not None:
                committing.cancel()
                committing.add_done_callback(retrieve)
                self._commits.ended(self._pair)
        self._in_flight.clear()

    def _apply(self, prepared: Prepared, *, committed: bool) -> None:
        events = self._pages.remember(prepared, committed=committed)
        self.outcome.pages += 1
        self.outcome.records += prepared.records
        self.outcome.events += events
        self._published(events)

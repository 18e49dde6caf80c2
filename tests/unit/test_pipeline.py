"""A poll's pages in flight: diffed while earlier pages commit, committed in groups, remembered in order.

The pipeline and the sink's queue are real; the source serves scripted pages and the sink's transactions are
hand-written fakes that can be held open or made to fail. What real Kafka makes of the transactions is the
end-to-end and fault tests' business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from relay.config import Config
from relay.errors import InvalidPage, KafkaUnavailable, RecordTooLarge
from relay.heap import HeapTrimmer
from relay.metrics import Metrics
from relay.pipeline import MAX_PAGES_IN_FLIGHT, Pipeline
from relay.sink import KafkaSink, OutMessage
from relay.source import Page, SourceClient
from relay.state import StateStore
from tests.unit.support import config_without_kafka, wait_until

ACME = "acme"
USERS = "ats/users"
PAGE_SIZE = 10
PAGES = 12


def page_records(number: int) -> list[dict[str, Any]]:
    return [
        {"id": f"u{number}-{i}", "changed_at": "2024-01-01T00:00:00.000Z", "remote_deleted_at": None, "n": i}
        for i in range(PAGE_SIZE)
    ]


class ScriptedSource(SourceClient):
    """Serves PAGES pages of PAGE_SIZE records; a page listed in ``holds`` is served once its event is set."""

    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        super().__init__(cfg, metrics)
        self.holds: dict[int, asyncio.Event] = {}
        self.held = asyncio.Event()  # set once a held page was asked for
        self.failures: dict[int, BaseException] = {}  # raised when that page is asked for
        self.oversized: set[int] = set()  # pages with a record over any RELAY_KAFKA_MAX_RECORD_BYTES the tests set
        self.cursors: list[str | None] = []  # the cursor of every request, in order
        self.next_cursor: Callable[[int], str | None] = lambda n: None if n == PAGES - 1 else f"c{n + 1}"
        self.source_time_ms = 1_700_000_000_000  # the Date header of every page

    async def fetch_page(
        self, integration: str, resource: str, *, updated_after: str | None, cursor: str | None, page_number: int
    ) -> Page:
        self.cursors.append(cursor)
        if page_number in self.holds:
            self.held.set()
            await self.holds[page_number].wait()
        if page_number in self.failures:
            raise self.failures[page_number]
        records = page_records(page_number)
        if page_number in self.oversized:
            records[0] = {**records[0], "blob": "x" * 4096}
        return Page(records, self.next_cursor(page_number), self.source_time_ms)


class ScriptedTransactions(KafkaSink):
    """Transactions recorded (the pages they carry) and held open until released; ``fail`` fails the n-th (from 1)."""

    def __init__(self, cfg: Config, metrics: Metrics, *, fail: int | None = None) -> None:
        super().__init__(cfg, metrics)
        self.pages: list[list[str]] = []
        self.release = asyncio.Semaphore(0)
        self.fail = fail

    async def _producer_or_start(self) -> Any:
        return object()

    async def _transaction(self, producer: Any, messages: Sequence[OutMessage]) -> None:
        checkpoints = [orjson.loads(m.value) for m in messages if m.value and m.key.startswith(b'["c"')]
        self.pages.append([c["in_progress"]["cursor"] if c["in_progress"] else "done" for c in checkpoints])
        await self.release.acquire()
        if self.fail == len(self.pages):
            raise KafkaUnavailable("broker gone")

    async def _discard_producer(self, *, abort: bool, timeout: float = 10.0) -> None:
        pass


def relay(
    *, fail: int | None = None, heap: HeapTrimmer | None = None, **env: str
) -> tuple[Pipeline, ScriptedSource, ScriptedTransactions, StateStore]:
    cfg = config_without_kafka(RELAY_INTEGRATIONS=ACME, RELAY_RESOURCES=USERS, **env)
    metrics = Metrics(cfg.resources, registry=CollectorRegistry())
    source, sink, store = ScriptedSource(cfg, metrics), ScriptedTransactions(cfg, metrics, fail=fail), StateStore(1)
    return Pipeline(cfg, source, sink, store, metrics, heap=heap), source, sink, store


async def release_each_transaction(sink: ScriptedTransactions, poll: asyncio.Task[Any]) -> None:
    """Let each transaction end once the pipeline has had every chance to queue more pages behind it."""
    while not poll.done():
        for _ in range(50):
            await asyncio.sleep(0)
        sink.release.release()


async def test_pages_ready_during_a_transaction_share_the_next_and_are_remembered_in_order() -> None:
    pipeline, _, sink, store = relay()
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    await asyncio.gather(poll, release_each_transaction(sink, poll))
    outcome = poll.result()
    assert (outcome.pages, outcome.records, outcome.events) == (PAGES, PAGES * PAGE_SIZE, PAGES * PAGE_SIZE)
    # Every page committed once, in order, and transactions carried several (but never more than in flight).
    committed = [cursor for transaction in sink.pages for cursor in transaction]
    assert committed == [f"c{n}" for n in range(1, PAGES)] + ["done"]
    assert max(len(transaction) for transaction in sink.pages) > 1
    assert max(len(transaction) for transaction in sink.pages) <= MAX_PAGES_IN_FLIGHT
    pair = store.pair(ACME, USERS)
    assert len(pair.entities) == PAGES * PAGE_SIZE
    assert pair.checkpoint.snapshot_done
    assert pair.checkpoint.in_progress is None


async def test_a_reconciliation_that_changes_nothing_commits_its_last_page_alone() -> None:
    pipeline, _, sink, store = relay(RELAY_RECONCILE_INTERVAL_SECONDS="0.01")
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    await asyncio.gather(poll, release_each_transaction(sink, poll))
    snapshot = store.pair(ACME, USERS).checkpoint
    sink.pages.clear()
    await asyncio.sleep(0.02)
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    await asyncio.gather(poll, release_each_transaction(sink, poll))
    outcome = poll.result()
    assert outcome.kind == "reconcile"
    assert (outcome.pages, outcome.records, outcome.events) == (PAGES, PAGES * PAGE_SIZE, 0)
    # Its other pages' checkpoints only said where it got to, which a reconciliation never resumes from.
    assert sink.pages == [["done"]]
    checkpoint = store.pair(ACME, USERS).checkpoint
    assert checkpoint.in_progress is None
    assert checkpoint.last_reconcile_ms is not None
    assert snapshot.last_reconcile_ms is not None
    assert checkpoint.last_reconcile_ms > snapshot.last_reconcile_ms


async def test_a_failed_transaction_leaves_memory_at_the_last_committed_page() -> None:
    pipeline, _, sink, store = relay(fail=2)
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    with pytest.raises(KafkaUnavailable):
        await asyncio.gather(poll, release_each_transaction(sink, poll))
    first = sink.pages[0]  # the one transaction that committed
    pair = store.pair(ACME, USERS)
    assert len(pair.entities) == len(first) * PAGE_SIZE  # no page of the failed transaction, nor any after it
    assert pair.entities.keys() == {f"u{n}-{i}" for n in range(len(first)) for i in range(PAGE_SIZE)}
    assert pair.checkpoint.in_progress is not None
    assert pair.checkpoint.in_progress.cursor == first[-1]  # the next run resumes right after it
    assert len(sink.pages) == 2  # nothing was committed after the failure
    assert not pipeline.commits.committing(ACME, USERS)


async def test_a_stop_does_not_wait_for_a_page_being_fetched_but_keeps_what_committed() -> None:
    pipeline, source, sink, store = relay()
    source.holds[3] = asyncio.Event()  # never set: a source that does not answer
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    releasing = asyncio.create_task(release_each_transaction(sink, poll))
    async with asyncio.timeout(10):
        await source.held.wait()
    pipeline.stop()
    async with asyncio.timeout(10):
        outcome = await poll
    await releasing
    assert outcome.interrupted
    assert outcome.pages == 3
    pair = store.pair(ACME, USERS)
    assert len(pair.entities) == 3 * PAGE_SIZE
    assert pair.checkpoint.in_progress is not None
    assert pair.checkpoint.in_progress.cursor == "c3"  # the next run asks for page 3 again


async def test_a_pair_has_a_page_in_flight_from_its_commit_until_memory_knows_it_and_none_while_fetching() -> None:
    # What a stop or a handover waits for (the grace), and what it need not wait for (a source that does not answer).
    pipeline, source, sink, store = relay()
    source.holds[0] = asyncio.Event()
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    async with asyncio.timeout(10):
        await source.held.wait()
    assert not pipeline.commits.committing(ACME, USERS)  # the first page is being fetched: nothing for Kafka yet
    source.holds[0].set()
    await wait_until(lambda: bool(sink.pages), "the first transaction")
    assert pipeline.commits.committing(ACME, USERS)
    ended = pipeline.commits.next_end()
    await asyncio.gather(poll, release_each_transaction(sink, poll))
    assert ended.done()
    assert not pipeline.commits.committing(ACME, USERS)
    assert store.pair(ACME, USERS).checkpoint.snapshot_done


async def test_a_poll_cancelled_with_a_transaction_open_leaves_no_page_in_flight_and_memory_unchanged() -> None:
    pipeline, _, sink, store = relay()
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    await wait_until(lambda: bool(sink.pages), "the first transaction")  # held open: never released
    assert pipeline.commits.committing(ACME, USERS)
    poll.cancel()  # past the grace
    with pytest.raises(asyncio.CancelledError):
        await poll
    await wait_until(lambda: not pipeline.commits.committing(ACME, USERS), "the pages in flight to be given up")
    assert store.pair(ACME, USERS).entities == {}
    assert store.pair(ACME, USERS).checkpoint.in_progress is None


async def test_the_heap_is_trimmed_after_a_poll_that_fetched_enough_records_and_after_a_failed_one() -> None:
    trims: list[int] = []

    def trim(pad: int) -> int:
        trims.append(pad)
        return 1

    heap = HeapTrimmer(trim, every=PAGES * PAGE_SIZE)
    pipeline, _, sink, _ = relay(heap=heap)
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    await asyncio.gather(poll, release_each_transaction(sink, poll))
    assert trims == [0]  # the snapshot fetched exactly ``every`` records

    failing = HeapTrimmer(trim, every=1)
    pipeline, _, sink, _ = relay(fail=2, heap=failing)
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    with pytest.raises(KafkaUnavailable):
        await asyncio.gather(poll, release_each_transaction(sink, poll))
    assert trims == [0, 0]  # the records of the page that committed count


# --- Bounded polls: a source whose cursors loop or never end, a bug in a page's handling --------------------------


def polls_counted(pipeline: Pipeline, outcome: str) -> float:
    labels = {"resource": USERS, "kind": "snapshot", "outcome": outcome}
    return pipeline.metrics.registry.get_sample_value("relay_polls_total", labels) or 0.0


async def test_a_cursor_seen_before_in_the_same_poll_ends_it_with_an_error_naming_the_page() -> None:
    pipeline, source, sink, store = relay()
    source.next_cursor = lambda n: "c1" if n < 3 else "c2"  # page 0 -> c1, 1 -> c1 again: a loop
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    with pytest.raises(InvalidPage, match="page 1 sent a next cursor this poll had already used") as raised:
        await asyncio.gather(poll, release_each_transaction(sink, poll))
    assert raised.value.code == "RELAY.CURSOR_LOOP"
    assert (raised.value.integration, raised.value.resource) == (ACME, USERS)
    assert source.cursors == [None, "c1"]  # no request after the loop showed
    pair = store.pair(ACME, USERS)  # the first page committed; nothing of the second
    assert pair.entities.keys() == {f"u0-{i}" for i in range(PAGE_SIZE)}
    assert pair.checkpoint.in_progress is not None
    assert pair.checkpoint.in_progress.cursor == "c1"
    assert not pair.checkpoint.snapshot_done
    assert polls_counted(pipeline, "invalid_page") == 1


async def test_a_cursor_that_repeats_itself_at_once_ends_the_poll_at_its_first_page() -> None:
    pipeline, source, sink, store = relay()
    source.next_cursor = lambda n: "SAME"
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    with pytest.raises(InvalidPage, match=r"RELAY\.CURSOR_LOOP"):
        await asyncio.gather(poll, release_each_transaction(sink, poll))
    # Page 0 sent SAME and committed; page 1 (asked with SAME) sent SAME again: two requests, not thousands.
    assert source.cursors == [None, "SAME"]
    assert len(store.pair(ACME, USERS).entities) == PAGE_SIZE


async def test_a_poll_stops_with_an_error_past_the_most_pages_it_may_fetch() -> None:
    pipeline, source, sink, store = relay(RELAY_MAX_PAGES_PER_POLL="5")
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    with pytest.raises(InvalidPage, match="past RELAY_MAX_PAGES_PER_POLL=5 pages") as raised:
        await asyncio.gather(poll, release_each_transaction(sink, poll))
    assert raised.value.code == "RELAY.TOO_MANY_PAGES"
    assert len(source.cursors) == 5  # the fifth page had a next one: not asked for
    pair = store.pair(ACME, USERS)
    assert len(pair.entities) == 4 * PAGE_SIZE  # the pages before the fifth committed; it did not
    assert pair.checkpoint.in_progress is not None
    assert pair.checkpoint.in_progress.cursor == "c4"


async def test_a_poll_of_exactly_the_most_pages_succeeds() -> None:
    pipeline, _, sink, store = relay(RELAY_MAX_PAGES_PER_POLL=str(PAGES))
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    await asyncio.gather(poll, release_each_transaction(sink, poll))
    assert poll.result().pages == PAGES
    assert store.pair(ACME, USERS).checkpoint.snapshot_done


async def test_an_unexpected_error_fails_the_poll_counted_as_internal_error_after_applying_what_committed() -> None:
    pipeline, source, sink, store = relay()
    source.failures[2] = ValueError("Forbidden control character in header value")
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    with pytest.raises(ValueError, match="Forbidden control character"):
        await asyncio.gather(poll, release_each_transaction(sink, poll))
    assert polls_counted(pipeline, "internal_error") == 1
    pair = store.pair(ACME, USERS)
    assert len(pair.entities) == 2 * PAGE_SIZE  # the two pages before it committed, and are remembered
    assert pair.checkpoint.in_progress is not None
    assert pair.checkpoint.in_progress.cursor == "c2"


@pytest.mark.parametrize(
    ("source_ms", "watermark_ms"),
    [
        (1_700_000_000_000 + 60_000, 1_700_000_000_000 + 60_000),  # a minute ahead: the source's clock is believed
        (253_402_300_799_000, 1_700_000_000_000),  # year 9999: a Date that cannot be true; the relay's own clock
        (0, 1_700_000_000_000),  # 1970, likewise
    ],
)
async def test_the_watermark_never_comes_from_a_date_header_that_cannot_be_true(
    source_ms: int, watermark_ms: int
) -> None:
    cfg = config_without_kafka(RELAY_INTEGRATIONS=ACME, RELAY_RESOURCES=USERS)
    metrics = Metrics(cfg.resources, registry=CollectorRegistry())
    source, sink, store = ScriptedSource(cfg, metrics), ScriptedTransactions(cfg, metrics), StateStore(1)
    source.next_cursor = lambda n: None
    source.source_time_ms = source_ms
    pipeline = Pipeline(cfg, source, sink, store, metrics, clock=lambda: 1_700_000_000.0)
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    await asyncio.gather(poll, release_each_transaction(sink, poll))
    assert store.pair(ACME, USERS).checkpoint.watermark_ms == watermark_ms


async def test_a_page_refused_as_too_large_stops_the_poll_before_any_later_page_commits() -> None:
    # While page 0 is still committing, page 1 is refused (a record over the limit) and the poll goes no further:
    # had page 2 been handed to the sink, it would have committed after page 0, its checkpoint past page 1, whose
    # events would then be lost for good.
    pipeline, source, sink, store = relay(RELAY_KAFKA_MAX_RECORD_BYTES="2048")
    source.oversized.add(1)
    poll = asyncio.create_task(pipeline.poll_once(ACME, USERS))
    with pytest.raises(RecordTooLarge):
        await asyncio.gather(poll, release_each_transaction(sink, poll))
    assert sink.pages == [["c1"]]  # page 0's transaction, and no other
    pair = store.pair(ACME, USERS)
    assert pair.entities.keys() == {f"u0-{i}" for i in range(PAGE_SIZE)}
    assert pair.checkpoint.in_progress is not None
    assert pair.checkpoint.in_progress.cursor == "c1"  # the next poll asks for page 1 again

"""Fuzz: generated HTTP responses from a real aiohttp server on 127.0.0.1, through the real SourceClient and the real
pipeline (diff, serialization, the sink's queue), into a hand-written fake of Kafka's side.

Property: every input ends either in a completed poll (its events are the ones the fake Kafka committed, memory holds
exactly what committed, the checkpoint completed) or in a classified RelayError (not ``internal_error``), counted in
``relay_polls_total`` by its verdict, with memory exactly as of the last committed page. Nothing else escapes, no
wait is longer than the backoff ceiling, and no metric label is taken from the response.

A generated response spans 1 to 3 pages: the server picks the page by the ``cursor`` it is asked for, and answers an
unknown cursor the way Kombo does (400 ``PLATFORM.INPUT_INVALID``). Each page may answer differently on a retry.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from relay.config import Config
from relay.errors import RelayError
from relay.metrics import Metrics
from relay.pipeline import Pipeline, PollOutcome
from relay.sink import KafkaSink, OutMessage
from relay.source import KOMBO_ERROR_CODES, OTHER_CODE, RELAY_ERROR_CODES, SourceClient
from relay.state import Checkpoint, InProgress, StateStore
from relay.verdicts import VERDICTS, verdict_on
from tests.fuzz.tally import FUZZ, tally
from tests.unit.support import RecordingSleep, config_without_kafka

ACME = "acme"
USERS = "ats/users"
PAGE_SIZE = 5
BACKOFF_MAX = 0.01
RESUME_CURSOR = "resume-at-page-1"
SEED_IDS = ("u1", "u2", "u3", "u4")
SEED_DATE = "Mon, 01 Jan 2024 00:00:00 GMT"
KNOWN_OUTCOMES = {verdict.outcome for _, verdict in VERDICTS} | {"success", "cursor_rejected"}
STATUS_CLASSES = {f"{digit}xx" for digit in range(1, 10)} | {"error"}
TALLY = tally("source")


# --- The server: serves whatever the current example scripted ----------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass
class Script:
    """The responses of one example: by the cursor asked for, one per attempt (the last one repeats)."""

    pages: dict[str | None, list[Reply]] = field(default_factory=dict)
    requests: list[str | None] = field(default_factory=list)

    def reply_to(self, cursor: str | None) -> Reply:
        attempt = self.requests.count(cursor)
        self.requests.append(cursor)
        replies = self.pages.get(cursor)
        if not replies:
            error = {"status": "error", "error": {"code": "PLATFORM.INPUT_INVALID", "title": "unknown cursor"}}
            return Reply(400, (("Content-Type", "application/json"),), orjson.dumps(error))
        return replies[min(attempt, len(replies) - 1)]


@dataclass
class Server:
    loop: asyncio.AbstractEventLoop
    url: str
    script: Script = field(default_factory=Script)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One real aiohttp server for the module, on its own event loop (every example runs on that loop)."""
    loop = asyncio.new_event_loop()
    holder: dict[str, Server] = {}

    async def handle(request: web.Request) -> web.Response:
        reply = holder["server"].script.reply_to(request.query.get("cursor"))
        response = web.Response(status=reply.status, body=reply.body or None)
        for name, value in reply.headers:
            response.headers[name] = value
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    holder["server"] = Server(loop, f"http://127.0.0.1:{runner.addresses[0][1]}/v1")
    try:
        yield holder["server"]
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# --- The fake Kafka side -------------------------------------------------------------------------------------------


class RecordingSink(KafkaSink):
    """Commits every transaction at once and records it, with how many cursor rejections the poll had seen by then."""

    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        super().__init__(cfg, metrics)
        self.transactions: list[tuple[list[OutMessage], float]] = []

    async def _producer_or_start(self) -> Any:
        return object()

    async def _transaction(self, producer: Any, messages: Sequence[OutMessage]) -> None:
        self.transactions.append((list(messages), polls_with_outcome(self._metrics, "cursor_rejected")))

    async def _discard_producer(self, *, abort: bool, timeout: float = 10.0) -> None:
        pass


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def polls_with_outcome(metrics: Metrics, outcome: str) -> float:
    return sum(
        value for labels, value in samples(metrics, "relay_polls_total").items() if ("outcome", outcome) in labels
    )


# --- Generated responses -------------------------------------------------------------------------------------------

printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
header_text = st.text(printable, max_size=40)
numbers_as_text = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "-1",
            "-0",
            "0.5",
            "nan",
            "NaN",
            "-nan",
            "inf",
            "-inf",
            "Infinity",
            "1e400",
            "-1e400",
            "1e308",
            "99999999999999999999999999",
            "1000000000",
            "1000000001",
            "1700000000",
            "4102444800",
            "253402300800",
            "abc",
            "",
            " 3 ",
            "0x10",
            "1_000",
            "3 ",
            "+5",
            "1e-400",
            "5, 6",
        ]
    ),
    st.integers().map(str),
    st.floats().map(str),
)
http_dates = st.one_of(
    st.sampled_from(
        [
            SEED_DATE,
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Mon, 01 Jan 99999 00:00:00 GMT",
            "Tue, 32 Jan 2024 00:00:00 GMT",
            "Tue, 01 Jan 2024 25:61:61 GMT",
            "Tue, 01 Jan 2024 00:00:00 +9999",
            "garbage",
            "",
        ]
    ),
    st.datetimes(timezones=st.just(UTC)).map(lambda when: when.strftime("%a, %d %b %Y %H:%M:%S GMT")),
)
header_values = {
    "Retry-After": st.one_of(numbers_as_text, http_dates, header_text),
    "ratelimit-limit": st.one_of(numbers_as_text, header_text),
    "ratelimit-remaining": st.one_of(numbers_as_text, header_text),
    "ratelimit-reset": st.one_of(numbers_as_text, header_text),
    "Content-Type": st.sampled_from(["application/json", "text/html", "application/json; charset=latin-1", "x/y"]),
    "Date": http_dates,
    "Location": st.one_of(
        st.sampled_from(
            [
                "http://evil.example/steal",
                "//other.example/v1",
                "/v1/ats/users?cursor=x",
                "https://user:pw@h:1/",
                "::::",
            ]
        ),
        header_text,
    ),
}


@st.composite
def headers(draw: st.DrawFn) -> tuple[tuple[str, str], ...]:
    names = draw(st.lists(st.sampled_from(sorted(header_values)), unique=True, max_size=len(header_values)))
    return tuple((name, draw(header_values[name])) for name in names)


def json_values(max_leaves: int = 5) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -(10**40)]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
        max_leaves=max_leaves,
    )


valid_timestamps = st.one_of(
    st.sampled_from(
        [
            "2024-01-01T00:00:00.000Z",
            "2024-02-29T12:34:56Z",
            "2024-01-01T00:00:00+02:00",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "0001-01-01T00:00:00Z",
            "2024-06-01T12:00:00.123456Z",
        ]
    ),
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
)
invalid_timestamps = st.one_of(
    st.sampled_from(["", "yesterday", "2024-13-01T00:00:00Z", "2024-01-01", "2024-01-01T00:00:00", "0", "Z"]),
    st.text(max_size=30),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
entity_ids = st.one_of(
    st.sampled_from(SEED_IDS),
    st.text(min_size=1, max_size=12),  # odd unicode included
    st.sampled_from(["", " ", "\u0000", "\u202e", "a:b", '["e"]', "🦄" * 10, "x" * 300]),
    st.integers(),
    st.none(),
)


@st.composite
def records(draw: st.DrawFn) -> Any:
    shape = draw(st.integers(0, 149))  # 0 to 3: broken, 4: an odd id; else valid
    if shape == 0:  # not an object at all
        return draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.none()))
    record: dict[str, Any] = {}
    if shape != 1:
        record["id"] = draw(entity_ids) if shape == 4 else draw(st.sampled_from(SEED_IDS) | st.text(min_size=1))
    if shape != 2:
        record["changed_at"] = draw(invalid_timestamps) if shape == 3 else draw(valid_timestamps)
    deleted = draw(st.integers(0, 39))
    if deleted < 5:
        record["remote_deleted_at"] = draw(valid_timestamps)
    elif deleted == 5 and shape < 20:
        record["remote_deleted_at"] = draw(invalid_timestamps)
    elif deleted < 10:
        record["remote_deleted_at"] = None
    record.update(draw(st.dictionaries(st.text(max_size=10), json_values(), max_size=3)))
    return record


DEEP = "__deep__"
ERROR_STATUSES = [400, 401, 403, 404, 405, 408, 409, 410, 422, 429, 500, 501, 502, 503, 504]


@st.composite
def page_reply(draw: st.DrawFn, next_cursor: str | None) -> Reply:
    """One answer to a page request: mostly a success envelope, else broken in one of many ways."""
    oversize = draw(st.integers(0, 19)) == 0  # one more record than page_size asked for
    page_records = draw(st.lists(records(), min_size=PAGE_SIZE + 1 if oversize else 0, max_size=PAGE_SIZE + oversize))
    document: Any = {"status": "success", "data": {"next": next_cursor, "results": page_records}}
    kind = draw(
        st.sampled_from(["ok"] * 8 + ["wrong_type", "truncated", "deep", "duplicate", "empty", "bytes", "error"])
    )
    body_kind = kind
    if kind == "wrong_type":
        level = draw(st.sampled_from(["document", "status", "data", "results", "next", "record"]))
        wrong = draw(st.one_of(json_values(3), st.sampled_from([None, "", 0, [], {}, "error", "SUCCESS"])))
        if level == "document":
            document = wrong
        elif level == "status":
            document["status"] = wrong
        elif level == "data":
            document["data"] = wrong
        elif level == "results":
            document["data"]["results"] = wrong
        elif level == "next":
            document["data"]["next"] = draw(st.one_of(st.just(wrong), st.just("c" * 5000), st.just("")))
        else:
            document["data"]["results"] = [*page_records, wrong]
    if kind == "deep" and draw(st.booleans()):
        document["data"]["results"] = [*page_records, {"id": "deep", "changed_at": "2024-01-01T00:00:00Z", "x": DEEP}]
    if kind == "error":
        error: dict[str, Any] = {
            "code": draw(st.one_of(st.sampled_from(sorted(KOMBO_ERROR_CODES)), st.text(max_size=150), json_values(2))),
            "title": draw(st.one_of(st.text(max_size=30), json_values(2))),
        }
        if draw(st.booleans()):
            error["message"] = draw(st.text(max_size=600))
        if draw(st.booleans()):
            error["log_url"] = draw(st.one_of(st.text(max_size=30), st.just("https://x/" + "y" * 3000)))
        document = {"status": "error", "error": error if draw(st.integers(0, 5)) else draw(json_values(2))}
    body = json.dumps(document, ensure_ascii=draw(st.booleans())).encode()
    if body_kind == "truncated":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif body_kind == "deep":
        depth = draw(st.sampled_from([1000, 1022, 1023, 1024, 1025, 1100, 5000]))
        nested = ("[" * depth + "]" * depth).encode()
        body = body.replace(f'"{DEEP}"'.encode(), nested) if DEEP in body.decode() else nested
    elif body_kind == "duplicate":
        body = draw(
            st.sampled_from(
                [
                    body.replace(b'{"status": "success"', b'{"status": "error", "status": "success"', 1),
                    body.replace(b'{"status": "success"', b'{"status": "success", "status": "error"', 1),
                    body.replace(b'"results": ', b'"results": 7, "results": ', 1),
                    body.replace(b'"next": ', b'"next": "elsewhere", "next": ', 1),
                    body.replace(b'{"id": ', b'{"id": "dup", "id": ', 1),
                    body.replace(b'"changed_at": ', b'"changed_at": "not a time", "changed_at": ', 1),
                ]
            )
        )
    elif body_kind == "empty":
        body = b""
    elif body_kind == "bytes":
        body = draw(
            st.one_of(
                st.binary(max_size=200),
                st.just(body.replace(b"success", b"succ\xffss", 1)),
                st.just(body.replace(b'"id": "', b'"id": "\xc3\x28', 1)),
                st.just(b"\xef\xbb\xbf" + body),  # a byte order mark
                st.just(body.decode().encode("utf-16")),
            )
        )
    if kind == "error":
        status = draw(st.one_of(st.sampled_from(ERROR_STATUSES), st.integers(200, 599)))
    elif kind == "ok":
        status = draw(st.sampled_from([200] * 20 + [201, 203, 299, 301, 302, 303, 307, 308, 429, 503]))
    else:
        status = draw(st.sampled_from([200, 200, 200, 0])) or draw(st.integers(200, 999))
    if status in (204, 304) or 100 <= status < 200:
        body = b""
    return Reply(status, draw(headers()), body)


@st.composite
def scripts(draw: st.DrawFn, first_cursor: str | None) -> Script:
    """1 to 3 pages; page i is served at cursor i; the last page's next is null, a loop, or a cursor no one serves."""
    count = draw(st.integers(1, 3))
    later = draw(
        st.lists(st.text(min_size=1, max_size=12), min_size=count - 1, max_size=count - 1, unique=True).filter(
            lambda cursors: first_cursor not in cursors
        )
    )
    keys: list[str | None] = [first_cursor, *later]
    script = Script()
    for number, key in enumerate(keys):
        if number + 1 < count:
            next_cursor = keys[number + 1]
        else:
            used = [k for k in keys if k is not None]
            next_cursor = draw(
                st.sampled_from([None, None, None, "nowhere", *used]) if used else st.sampled_from([None, "nowhere"])
            )
        script.pages[key] = draw(st.lists(page_reply(next_cursor), min_size=1, max_size=2))
    return script


# --- One example ---------------------------------------------------------------------------------------------------


@dataclass
class Example:
    pipeline: Pipeline
    sink: RecordingSink
    store: StateStore
    sleep: RecordingSleep


def relay(server: Server, *, reconcile: bool, max_pages: int) -> Example:
    cfg = config_without_kafka(
        RELAY_INTEGRATIONS=ACME,
        RELAY_RESOURCES=USERS,
        RELAY_SOURCE_URL=server.url,
        RELAY_PAGE_SIZE=str(PAGE_SIZE),
        RELAY_SOURCE_MAX_RETRIES="1",
        RELAY_SOURCE_BACKOFF_INITIAL_SECONDS="0.001",
        RELAY_SOURCE_BACKOFF_MAX_SECONDS=str(BACKOFF_MAX),
        RELAY_SOURCE_READ_TIMEOUT_SECONDS="10",
        RELAY_SOURCE_REQUEST_TIMEOUT_SECONDS="10",
        RELAY_SOURCE_MAX_RESPONSE_BYTES="65536",
        RELAY_RECONCILE_INTERVAL_SECONDS="1" if reconcile else "0",
        RELAY_MAX_PAGES_PER_POLL=str(max_pages),
        RELAY_KAFKA_MAX_RECORD_BYTES="4096",
    )
    metrics = Metrics(cfg.resources, registry=CollectorRegistry())
    sleep = RecordingSleep()
    source = SourceClient(cfg, metrics, sleep=sleep)
    store = StateStore(1)
    sink = RecordingSink(cfg, metrics)
    return Example(Pipeline(cfg, source, sink, store, metrics), sink, store, sleep)


async def seed(example: Example, server: Server) -> None:
    """A first poll that succeeds, so that the fuzzed one is incremental or a reconciliation of remembered state."""
    page = {"status": "success", "data": {"next": None, "results": [seed_record(i) for i in SEED_IDS]}}
    server.script = Script({None: [Reply(200, (("Date", SEED_DATE),), orjson.dumps(page))]})
    await example.pipeline.poll_once(ACME, USERS)
    assert len(example.store.pair(ACME, USERS).entities) == len(SEED_IDS)
    example.sink.transactions.clear()


def seed_record(entity_id: str) -> dict[str, Any]:
    return {"id": entity_id, "changed_at": "2023-12-31T00:00:00Z", "remote_deleted_at": None, "name": entity_id}


def replayed(
    prior_entities: dict[str, bytes], prior: Checkpoint, transactions: list[tuple[list[OutMessage], float]], topic: str
) -> tuple[dict[str, bytes], Checkpoint | None, float]:
    """Memory as rebuilt from what Kafka committed: the entities, the last committed checkpoint (None if no
    transaction carried one) and the cursor rejections counted when it committed."""
    entities = dict(prior_entities)
    checkpoint: Checkpoint | None = None
    rejections_then = 0.0
    for messages, rejections in transactions:
        for message in messages:
            if message.topic != topic:
                continue
            assert message.value is not None
            key = orjson.loads(message.key)
            assert key[1:3] == [ACME, USERS]
            if key[0] == "e":
                entities[key[3]] = message.value[1:]
            elif key[0] == "c":
                checkpoint, rejections_then = Checkpoint.from_json(message.value), rejections
    return entities, checkpoint, rejections_then


async def run_example(server: Server, data: st.DataObject) -> str:
    start = data.draw(st.sampled_from(["snapshot", "incremental", "reconcile", "resume"]), label="prior state")
    max_pages = data.draw(st.sampled_from([100, 100, 100, 2]), label="RELAY_MAX_PAGES_PER_POLL")
    example = relay(server, reconcile=start == "reconcile", max_pages=max_pages)
    pipeline, store, _sink = example.pipeline, example.store, example.sink
    try:
        if start in ("incremental", "reconcile"):
            await seed(example, server)
        if start == "resume":
            in_progress = InProgress("snapshot", RESUME_CURSOR, None, 1_700_000_000_000, 1)
            store.set_checkpoint(ACME, USERS, Checkpoint(in_progress=in_progress))
        pair = store.pair(ACME, USERS)
        prior_entities, prior = dict(pair.entities), pair.checkpoint
        polls_before = samples(pipeline.metrics, "relay_polls_total")
        server.script = data.draw(scripts(RESUME_CURSOR if start == "resume" else None), label="script")
        published: list[int] = []
        try:
            async with asyncio.timeout(30):
                outcome: PollOutcome | RelayError = await pipeline.poll_once(ACME, USERS, published.append)
        except RelayError as error:
            outcome = error
        return check(example, outcome, prior_entities, prior, polls_before, published, server.script)
    finally:
        await pipeline.source.close()


def check(
    example: Example,
    outcome: PollOutcome | RelayError,
    prior_entities: dict[str, bytes],
    prior: Checkpoint,
    polls_before: dict[tuple[tuple[str, str], ...], float],
    published: list[int],
    script: Script,
) -> str:
    pipeline, store, sink = example.pipeline, example.store, example.sink
    cfg, metrics = pipeline.config, pipeline.metrics
    pair = store.pair(ACME, USERS)
    entities, committed, rejections_then = replayed(prior_entities, prior, sink.transactions, cfg.state_topic)
    events = [m for messages, _ in sink.transactions for m in messages if m.topic != cfg.state_topic]
    assert {m.topic for m in events} <= set(cfg.event_topics())
    assert all(m.value is not None for m in events)  # no tombstones unless asked for
    # Memory never holds an entity Kafka does not, nor misses one it does: the exactly-once invariant.
    assert pair.entities == entities
    assert len(events) == sum(published)
    polls = {
        dict(labels)["outcome"]: value - polls_before.get(labels, 0.0)
        for labels, value in samples(metrics, "relay_polls_total").items()
        if value != polls_before.get(labels, 0.0)
    }
    rejected = polls.pop("cursor_rejected", 0.0)
    assert rejected in (0.0, 1.0)
    if isinstance(outcome, PollOutcome):
        end = "committed"
        assert polls == {"success": 1.0}
        assert outcome.events == len(events)
        assert not outcome.interrupted
        checkpoint = pair.checkpoint
        assert checkpoint.snapshot_done
        assert checkpoint.in_progress is None
        assert checkpoint.watermark_ms is not None
        if outcome.kind != "incremental" or (committed is not None and committed.in_progress is None):
            assert checkpoint == committed  # the last page committed the completed checkpoint
        # Else an incremental poll's pages that changed nothing needed no transaction: the completed checkpoint waits
        # in memory for the pair's next one (relay.pages.CHECKPOINT_DEFER_SECONDS).
    else:
        verdict = verdict_on(outcome)
        end = f"{verdict.outcome}:{getattr(outcome, 'code', type(outcome).__name__)}"
        assert verdict.outcome != "internal_error", outcome
        assert polls == {verdict.outcome: 1.0}
        expected = prior if committed is None else committed
        if rejected and rejections_then == 0.0:  # the rejected cursor is forgotten: the poll restarted without it
            expected = replace(expected, in_progress=None)
        checkpoint = pair.checkpoint
        if checkpoint != expected:
            # An incremental page that changed nothing needs no transaction: memory's checkpoint may be ahead of
            # Kafka's, by a next cursor a page of this poll handed out (and the poll asked for), and nothing else.
            assert pipeline.next_kind(prior) == "incremental", (checkpoint, expected)
            assert checkpoint.in_progress is not None
            assert checkpoint.in_progress.cursor in script.requests
            assert replace(checkpoint, in_progress=None) == replace(expected, in_progress=None)
    check_labels(metrics)
    assert all(math.isfinite(wait) and 0 <= wait <= BACKOFF_MAX for wait in example.sleep.waits), example.sleep.waits
    return end


def check_labels(metrics: Metrics) -> None:
    """Every label value is from a fixed set: none is taken from the response."""
    codes = KOMBO_ERROR_CODES | RELAY_ERROR_CODES | {OTHER_CODE, ""} | {f"RELAY.HTTP_{s}" for s in range(100, 1000)}
    for name in ("relay_source_requests_total", "relay_source_retries_total"):
        for labels in samples(metrics, name):
            values = dict(labels)
            assert values["resource"] == USERS
            assert values["code"] in codes, values
            assert values.get("status_class", "error") in STATUS_CLASSES, values
    for labels in samples(metrics, "relay_polls_total"):
        assert dict(labels)["outcome"] in KNOWN_OUTCOMES, labels


@FUZZ
@given(data=st.data())
def test_every_response_ends_in_a_committed_page_or_a_classified_error_with_nothing_advanced(
    server: Server, data: st.DataObject
) -> None:
    end = server.loop.run_until_complete(run_example(server, data))
    TALLY.count(end.partition(":")[0])

"""Per-record cost (target 6): the relay's per-record path, stage by stage, in microseconds per record.

Pages are fetched once from the simulator (a subprocess) as raw bodies; then, in this process, each stage runs over
all of them with the relay's own code, timed on its own:

* ``parse``: JSON decoding of the body and validation of every record (``SourceClient._parse_page``);
* ``fingerprint``: content hash, field hashes, fingerprint, remembered in a delta (``diff_page`` of a snapshot
  with ``emit_snapshot=False``: everything but the events);
* ``diff``: the rest of ``diff_page`` for a snapshot that emits: the ``Change`` and its deterministic event id;
* ``serialize``: the CloudEvents message (``to_kafka_message``) and the state-topic records (``records_for``);
* ``produce``: ``KafkaSink.commit`` of each page's messages to the real broker, with up to ``MAX_PAGES_IN_FLIGHT``
  pages in flight as the pipeline sends them, so that the sink groups them into transactions as in a snapshot; this
  process's CPU time in it, and ``produce (wall)`` (the rest of which is waiting for the broker);
* ``noop re-fetch``: ``diff_page`` of records identical to those remembered (the overlap of incremental polls).

Every stage is CPU time of this process (``time.process_time``), not wall time: the simulator and the broker share the
machine's cores, and wall time counts their turns too; ``produce (wall)`` is the one wall-clock figure.

The two floors of issue 19, measured in every run with the same data:

* ``fetch-only``: a bare aiohttp session pages the simulator and decodes each body with ``orjson.loads``, nothing
  else (CPU of this process; the simulator is another process);
* ``produce-only``: a bare transactional aiokafka producer with the relay's producer settings sends the very messages
  the relay's code made of those pages, grouped into transactions as the relay's sink groups them
  (:func:`tests.benchmarks.bench_snapshot.produce_only`); CPU of this process while it sends.

Against them, the relay's own code over the same data: ``relay fetch`` (``SourceClient.fetch_page`` paging the
simulator: request, decode, validate), then the stages above. ``snapshot`` is relay fetch + fingerprint + diff +
serialize + produce (CPU), the CPU per record of a snapshot; ``re-fetch`` is relay fetch + noop re-fetch, the CPU per
record of records fetched again unchanged. The targets: snapshot <= 1.5 x (fetch-only + produce-only), re-fetch <= 1.5
x fetch-only, each ratio taken within a run and the median reported.

A ``cProfile`` of the whole path (one pass) lists the functions where the time goes.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from relay import diff
from relay.config import load_config
from relay.events import to_kafka_message
from relay.metrics import Metrics
from relay.pipeline import MAX_PAGES_IN_FLIGHT
from relay.sink import KafkaSink, OutMessage
from relay.source import Page, SourceClient
from relay.state import Checkpoint, StateStore
from tests.benchmarks.bench_snapshot import OutTuple, fetch_pages, produce_only
from tests.benchmarks.support import API_KEY, RESOURCE, SimulatorProcess, broker, log, median
from tests.unit.support import apply_result

INTEGRATION = "bench:profile"
STAGES = ("parse", "fingerprint", "diff", "serialize", "produce")
# CPU per record: the relay's snapshot and re-fetch against the floors of issue 19 (see the module docstring).
CPU_FIGURES = ("relay fetch", "snapshot", "re-fetch", "fetch-only", "produce-only")
SNAPSHOT_TARGET = 1.5  # snapshot <= 1.5 x (fetch-only + produce-only)
REFETCH_TARGET = 1.5  # re-fetch of unchanged records <= 1.5 x fetch-only


async def _bodies(url: str) -> list[tuple[bytes, CIMultiDictProxy[str]]]:
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Integration-Id": INTEGRATION}
    bodies = []
    async with aiohttp.ClientSession(headers=headers) as session:
        cursor = None
        while True:
            params = {"page_size": "250", "include_deleted": "true", **({"cursor": cursor} if cursor else {})}
            async with session.get(f"{url}/{RESOURCE}", params=params) as response:
                body = await response.read()
                bodies.append((body, response.headers))
            cursor = orjson.loads(body)["data"]["next"]
            if cursor is None:
                return bodies


def _pass(
    source: SourceClient, bodies: list[tuple[bytes, Any]], config: Any, prefix: str
) -> tuple[dict[str, float], list[list[OutMessage]], int, StateStore]:
    """One timed pass of every stage but produce; returns seconds per stage, the messages, records, the state."""
    seconds = dict.fromkeys(STAGES, 0.0)
    seconds["noop re-fetch"] = 0.0
    clock = time.process_time
    started = clock()
    pages: list[Page] = [
        source._parse_page(body, headers, INTEGRATION, RESOURCE, i) for i, (body, headers) in enumerate(bodies)
    ]
    seconds["parse"] = clock() - started
    records = sum(len(p.records) for p in pages)

    silent = StateStore(6).pair(INTEGRATION, RESOURCE)
    started = clock()
    for page in pages:
        result = diff.diff_page(
            silent.entities,
            silent.shapes,
            page.records,
            integration=INTEGRATION,
            resource=RESOURCE,
            snapshot=True,
            emit_snapshot=False,
        )
        apply_result(silent.entities, silent.shapes, result)
    seconds["fingerprint"] = clock() - started

    store = StateStore(6)
    pair = store.pair(INTEGRATION, RESOURCE)
    topic = config.topic_for(RESOURCE, "created")
    out: list[list[OutMessage]] = []
    for page in pages:
        started = clock()
        result = diff.diff_page(
            pair.entities, pair.shapes, page.records, integration=INTEGRATION, resource=RESOURCE, snapshot=True
        )
        middle = clock()
        messages = []
        for change in result.changes:
            message = to_kafka_message(change, integration=INTEGRATION, resource=RESOURCE, detected_at_ms=0)
            messages.append(OutMessage(topic, message.key, message.value, message.headers))
        messages.extend(
            OutMessage(config.state_topic, r.key, r.value, partition=r.partition)
            for r in store.records_for(
                INTEGRATION, RESOURCE, delta=result.delta, new_shapes=result.new_shapes, checkpoint=Checkpoint()
            )
        )
        done = clock()
        store.apply(INTEGRATION, RESOURCE, delta=result.delta, new_shapes=result.new_shapes, checkpoint=None)
        seconds["diff"] += middle - started
        seconds["serialize"] += done - middle
        out.append(messages)
    seconds["diff"] = max(0.0, seconds["diff"] - seconds["fingerprint"])

    started = clock()
    for page in pages:
        diff.diff_page(
            pair.entities, pair.shapes, page.records, integration=INTEGRATION, resource=RESOURCE, snapshot=False
        )
    seconds["noop re-fetch"] = clock() - started
    return seconds, out, records, store


async def run(users: int, runs: int, kafka_port: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    per_run: list[dict[str, float]] = []
    profile_text = ""
    with broker(kafka_port) as kafka:
        sim = SimulatorProcess([INTEGRATION], users=users, name="simulator-profile")
        try:
            await sim.wait_serving()
            bodies = await _bodies(sim.url)
            for r in range(runs + 1):  # the first pass warms up (and is the one profiled)
                prefix = f"prof{tag}r{r}"
                config = load_config(
                    None,
                    {
                        "RELAY_API_KEY": API_KEY,
                        "RELAY_SOURCE_URL": sim.url,
                        "RELAY_INTEGRATIONS": INTEGRATION,
                        "RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                        "RELAY_TOPIC_PREFIX": prefix,
                    },
                )
                metrics = Metrics([RESOURCE])
                source = SourceClient(config, metrics)
                sink = KafkaSink(config, metrics)
                await sink.ensure_topics()
                await sink.start()
                try:
                    floors = {"fetch-only": await _fetch_only_cpu(sim.url)}
                    profiler = cProfile.Profile() if r == 0 else None
                    if profiler is not None:
                        profiler.enable()
                    seconds = {"relay fetch": await _relay_fetch_cpu(source)}
                    stages, pages, records, _ = _pass(source, bodies, config, prefix)
                    seconds.update(stages)
                    started, cpu_started = time.perf_counter(), time.process_time()
                    await _commit_as_the_pipeline_does(sink, pages)
                    seconds["produce (wall)"] = time.perf_counter() - started
                    seconds["produce"] = time.process_time() - cpu_started
                    if profiler is not None:
                        profiler.disable()
                        stream = io.StringIO()
                        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
                        profile_text = _trim_profile(stream.getvalue())
                    floors["produce-only"] = await _produce_only_cpu(kafka.bootstrap_servers, pages, config, tag, r)
                finally:
                    await sink.stop()
                    await source.close()
                if r == 0:
                    continue
                us = {stage: s / records * 1e6 for stage, s in seconds.items()}
                us.update({name: s / records * 1e6 for name, s in floors.items()})
                us["snapshot"] = us["relay fetch"] + us["fingerprint"] + us["diff"] + us["serialize"] + us["produce"]
                us["re-fetch"] = us["relay fetch"] + us["noop re-fetch"]
                us["snapshot / floor"] = us["snapshot"] / (us["fetch-only"] + us["produce-only"])
                us["re-fetch / floor"] = us["re-fetch"] / us["fetch-only"]
                per_run.append(us)
                figures = ", ".join(f"{name} {value:.2f}" for name, value in us.items())
                log(f"profile run {r}: {figures} us/record (ratios: times)")
        finally:
            sim.stop()
    figures = {name: median(run[name] for run in per_run) for name in per_run[0]}
    ratios = {name: figures.pop(name) for name in ("snapshot / floor", "re-fetch / floor")}
    return {
        "users": users,
        "runs": runs,
        "records": records,
        "us_per_record": {name: figures[name] for name in (*STAGES, "produce (wall)", "noop re-fetch")},
        "total_us_per_record": sum(figures[s] for s in STAGES),
        "cpu_us_per_record": {name: figures[name] for name in CPU_FIGURES},
        "ratios": ratios,
        "targets": {"snapshot / floor": SNAPSHOT_TARGET, "re-fetch / floor": REFETCH_TARGET},
        "profile": profile_text,
    }


async def _fetch_only_cpu(url: str) -> float:
    """CPU seconds of this process to page the simulator with bare aiohttp + orjson (the fetch-only floor)."""
    started = time.process_time()
    await fetch_pages(url, INTEGRATION)
    return time.process_time() - started


async def _relay_fetch_cpu(source: SourceClient) -> float:
    """CPU seconds of this process to page the simulator with the relay's SourceClient (request, decode, validate)."""
    started = time.process_time()
    cursor, number = None, 0
    while True:
        page = await source.fetch_page(INTEGRATION, RESOURCE, updated_after=None, cursor=cursor, page_number=number)
        cursor, number = page.next_cursor, number + 1
        if cursor is None:
            return time.process_time() - started


async def _produce_only_cpu(
    bootstrap_servers: str, pages: list[list[OutMessage]], config: Any, tag: str, run: int
) -> float:
    """CPU seconds of this process for a bare transactional producer with the relay's settings to send ``pages``."""
    events = config.topic_for(RESOURCE, "created")
    converted: list[list[OutTuple]] = [
        [(0 if m.topic == events else 1, m.partition, m.key, m.value or b"", m.headers) for m in page] for page in pages
    ]
    _, cpu = await produce_only(bootstrap_servers, converted, f"limit{tag}r{run}")
    return cpu


async def _commit_as_the_pipeline_does(sink: KafkaSink, pages: list[list[OutMessage]]) -> None:
    in_flight: deque[asyncio.Task[None]] = deque()
    for messages in pages:
        if len(in_flight) >= MAX_PAGES_IN_FLIGHT:
            await in_flight.popleft()
        in_flight.append(asyncio.create_task(sink.commit(messages)))
        await asyncio.sleep(0)
    for task in in_flight:
        await task


def _trim_profile(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return "\n".join(line.replace(str(Path.cwd()) + "/", "") for line in lines[start:] if line.strip())

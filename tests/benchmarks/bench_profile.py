"""Per-record cost (target 6): the relay's per-record path, stage by stage, in microseconds per record.

Pages are fetched once from the simulator (a subprocess) as raw bodies; then, in this process, each stage runs over
all of them with the relay's own code, timed on its own:

* ``parse``: JSON decoding of the body and validation of every record (``SourceClient._parse_page``);
* ``fingerprint``: content hash, field hashes, fingerprint, remembered in a delta (``diff_page`` of a snapshot
  with ``emit_snapshot=False``: everything but the events);
* ``diff``: the rest of ``diff_page`` for a snapshot that emits: the ``Change`` and its deterministic event id;
* ``serialize``: the CloudEvents message (``to_kafka_message``) and the state-topic records (``records_for``);
* ``produce``: ``KafkaSink.commit`` of each page's messages to the real broker, with up to ``MAX_PAGES_IN_FLIGHT``
  pages in flight as the pipeline sends them, so that the sink groups them into transactions as in a snapshot; wall
  time, and ``produce (CPU)``, this process's CPU time in it (the rest is waiting for the broker);
* ``noop re-fetch``: ``diff_page`` of records identical to those remembered (the overlap of incremental polls).

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
from tests.benchmarks.support import API_KEY, RESOURCE, SimulatorProcess, broker, log, median
from tests.unit.support import apply_result

INTEGRATION = "bench:profile"
STAGES = ("parse", "fingerprint", "diff", "serialize", "produce")


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
    clock = time.perf_counter
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
        finally:
            sim.stop()
        for r in range(runs + 1):  # the first pass warms up (and is the one profiled)
            prefix = f"prof{tag}r{r}"
            config = load_config(
                None,
                {
                    "RELAY_API_KEY": API_KEY,
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
                profiler = cProfile.Profile() if r == 0 else None
                if profiler is not None:
                    profiler.enable()
                seconds, pages, records, _ = _pass(source, bodies, config, prefix)
                started, cpu_started = time.perf_counter(), time.process_time()
                await _commit_as_the_pipeline_does(sink, pages)
                seconds["produce"] = time.perf_counter() - started
                seconds["produce (CPU)"] = time.process_time() - cpu_started
                if profiler is not None:
                    profiler.disable()
                    stream = io.StringIO()
                    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
                    profile_text = _trim_profile(stream.getvalue())
                else:
                    per_run.append({stage: s / records * 1e6 for stage, s in seconds.items()})
                    log(
                        "profile run "
                        + str(r)
                        + ": "
                        + ", ".join(f"{stage} {us:.1f}" for stage, us in per_run[-1].items())
                        + " us/record"
                    )
            finally:
                await sink.stop()
                await source.close()
    stages = {stage: median(run[stage] for run in per_run) for stage in per_run[0]}
    return {
        "users": users,
        "runs": runs,
        "records": records,
        "us_per_record": stages,
        "total_us_per_record": sum(stages[s] for s in STAGES),
        "profile": profile_text,
    }


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

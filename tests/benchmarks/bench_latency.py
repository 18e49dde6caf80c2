"""Incremental latency (target 2): from a change in the simulator to its event being readable by a
``read_committed`` consumer.

The simulator (a subprocess) holds N users and, once the relay's snapshot is done, changes 1% of them per minute
(its churn: creates, updates, nested-only changes, soft deletes, restores and hard deletes). The relay polls every
5 s. A ``read_committed`` consumer in this process notes when each event arrives. Afterwards the simulator's mutation
log says when each change happened; a change's latency is the arrival of the first event about that entity, of the
matching kind, after the change. Hard deletes are left out: they are announced by the (daily) reconciliation only.
A change without any event is *unmatched*; it is *explained* when the entity was deleted again before a poll could
see the change (see ``_explained``), and *unexplained* otherwise: a lost event, which must stay at 0.
Each run is one window of the same relay; p50 and p99 are medians over the windows.
"""

from __future__ import annotations

import asyncio
import bisect
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.timestamps import parse_timestamp_ms
from tests.benchmarks.support import (
    RESOURCE,
    RelayProcess,
    RelaySettings,
    SimulatorProcess,
    broker,
    log,
    median,
    percentile,
    wait_for,
)

INTEGRATION = "bench:latency"
POLL_INTERVAL = 5.0
EXPECTED_KIND = {
    "created": "created",
    "restored": "created",
    "updated": "updated",
    "nested_updated": "updated",
    "deleted": "deleted",
}


async def _consume(
    consumer: AIOKafkaConsumer, arrivals: dict[str, list[tuple[float, str]]], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=50)
        now = time.time()
        for records in batches.values():
            for record in records:
                if record.value is None:
                    continue
                event = orjson.loads(record.value)
                kind = event["type"].rsplit(".", 1)[1]
                arrivals.setdefault(event["subject"], []).append((now, kind))


async def _mutations(sim: SimulatorProcess, since: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = await sim.control("GET", f"mutations?since={since}&limit=10000")
        found.extend(page["mutations"])
        if not page["mutations"]:
            return found
        since = page["next_since"]


def _latencies(
    mutations: list[dict[str, Any]], arrivals: dict[str, list[tuple[float, str]]]
) -> tuple[list[float], list[dict[str, Any]]]:
    """The latency of each change that has an event, and the changes that have none."""
    latencies: list[float] = []
    unmatched: list[dict[str, Any]] = []
    for mutation in mutations:
        kind = EXPECTED_KIND.get(mutation["kind"])
        if kind is None or mutation["resource"] != RESOURCE:
            continue
        changed = _epoch(mutation["time"])
        seen = arrivals.get(mutation["id"], [])
        times = [t for t, _ in seen]
        index = bisect.bisect_left(times, changed)
        # The event of the matching kind; else any later event about the entity (two changes between two polls
        # give one event, of the kind of their sum: a create then an update is one ``created``).
        match = next((t for t, k in seen[index:] if k == kind), seen[index][0] if index < len(seen) else None)
        if match is None:
            unmatched.append(mutation)
        else:
            latencies.append(match - changed)
    return latencies, unmatched


def _explained(mutation: dict[str, Any], later: list[dict[str, Any]]) -> bool:
    """Whether a change legitimately has no event: its entity was deleted again before a poll could see the change.

    A record created (or restored) and soft-deleted between two polls is first seen deleted, which announces nothing
    (consumers never heard of it); a hard-deleted one is not seen at all until the daily reconciliation. "Between two
    polls" is taken as within two poll intervals; a change followed by a deletion later than that should have had
    its event, so it stays unexplained.
    """
    changed = _epoch(mutation["time"])
    for other in later:
        if other["id"] != mutation["id"] or other["resource"] != mutation["resource"]:
            continue
        if other["seq"] <= mutation["seq"] or _epoch(other["time"]) - changed > 2 * POLL_INTERVAL:
            continue
        if other["kind"] == "hard_deleted":
            return True
        if other["kind"] == "deleted" and mutation["kind"] in ("created", "restored"):
            return True
    return False


def _epoch(iso: str) -> float:
    return parse_timestamp_ms(iso) / 1000


async def run(users: int, windows: int, window_seconds: float, kafka_port: int) -> dict[str, Any]:
    churn = users * 0.01 / 60  # 1% of the users per minute
    tag = uuid.uuid4().hex[:6]
    with broker(kafka_port) as kafka:
        sim = SimulatorProcess([INTEGRATION], users=users, name="simulator-latency")
        relay: RelayProcess | None = None
        try:
            await sim.wait_serving()
            settings = RelaySettings(
                bootstrap_servers=kafka.bootstrap_servers,
                source_url=sim.url,
                integrations=[INTEGRATION],
                topic_prefix=f"lat{tag}",
                extra={"RELAY_POLL_INTERVAL_SECONDS": str(POLL_INTERVAL)},
            )
            relay = RelayProcess(settings, name="relay-latency")
            await relay.wait_ready()
            assert relay is not None
            ready_relay = relay

            async def snapshot_done() -> bool:
                metrics = await ready_relay.metrics()
                return metrics.sum("relay_polls_total", kind="snapshot", outcome="success") >= 1

            await wait_for(snapshot_done, 1800, "the snapshot")
            topic = f"lat{tag}.ats.users"
            consumer = AIOKafkaConsumer(
                bootstrap_servers=kafka.bootstrap_servers, isolation_level="read_committed", enable_auto_commit=False
            )
            await consumer.start()
            arrivals: dict[str, list[tuple[float, str]]] = {}
            stop = asyncio.Event()
            # Position the consumer at the end of the snapshot before the first change.
            partitions = await consumer._client._wait_on_metadata(topic)
            assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_end(*assigned)
            for tp in assigned:
                await consumer.position(tp)
            reader = asyncio.create_task(_consume(consumer, arrivals, stop))
            since = (await sim.control("GET", "state"))["mutations"]
            log(f"latency: churn {churn:.2f} changes/s on {users} users, poll interval {POLL_INTERVAL:g}s")
            await sim.control("PUT", "churn", {"rate": churn})
            results = []
            try:
                for window in range(windows):
                    await asyncio.sleep(window_seconds)
                    last = (await sim.control("GET", "state"))["mutations"]
                    # Give the last changes of the window time to arrive before reading them.
                    await asyncio.sleep(POLL_INTERVAL * 2 + 2)
                    logged = await _mutations(sim, since)  # also the changes after the window, for _explained
                    mutations = [m for m in logged if m["seq"] <= last]
                    latencies, unmatched = _latencies(mutations, arrivals)
                    unexplained = [m for m in unmatched if not _explained(m, logged)]
                    since = last
                    entry = {
                        "window": window,
                        "changes": len(latencies) + len(unmatched),
                        "matched": len(latencies),
                        "unmatched": len(unmatched),
                        "unexplained": len(unexplained),
                        "unexplained_changes": unexplained[:20],
                        "p50": percentile(latencies, 0.50),
                        "p90": percentile(latencies, 0.90),
                        "p99": percentile(latencies, 0.99),
                        "max": max(latencies) if latencies else float("nan"),
                        "histogram": _histogram(latencies),
                    }
                    results.append(entry)
                    log(
                        f"latency window {window}: {entry['matched']} changes, p50 {entry['p50']:.2f}s, "
                        f"p99 {entry['p99']:.2f}s, max {entry['max']:.2f}s, no event for {len(unmatched)} "
                        f"({len(unexplained)} unexplained: {unexplained[:3]})"
                    )
            finally:
                await sim.control("PUT", "churn", {"rate": 0})
                stop.set()
                await reader
                await consumer.stop()
        finally:
            if relay is not None:
                relay.stop()
            sim.stop()
    return {
        "users": users,
        "churn_per_second": churn,
        "poll_interval_seconds": POLL_INTERVAL,
        "window_seconds": window_seconds,
        "windows": results,
        "p50": median(w["p50"] for w in results),
        "p99": median(w["p99"] for w in results),
        "changes": sum(w["matched"] for w in results),
        "unmatched": sum(w["unmatched"] for w in results),
        "unexplained": sum(w["unexplained"] for w in results),
    }


def _histogram(latencies: list[float], width: float = 0.25) -> list[int]:
    """Counts per ``width``-second bucket, for the plot."""
    if not latencies:
        return []
    counts = [0] * (int(max(latencies) / width) + 1)
    for value in latencies:
        counts[int(value / width)] += 1
    return counts

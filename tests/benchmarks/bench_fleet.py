"""Fleet idle cost (target 4): many integrations, nothing changing, poll interval 10 s.

The simulator (a subprocess) serves M integrations of a few users each, without churn. The relay (a subprocess)
polls all of them (``ats/users``) every 10 s. Once every snapshot is done and one interval has passed, each run is
a window in which the relay's CPU time (``/proc/PID/stat``) and its own counters are read at both ends:

* CPU as a share of one core;
* source requests per poll, and polls per pair per interval (target: one request per pair and interval);
* Kafka transactions (``relay_kafka_transaction_duration_seconds_count``; target: none when nothing changed).

:func:`run_replicas` (run by the ``fleet-scale`` benchmark) polls one fleet of integrations with one replica and then
with several (``relay run`` processes of one consumer group, each polling the integrations of the state partitions
the group assigns it), on one broker and one simulator. Each replica count starts fresh (topics of its own); once
the group has settled, every pair's snapshot is done and one interval's worth of polls went by without a transaction,
each window reads, at both ends:

* every replica's CPU (their sum against one replica's: target within 10%);
* the simulator's own count of API requests (the id of its last request), and which integration each request was
  for (``/_sim/interactions``, read every few seconds, so each pair's requests are counted: none polled twice, none
  left out); target: one request per pair per interval;
* the replicas' transactions, and the end offsets (read_uncommitted) of the state, event and control topics, which
  any transaction, even an aborted one, moves: target, neither moves;
* the group: no rebalance, one generation, throughout.

An incremental poll that changed nothing defers its checkpoint for ``CHECKPOINT_DEFER_SECONDS`` (300 s): windows
longer in all than that would see each pair's deferred checkpoint committed, by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import Counter
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from tests.benchmarks.support import (
    RESOURCE,
    Metrics,
    RelayProcess,
    RelaySettings,
    SimulatorProcess,
    broker,
    cpu_seconds,
    fleet_settled,
    log,
    median,
    stop_all,
    topic_partitions,
    wait_for,
)

POLL_INTERVAL = 10.0
USERS_PER_INTEGRATION = 5
PARTITIONS = 6  # RELAY_STATE_TOPIC_PARTITIONS, the relay's default
JITTER = 0.1  # RELAY_POLL_JITTER_FRACTION, the relay's default
KEPT_INTERACTIONS = 1000  # the simulator keeps its last 1,000 API requests for /_sim/interactions
CPU_TOLERANCE = 0.10  # the replicas' CPU together within 10% of one replica's


async def _measure(relay: RelayProcess, pairs: int, window: float) -> dict[str, float]:
    before = await relay.metrics()
    cpu_before = relay.cpu_seconds()
    started = time.monotonic()
    await asyncio.sleep(window)
    after = await relay.metrics()
    elapsed = time.monotonic() - started
    cpu = relay.cpu_seconds() - cpu_before

    def delta(name: str, **labels: str) -> float:
        return after.sum(name, **labels) - before.sum(name, **labels)

    requests = delta("relay_source_requests_total")
    polls = delta("relay_polls_total", kind="incremental", outcome="success")
    failures = delta("relay_polls_total") - delta("relay_polls_total", outcome="success")
    return {
        "seconds": elapsed,
        "cpu_share": cpu / elapsed,
        "requests": requests,
        "polls": polls,
        "failed_polls": failures,
        "requests_per_poll": requests / polls if polls else float("nan"),
        "polls_per_pair_per_interval": polls / pairs / (elapsed / POLL_INTERVAL),
        "transactions": delta("relay_kafka_transaction_duration_seconds_count"),
        "rss_mb": relay.rss_bytes() / 2**20,
    }


async def run(fleet_sizes: list[int], windows: int, window_seconds: float, kafka_port: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    results = []
    with broker(kafka_port) as kafka:
        for size in fleet_sizes:
            integrations = [f"fleet:{i:05d}" for i in range(size)]
            sim = SimulatorProcess(integrations, users=USERS_PER_INTEGRATION, name=f"simulator-fleet{size}")
            relay: RelayProcess | None = None
            try:
                await sim.wait_serving()
                settings = RelaySettings(
                    bootstrap_servers=kafka.bootstrap_servers,
                    source_url=sim.url,
                    integrations=integrations,
                    topic_prefix=f"fleet{tag}m{size}",
                    extra={"RELAY_POLL_INTERVAL_SECONDS": str(POLL_INTERVAL)},
                )
                relay = RelayProcess(settings, name=f"relay-fleet{size}")
                await relay.wait_ready()

                async def snapshots_done(relay: RelayProcess = relay, size: int = size) -> bool:
                    metrics = await relay.metrics()
                    return metrics.sum("relay_polls_total", kind="snapshot", outcome="success") >= size

                await wait_for(snapshots_done, 1800, f"{size} snapshots", interval=2.0)
                log(f"fleet {size}: snapshots done; settling for one interval")
                await asyncio.sleep(POLL_INTERVAL * 1.2)
                measured = []
                for window in range(windows):
                    entry = await _measure(relay, size, window_seconds)
                    measured.append(entry)
                    log(
                        f"fleet {size} window {window}: CPU {entry['cpu_share']:.1%} of a core, "
                        f"{entry['requests_per_poll']:.3f} requests/poll, "
                        f"{entry['polls_per_pair_per_interval']:.3f} polls/pair/interval, "
                        f"{entry['transactions']:.0f} transactions"
                    )
                results.append(
                    {
                        "integrations": size,
                        "windows": measured,
                        "cpu_share": median(w["cpu_share"] for w in measured),
                        "requests_per_poll": median(w["requests_per_poll"] for w in measured),
                        "polls_per_pair_per_interval": median(w["polls_per_pair_per_interval"] for w in measured),
                        "transactions_per_window": median(w["transactions"] for w in measured),
                        "failed_polls": sum(w["failed_polls"] for w in measured),
                        "rss_mb": median(w["rss_mb"] for w in measured),
                    }
                )
            finally:
                if relay is not None:
                    relay.stop()
                sim.stop()
    return {
        "poll_interval_seconds": POLL_INTERVAL,
        "users_per_integration": USERS_PER_INTEGRATION,
        "window_seconds": window_seconds,
        "fleets": results,
    }


# ------------------------------------------------------------------------------------------ over replicas


class RequestLog:
    """The simulator's API requests during a window, by integration, from ``/_sim/interactions``: read often enough
    that none of its last 1,000 falls out between two reads (checked: requests whose id was never seen are counted)."""

    def __init__(self, sim: SimulatorProcess, requests_per_second: float) -> None:
        self._sim = sim
        self._period = max(0.2, min(2.0, 0.3 * KEPT_INTERACTIONS / max(requests_per_second, 1.0)))
        self._seen: dict[int, str | None] = {}
        self._since = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def last_id(self) -> int:
        recent = (await self._sim.control("GET", "interactions?limit=1"))["interactions"]
        return int(recent[-1]["id"]) if recent else 0

    async def _read(self) -> None:
        recent = (await self._sim.control("GET", f"interactions?limit={KEPT_INTERACTIONS}"))["interactions"]
        for item in recent:
            if item["id"] > self._since and item["path"].endswith(RESOURCE):
                self._seen[int(item["id"])] = item["integration"]

    async def _follow(self) -> None:
        while not self._stop.is_set():
            await self._read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._period)

    async def start(self) -> int:
        self._since = await self.last_id()
        self._seen = {}
        self._stop.clear()
        self._task = asyncio.create_task(self._follow())
        return self._since

    async def stop(self) -> tuple[int, dict[str, int], int]:
        """(requests since :meth:`start`, requests per integration, requests not seen)."""
        until = await self.last_id()
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._read()
        ids = [i for i in self._seen if i <= until]
        per_integration = Counter(self._seen[i] or "?" for i in ids)
        return until - self._since, dict(per_integration), (until - self._since) - len(ids)


async def end_offsets(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> int:
    """The sum of the end offsets of ``partitions`` (read_uncommitted: any write, a transaction's marker too, moves
    it)."""
    return sum((await consumer.end_offsets(partitions)).values())


async def _scrape(relays: list[RelayProcess]) -> list[Metrics]:
    return [await relay.metrics() for relay in relays]


def _total(metrics: list[Metrics], name: str, **labels: str) -> float:
    return sum(m.sum(name, **labels) for m in metrics)


async def _wait_idle(relays: list[RelayProcess], pairs: int, timeout: float) -> None:
    """Until one interval's worth of incremental polls (as many as pairs) went by without any transaction."""
    deadline = time.monotonic() + timeout
    baseline: tuple[float, float] | None = None
    while True:
        metrics = await _scrape(relays)
        transactions = _total(metrics, "relay_kafka_transaction_duration_seconds_count")
        polls = _total(metrics, "relay_polls_total", kind="incremental", outcome="success")
        if baseline is None or transactions != baseline[0]:
            baseline = (transactions, polls)
        elif polls - baseline[1] >= pairs:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the fleet did not go idle within {timeout:.0f}s")
        await asyncio.sleep(1.0)


async def _replica_window(
    relays: list[RelayProcess],
    sim: SimulatorProcess,
    kafka: Any,
    offsets: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    pairs: int,
    window: float,
) -> dict[str, Any]:
    requests = RequestLog(sim, pairs / POLL_INTERVAL)
    await requests.start()
    before = await _scrape(relays)
    offsets_before = await end_offsets(offsets, partitions)
    cpu_before = [relay.cpu_seconds() for relay in relays]
    others_before = cpu_seconds(sim.pid), cpu_seconds(kafka.process.pid)
    started = time.monotonic()
    await asyncio.sleep(window)  # the measured idle window
    elapsed = time.monotonic() - started
    cpu = [relay.cpu_seconds() - b for relay, b in zip(relays, cpu_before, strict=True)]
    sim_cpu, broker_cpu = (
        a - b for a, b in zip((cpu_seconds(sim.pid), cpu_seconds(kafka.process.pid)), others_before, strict=True)
    )
    after = await _scrape(relays)
    offsets_moved = await end_offsets(offsets, partitions) - offsets_before
    sim_requests, per_pair, unseen = await requests.stop()

    def delta(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    intervals = elapsed / POLL_INTERVAL
    polls = delta("relay_polls_total", kind="incremental", outcome="success")
    counts = [per_pair.get(f"fleet:{i:05d}", 0) for i in range(pairs)]
    return {
        "seconds": elapsed,
        "cpu_share": sum(cpu) / elapsed,
        "relay_cpu_shares": [c / elapsed for c in cpu],
        "simulator_cpu_share": sim_cpu / elapsed,
        "broker_cpu_share": broker_cpu / elapsed,
        "simulator_requests": sim_requests,
        "unseen_requests": unseen,
        "requests_per_pair_per_interval": sim_requests / pairs / intervals,
        "per_pair_requests": {str(n): pairs for n, pairs in sorted(Counter(counts).items())},  # requests -> pairs
        "pairs_without_request": sum(1 for c in counts if c == 0),
        "relay_requests": delta("relay_source_requests_total"),
        "polls": polls,
        "requests_per_poll": delta("relay_source_requests_total") / polls if polls else float("nan"),
        "polls_per_pair_per_interval": polls / pairs / intervals,
        "failed_polls": delta("relay_polls_total") - delta("relay_polls_total", outcome="success"),
        "transactions": delta("relay_kafka_transaction_duration_seconds_count"),
        "end_offsets_moved": offsets_moved,
        "rebalances": delta("relay_rebalances_total"),
        "rss_mb": sum(relay.rss_bytes() for relay in relays) / 2**20,
    }


async def _replicas_phase(
    kafka: Any, sim: SimulatorProcess, integrations: list[str], replicas: int, windows: int, window: float, prefix: str
) -> dict[str, Any]:
    size = len(integrations)
    settings = RelaySettings(
        bootstrap_servers=kafka.bootstrap_servers,
        source_url=sim.url,
        integrations=integrations,
        topic_prefix=prefix,
        extra={"RELAY_POLL_INTERVAL_SECONDS": str(POLL_INTERVAL)},
    )
    relays = [RelayProcess(settings, name=f"relay-{prefix}-{i}") for i in range(replicas)]
    offsets = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    topics = [f"{prefix}.relay-state", f"{prefix}.{RESOURCE.replace('/', '.')}", f"{prefix}.relay-control"]
    try:

        async def snapshots_done() -> list[dict[str, Any]] | None:
            statuses = await fleet_settled(relays, PARTITIONS)
            if statuses is None:
                return None
            done = [p for status in statuses for p in status["pairs"] if p["snapshot_done"]]
            return statuses if len(done) == size else None

        statuses = await wait_for(snapshots_done, 1800, f"{replicas} replicas settled, {size} snapshots", 2.0)
        generation = statuses[0]["fleet"]["generation"]
        owned = [sorted(status["fleet"]["owned_partitions"]) for status in statuses]
        log(f"fleet {size} over {replicas} replica(s): settled in generation {generation}, partitions {owned}")
        await _wait_idle(relays, size, 600)
        partitions = await topic_partitions(kafka.bootstrap_servers, topics)
        await offsets.start()
        measured = []
        for window_number in range(windows):
            entry = await _replica_window(relays, sim, kafka, offsets, partitions, size, window)
            measured.append(entry)
            log(
                f"fleet {size} over {replicas} replica(s), window {window_number}: relay CPU {entry['cpu_share']:.2%} "
                f"of a core ({', '.join(f'{s:.2%}' for s in entry['relay_cpu_shares'])}); at the simulator "
                f"{entry['requests_per_pair_per_interval']:.3f} requests/pair/interval, per pair "
                f"{entry['per_pair_requests']} ({entry['unseen_requests']:.0f} unseen); "
                f"{entry['requests_per_poll']:.3f} requests/poll; {entry['transactions']:.0f} transactions, end "
                f"offsets +{entry['end_offsets_moved']}, {entry['rebalances']:.0f} rebalances"
            )
        still = await fleet_settled(relays, PARTITIONS)
        if still is None or {status["fleet"]["generation"] for status in still} != {generation}:
            raise RuntimeError(f"the group of {replicas} replicas rebalanced while idle")
    finally:
        with contextlib.suppress(Exception):
            await offsets.stop()
        stop_all(relays)
    per_pair = [int(n) for w in measured for n, pairs in w["per_pair_requests"].items() if pairs]
    return {
        "replicas": replicas,
        "partitions": owned,
        "windows": measured,
        "cpu_share": median(w["cpu_share"] for w in measured),
        "relay_cpu_shares": [median(w["relay_cpu_shares"][i] for w in measured) for i in range(replicas)],
        "simulator_cpu_share": median(w["simulator_cpu_share"] for w in measured),
        "broker_cpu_share": median(w["broker_cpu_share"] for w in measured),
        "requests_per_pair_per_interval": median(w["requests_per_pair_per_interval"] for w in measured),
        "per_pair_min": min(per_pair),
        "per_pair_max": max(per_pair),
        "pairs_without_request": max(w["pairs_without_request"] for w in measured),
        "unseen_requests": sum(w["unseen_requests"] for w in measured),
        "requests_per_poll": median(w["requests_per_poll"] for w in measured),
        "polls_per_pair_per_interval": median(w["polls_per_pair_per_interval"] for w in measured),
        "failed_polls": sum(w["failed_polls"] for w in measured),
        "transactions": sum(w["transactions"] for w in measured),
        "end_offsets_moved": sum(w["end_offsets_moved"] for w in measured),
        "rebalances": sum(w["rebalances"] for w in measured),
        "rss_mb": median(w["rss_mb"] for w in measured),
    }


def one_request_per_pair(phase: dict[str, Any], window: float) -> bool:
    """Every request a poll, and each pair polled once per interval: as many requests in all as pairs and intervals
    (within 5%, the jitter), and no pair with none, nor with more than one interval shortened by the whole jitter
    allows (a pair polled by two replicas would have about twice as many)."""
    most = math.ceil(window / (POLL_INTERVAL * (1 - JITTER))) + 1
    return (
        abs(phase["requests_per_poll"] - 1.0) < 1e-9
        and abs(phase["requests_per_pair_per_interval"] - 1.0) <= 0.05
        and phase["pairs_without_request"] == 0
        and phase["per_pair_max"] <= most
        and phase["unseen_requests"] == 0
    )


async def run_replicas(
    kafka: Any, size: int, replica_counts: list[int], windows: int, window_seconds: float, tag: str
) -> dict[str, Any]:
    """The idle fleet of ``size`` integrations over each replica count in turn (see the module's docstring)."""
    integrations = [f"fleet:{i:05d}" for i in range(size)]
    sim = SimulatorProcess(integrations, users=USERS_PER_INTEGRATION, name=f"simulator-fleet{size}-replicas")
    phases = []
    try:
        await sim.wait_serving()
        for replicas in replica_counts:
            prefix = f"idle{tag}m{size}r{replicas}"
            phases.append(await _replicas_phase(kafka, sim, integrations, replicas, windows, window_seconds, prefix))
    finally:
        sim.stop()
    base = phases[0]
    for phase in phases:
        phase["cpu_vs_first"] = phase["cpu_share"] / base["cpu_share"]
        phase["one_request_per_pair"] = one_request_per_pair(phase, window_seconds)
        phase["no_idle_transaction"] = phase["transactions"] == 0 and phase["end_offsets_moved"] == 0
    most = phases[-1]
    return {
        "integrations": size,
        "poll_interval_seconds": POLL_INTERVAL,
        "users_per_integration": USERS_PER_INTEGRATION,
        "window_seconds": window_seconds,
        "windows": windows,
        "replica_counts": replica_counts,
        "phases": phases,
        "cpu_tolerance": CPU_TOLERANCE,
        "pass": all(
            p["cpu_vs_first"] <= 1 + CPU_TOLERANCE and p["one_request_per_pair"] and p["no_idle_transaction"]
            for p in phases
        ),
        "cpu_ratio": most["cpu_vs_first"],
    }

"""Fleet scale-out (issue 15): one snapshot taken by one replica and by two, and the idle fleet over three replicas
against one (:func:`tests.benchmarks.bench_fleet.run_replicas`). One broker and one simulator process serve both.

**Snapshot over replicas.** The simulator holds M integrations of N users each (default 40 x 5,000). Their ids are
chosen so that the state partitions hold M / 6 integrations each, one more for some: any even split of the
partitions between replicas then splits the records evenly too (with arbitrary ids, 40 integrations may put 1 in a
partition and 9 in another, and the ratio would measure the hash). Each round, with R replicas (``relay run``
processes with the same settings, so one consumer group, and a topic prefix of the round's own):

1. every integration is made ``inactive``; the R relays start, join the group and fail each pair's first poll;
   the round waits until the group has settled (every replica ready, one generation, ``fleet.owned_partitions``
   disjoint and summing to the partition count) and every owned pair was refused once (it sleeps its 2 s backoff);
2. each process's idle CPU is read over 1 s, then every integration is made ``active`` at once: the next poll of
   each pair is its snapshot;
3. once the replicas' ``relay_polls_total{kind="snapshot",outcome="success"}`` add up to M, the CPU of each process
   is read again, and the group must still be in the generation it settled in;
4. the event topic is read ``read_committed``: exactly one ``created`` event per user, none twice. Throughput is
   those events over the span from the first event's timestamp to the last's (both set when the relay appends the
   event to a batch, a few ms before its transaction commits).

Each process's CPU over that span is its CPU from activation to the end, less what it spends idle (step 2's rate)
over the rest of the time; per record it is divided by the records that relay published (relays) or by all of them
(the simulator and the broker). The three kinds share the machine's two cores, and so do other processes on this
machine (``/proc/stat``'s busy time less ours is reported as *others*). Rounds alternate the order of R (1, 2 then
2, 1) and the ratio of R=2 to R=1 is taken within each run; figures are medians over the runs. Before the first run,
one unmeasured round warms the broker's JVM up.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer

from relay.partitioning import partition_for_key
from tests.benchmarks import bench_fleet
from tests.benchmarks.support import (
    RESOURCE,
    RelayProcess,
    RelaySettings,
    SimulatorProcess,
    broker,
    cpu_seconds,
    fleet_settled,
    log,
    machine_busy_seconds,
    median,
    stop_all,
    topic_partitions,
    wait_for,
)

PARTITIONS = 6  # RELAY_STATE_TOPIC_PARTITIONS, the relay's default
CORES = os.cpu_count() or 1
IDLE_SECONDS = 1.0  # how long each process's idle CPU is read before the snapshot
POLL_SECONDS = 2.0  # poll interval, and longest backoff: an inactive pair asks again every 2 s
INACTIVE = "INTEGRATION.INACTIVE"  # the simulator's answer for an inactive integration
RELAY_SETTINGS = {
    "RELAY_POLL_INTERVAL_SECONDS": str(POLL_SECONDS),
    "RELAY_POLL_JITTER_FRACTION": "0",
    "RELAY_INTEGRATION_BACKOFF_MAX_SECONDS": str(POLL_SECONDS),
}


def balanced_integrations(count: int, partitions: int = PARTITIONS) -> list[str]:
    """``count`` integration ids placed evenly over the state partitions (murmur2 of the id, as the relay places
    them): each partition gets ``count // partitions`` of them, and the ``count % partitions`` left over go to the
    two halves of the partitions in turn (0, 3, 1, 4, ... of 6), since two replicas are assigned a half each (40:
    7, 7, 6, 7, 7, 6, so 20 and 20)."""
    half = (partitions + 1) // 2
    turns = [p for pair in itertools.zip_longest(range(half), range(half, partitions)) for p in pair if p is not None]
    quota = [count // partitions] * partitions
    for partition in turns[: count % partitions]:
        quota[partition] += 1
    chosen: list[str] = []
    candidate = 0
    while len(chosen) < count:
        name = f"scale:{candidate:04d}"
        candidate += 1
        partition = partition_for_key(name.encode(), partitions)
        if quota[partition]:
            quota[partition] -= 1
            chosen.append(name)
    return chosen


@dataclass
class ScaleRound:
    replicas: int
    run: int
    records: int  # created events read back, read_committed (one per user, checked)
    span_seconds: float  # first event's timestamp to the last's
    window_seconds: float  # activation to the end noticed: the CPU readings' window
    relay_records: list[int]  # events each replica published
    relay_partitions: list[list[int]]
    relay_cpu_seconds: list[float]  # over the span (idle CPU over the rest of the window taken out), and below
    simulator_cpu_seconds: float
    broker_cpu_seconds: float
    others_cpu_seconds: float  # other processes on the machine, over the whole window (nothing taken out)
    relay_commit_ms: list[float]  # each replica's mean transaction duration

    @property
    def rps(self) -> float:
        return self.records / self.span_seconds

    @property
    def relay_us_per_record(self) -> list[float]:
        return [1e6 * cpu / max(1, n) for cpu, n in zip(self.relay_cpu_seconds, self.relay_records, strict=True)]

    @property
    def relay_cpu_share(self) -> list[float]:
        """Each replica's CPU as a share of one core over the span."""
        return [cpu / self.span_seconds for cpu in self.relay_cpu_seconds]

    @property
    def total_us_per_record(self) -> float:
        cpu = sum(self.relay_cpu_seconds) + self.simulator_cpu_seconds + self.broker_cpu_seconds
        return 1e6 * cpu / self.records

    @property
    def two_core_rps(self) -> float:
        """The most the machine's cores could do at that CPU per record, were they busy with these processes only."""
        return CORES * 1e6 / self.total_us_per_record

    @property
    def others_share(self) -> float:
        """Other processes' CPU over the window, as a share of all the machine's cores."""
        return self.others_cpu_seconds / (CORES * self.window_seconds)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name in (
            "rps",
            "relay_us_per_record",
            "relay_cpu_share",
            "total_us_per_record",
            "two_core_rps",
            "others_share",
        ):
            data[name] = getattr(self, name)
        return data


async def set_states(sim: SimulatorProcess, integrations: list[str], state: str) -> None:
    await asyncio.gather(*(sim.set_state(integration, state) for integration in integrations))


async def read_events(bootstrap_servers: str, topic: str) -> tuple[int, int, int, int]:
    """Read ``topic`` to its end, ``read_committed``: (events, distinct keys, first timestamp ms, last timestamp ms)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await topic_partitions(bootstrap_servers, [topic])
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        count, keys, first, last = 0, set[bytes](), None, None
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for record in records:
                    count += 1
                    keys.add(record.key)
                    first = record.timestamp if first is None else min(first, record.timestamp)
                    last = record.timestamp if last is None else max(last, record.timestamp)
        if first is None or last is None:
            raise RuntimeError(f"no event in {topic}")
        return count, len(keys), first, last
    finally:
        await consumer.stop()


async def live_users(sim: SimulatorProcess, integrations: list[str]) -> int:
    state = await sim.control("GET", "state")
    entries = [state["integrations"][integration] for integration in integrations]
    return sum(int(e["records"][RESOURCE]) - int(e["deleted"][RESOURCE]) for e in entries)


@dataclass
class Reading:
    """Every process's CPU seconds at one moment, and the machine's busy time."""

    at: float
    relays: list[float]
    simulator: float
    broker: float
    machine: float
    orchestrator: float  # this process

    @classmethod
    def now(cls, relays: list[RelayProcess], sim: SimulatorProcess, kafka: Any) -> Reading:
        return cls(
            time.monotonic(),
            [relay.cpu_seconds() for relay in relays],
            cpu_seconds(sim.pid),
            cpu_seconds(kafka.process.pid),
            machine_busy_seconds(),
            time.process_time(),
        )

    def processes(self) -> list[float]:
        return [*self.relays, self.simulator, self.broker]


async def snapshot_round(
    sim: SimulatorProcess, kafka: Any, integrations: list[str], replicas: int, prefix: str, run: int, expected: int
) -> ScaleRound:
    """One snapshot of every integration by ``replicas`` relays, measured (see the module's docstring)."""
    await set_states(sim, integrations, "inactive")
    settings = RelaySettings(
        bootstrap_servers=kafka.bootstrap_servers,
        source_url=sim.url,
        integrations=integrations,
        topic_prefix=prefix,
        extra=dict(RELAY_SETTINGS),
    )
    relays = [RelayProcess(settings, name=f"relay-{prefix}-{i}") for i in range(replicas)]
    try:

        async def settled_and_refused() -> list[dict[str, Any]] | None:
            statuses = await fleet_settled(relays, PARTITIONS)
            if statuses is None:
                return None
            pairs = [pair for status in statuses for pair in status["pairs"]]
            refused = [p for p in pairs if not p["polling"] and (p["last_error"] or {}).get("code") == INACTIVE]
            return statuses if len(refused) == len(integrations) else None

        statuses = await wait_for(
            settled_and_refused, 300, f"{replicas} replicas settled, each pair refused once", interval=0.2
        )
        generation = statuses[0]["fleet"]["generation"]
        owned = [sorted(status["fleet"]["owned_partitions"]) for status in statuses]
        before = [await relay.metrics() for relay in relays]
        idle_from = Reading.now(relays, sim, kafka)
        await asyncio.sleep(IDLE_SECONDS)
        start = Reading.now(relays, sim, kafka)
        await set_states(sim, integrations, "active")

        async def snapshots_done() -> Any:
            metrics = [await relay.metrics() for relay in relays]
            done = sum(m.sum("relay_polls_total", kind="snapshot", outcome="success") for m in metrics)
            return metrics if done >= len(integrations) else None

        after = await wait_for(snapshots_done, 1800, f"the snapshots of {len(integrations)} integrations", 0.5)
        end = Reading.now(relays, sim, kafka)
        still = await fleet_settled(relays, PARTITIONS)
        if still is None or {status["fleet"]["generation"] for status in still} != {generation}:
            raise RuntimeError(f"the group of {replicas} replicas rebalanced during the snapshot")
    finally:
        stop_all(relays)

    events, distinct, first_ms, last_ms = await read_events(
        kafka.bootstrap_servers, f"{prefix}.{RESOURCE.replace('/', '.')}"
    )
    if not events == distinct == expected:
        raise RuntimeError(f"read_committed: {events} events, {distinct} keys; expected {expected} of each")
    span = (last_ms - first_ms) / 1000
    window = end.at - start.at
    waited = max(0.0, window - span)
    idle_rates = [
        (b - a) / (start.at - idle_from.at) for a, b in zip(idle_from.processes(), start.processes(), strict=True)
    ]
    active = [
        max(0.0, e - s - rate * waited)
        for s, e, rate in zip(start.processes(), end.processes(), idle_rates, strict=True)
    ]
    ours = sum(e - s for s, e in zip(start.processes(), end.processes(), strict=True))
    others = (end.machine - start.machine) - ours - (end.orchestrator - start.orchestrator)

    def delta(i: int, name: str, **labels: str) -> float:
        return after[i].sum(name, **labels) - before[i].sum(name, **labels)

    published = [int(delta(i, "relay_events_published_total", type="created")) for i in range(replicas)]
    if sum(published) != events:
        raise RuntimeError(f"the replicas published {published} events, {events} were read")
    commit_ms = [
        1000
        * delta(i, "relay_kafka_transaction_duration_seconds_sum")
        / max(1.0, delta(i, "relay_kafka_transaction_duration_seconds_count"))
        for i in range(replicas)
    ]
    order = sorted(range(replicas), key=lambda i: owned[i][0] if owned[i] else PARTITIONS)  # by lowest partition
    return ScaleRound(
        replicas=replicas,
        run=run,
        records=events,
        span_seconds=span,
        window_seconds=window,
        relay_records=[published[i] for i in order],
        relay_partitions=[owned[i] for i in order],
        relay_cpu_seconds=[active[i] for i in order],
        simulator_cpu_seconds=active[replicas],
        broker_cpu_seconds=active[replicas + 1],
        others_cpu_seconds=max(0.0, others),
        relay_commit_ms=[commit_ms[i] for i in order],
    )


def describe(r: ScaleRound) -> str:
    relays = ", ".join(
        f"relay {i} (partitions {','.join(map(str, p))}): {n:,} records, {us:.1f} us/record, {share:.0%} of a core"
        for i, (p, n, us, share) in enumerate(
            zip(r.relay_partitions, r.relay_records, r.relay_us_per_record, r.relay_cpu_share, strict=True)
        )
    )
    return (
        f"{r.replicas} replica(s), run {r.run}: {r.rps:,.0f} rec/s over {r.span_seconds:.1f} s; {relays}; "
        f"simulator {1e6 * r.simulator_cpu_seconds / r.records:.1f} us, "
        f"broker {1e6 * r.broker_cpu_seconds / r.records:.1f} us; total {r.total_us_per_record:.1f} us/record, "
        f"two-core bound {r.two_core_rps:,.0f} rec/s; "
        f"other processes {r.others_share:.0%} of the cores"
    )


async def run(
    integrations: int,
    users: int,
    replica_counts: list[int],
    runs: int,
    idle_integrations: int,
    idle_replicas: list[int],
    windows: int,
    window_seconds: float,
    kafka_port: int,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    rounds: list[ScaleRound] = []
    names = balanced_integrations(integrations)
    with broker(kafka_port) as kafka:
        sim = SimulatorProcess(names, users=users, name="simulator-scale")
        try:
            await sim.wait_serving()
            expected = await live_users(sim, names)
            log(f"fleet-scale: warming up the broker with one unmeasured snapshot of {expected:,} users")
            await snapshot_round(sim, kafka, names, max(replica_counts), f"s{tag}warm", -1, expected)
            for r in range(runs):
                for replicas in replica_counts if r % 2 == 0 else list(reversed(replica_counts)):
                    result = await snapshot_round(sim, kafka, names, replicas, f"s{tag}r{r}x{replicas}", r, expected)
                    rounds.append(result)
                    log(f"fleet-scale snapshot: {describe(result)}")
        finally:
            sim.stop()
        idle = await bench_fleet.run_replicas(kafka, idle_integrations, idle_replicas, windows, window_seconds, tag)
    return {"snapshot": summarize(rounds, integrations, users, replica_counts), "idle": idle}


def summarize(rounds: list[ScaleRound], integrations: int, users: int, replica_counts: list[int]) -> dict[str, Any]:
    configs = []
    for replicas in replica_counts:
        group = [r for r in rounds if r.replicas == replicas]
        configs.append(
            {
                "replicas": replicas,
                "runs": len(group),
                "rps": median(r.rps for r in group),
                "span_seconds": median(r.span_seconds for r in group),
                "relay_records": [median(r.relay_records[i] for r in group) for i in range(replicas)],
                "relay_us_per_record": [median(r.relay_us_per_record[i] for r in group) for i in range(replicas)],
                "relay_cpu_share": [median(r.relay_cpu_share[i] for r in group) for i in range(replicas)],
                "relay_commit_ms": [median(r.relay_commit_ms[i] for r in group) for i in range(replicas)],
                "simulator_us_per_record": median(1e6 * r.simulator_cpu_seconds / r.records for r in group),
                "broker_us_per_record": median(1e6 * r.broker_cpu_seconds / r.records for r in group),
                "total_us_per_record": median(r.total_us_per_record for r in group),
                "two_core_rps": median(r.two_core_rps for r in group),
                "share_of_two_core": median(r.rps / r.two_core_rps for r in group),
                "others_share": median(r.others_share for r in group),
            }
        )
    base = replica_counts[0]
    ratios: dict[str, list[float]] = {}
    for replicas in replica_counts[1:]:
        ratios[str(replicas)] = [
            a.rps / b.rps
            for a in rounds
            if a.replicas == replicas
            for b in rounds
            if b.replicas == base and b.run == a.run
        ]
    return {
        "integrations": integrations,
        "users_per_integration": users,
        "records": rounds[0].records if rounds else 0,
        "partitions": PARTITIONS,
        "replica_counts": replica_counts,
        "runs": max((r.run for r in rounds), default=-1) + 1,
        "configs": configs,
        "ratios": ratios,  # per run, each replica count's throughput over the first's
        "ratio": {n: median(values) for n, values in ratios.items()},
        "raw": [r.as_json() for r in rounds],
    }

"""Snapshot throughput against its two limits, memory per remembered entity, and restore time (targets 1, 3, 5).

For each N the simulator (a subprocess) holds N users in an integration of their own. Each run, for each N:

1. **relay**: a relay subprocess starts with that integration ``inactive``, so that its first poll fails at once
   and backs off; RSS is read then ("before"), the integration is made active, and the next poll is the snapshot.
   Its duration is ``relay_poll_duration_seconds`` of that snapshot poll: first request to last transaction
   committed. Every live record must have become one committed ``created`` event. RSS is read again ("after").
2. **restore**: a second relay process with the same configuration: time from process start to ``/readyz`` 200,
   with N entities in the state topic.
3. **fetch-only limit**: a bare aiohttp loop paging the same integration with the same page size.
4. **produce-only limit**: a bare aiokafka producer with the relay's producer settings sends the same messages the
   relay sends per page (events, state records, checkpoint; pre-serialized by the relay's own code), batched per
   partition, keys partitioned as the relay does (a page's keys hashed at once), with the relay's group commit at its
   fullest: consecutive pages share a transaction up to ``MAX_TRANSACTION_MESSAGES`` (a bare producer always has
   the next pages ready; the relay groups the pages that arrive while a transaction is in flight).

The ratio relay / min(limits) is computed within each run; figures are medians over the runs. Before the first run,
one unmeasured round of all four at up to ``WARM_UP_USERS`` lets the broker's JVM compile its hot paths.

The CPU time of the relay, the simulator and the broker is read in each phase: the three share the machine's cores,
so their sum per record bounds what the machine can do (``two_core_rps``), whatever the limits measured alone say.
Around the relay's snapshot, what each process spends idle (measured just before) is taken out of the time waited.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from relay import diff
from relay.events import to_kafka_message
from relay.partitioning import partitions_for_keys
from relay.sink import MAX_TRANSACTION_MESSAGES
from relay.state import Checkpoint, InProgress, StateStore
from tests.benchmarks.support import (
    API_KEY,
    RESOURCE,
    RelayProcess,
    RelaySettings,
    SimulatorProcess,
    broker,
    cpu_seconds,
    log,
    median,
    wait_for,
)

PAGE_SIZE = 250
IDLE_SECONDS = 1.0  # how long each process's idle CPU is measured before a snapshot
WARM_UP_USERS = 100_000
CORES = os.cpu_count() or 1
PARTITIONS = 6  # the relay's defaults for event and state topics
# The relay's producer settings (relay/sink.py, KafkaSink._new_producer), for the produce-only limit.
PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "compression_type": "zstd",
    "linger_ms": 5,
    "max_batch_size": 512 * 1024,
    "max_request_size": 8 * 1024 * 1024,
    "request_timeout_ms": 30_000,
}

OutTuple = tuple[int, int | None, bytes, bytes, list[tuple[str, bytes]] | None]  # topic: 0 events, 1 state


@dataclass
class Run:
    n: int
    run: int
    records: int
    events: int
    relay_seconds: float
    fetch_seconds: float
    produce_seconds: float
    rss_before: int
    rss_after: int
    restore_seconds: float
    restore_rss: int
    relay_cpu_seconds: float
    fetch_ms_per_page: float  # inside the relay: mean source request duration
    commit_ms_per_page: float  # inside the relay: mean Kafka transaction duration (begin to commit), per transaction
    # CPU seconds of the other processes on the machine, while the relay snapshots and while fetch-only pages
    simulator_cpu_seconds: float
    broker_cpu_seconds: float
    fetch_simulator_cpu_seconds: float
    fetch_client_cpu_seconds: float
    produce_broker_cpu_seconds: float  # includes the topic creation and the 2 s wait for leaders
    produce_client_cpu_seconds: float = 0.0  # the bare producer's own CPU (this process), while it sends
    refetch_cpu_seconds: float = 0.0  # the relay's, for a reconciliation of the N records, all unchanged

    @property
    def refetch_floor_ratio(self) -> float:
        """Issue 19, target 2: the relay's CPU per record re-fetching unchanged records over fetch-only's."""
        return self.refetch_cpu_seconds / self.fetch_client_cpu_seconds

    @property
    def cpu_floor_ratio(self) -> float:
        """Issue 19, target 1: the relay's CPU per record over the two floors', fetch-only plus produce-only (their
        clients' CPU: this process's, while each ran alone)."""
        return self.relay_cpu_seconds / (self.fetch_client_cpu_seconds + self.produce_client_cpu_seconds)

    @property
    def relay_rps(self) -> float:
        return self.records / self.relay_seconds

    @property
    def fetch_rps(self) -> float:
        return self.records / self.fetch_seconds

    @property
    def produce_rps(self) -> float:
        return self.records / self.produce_seconds

    @property
    def ratio(self) -> float:
        return self.relay_rps / min(self.fetch_rps, self.produce_rps)

    @property
    def bytes_per_entity(self) -> float:
        return (self.rss_after - self.rss_before) / self.records

    @property
    def cpu_us_per_record(self) -> float:
        """CPU of the relay, the simulator and the broker together, per record, during the relay's snapshot."""
        return 1e6 * (self.relay_cpu_seconds + self.simulator_cpu_seconds + self.broker_cpu_seconds) / self.records

    @property
    def two_core_rps(self) -> float:
        """The most this machine's two cores could do at that CPU per record, were every process busy all along."""
        return CORES * 1e6 / self.cpu_us_per_record

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name in (
            "relay_rps",
            "fetch_rps",
            "produce_rps",
            "ratio",
            "bytes_per_entity",
            "cpu_us_per_record",
            "two_core_rps",
            "cpu_floor_ratio",
            "refetch_floor_ratio",
        ):
            data[name] = getattr(self, name)
        return data


# ----------------------------------------------------------------------------------------------- the limits


async def fetch_pages(url: str, integration: str, keep: bool = False) -> tuple[float, int, list[Any]]:
    """Page through ``integration`` as the relay's snapshot does; return (seconds, records, pages if ``keep``)."""
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Integration-Id": integration}
    params = {"page_size": str(PAGE_SIZE), "include_deleted": "true"}
    pages: list[Any] = []
    records = 0
    async with aiohttp.ClientSession(headers=headers) as session:
        started = time.perf_counter()
        cursor = None
        while True:
            query = params if cursor is None else {**params, "cursor": cursor}
            async with session.get(f"{url}/{RESOURCE}", params=query) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"fetch-only: HTTP {response.status}: {body[:200]!r}")
            data = orjson.loads(body)["data"]
            records += len(data["results"])
            if keep:
                pages.append(data["results"])
            cursor = data["next"]
            if cursor is None:
                return time.perf_counter() - started, records, pages


async def prepare_messages(url: str, integration: str) -> list[list[OutTuple]]:
    """The messages the relay writes for each page of a snapshot of ``integration``, serialized by the relay's
    own code (diff, events, state records)."""
    _, _, pages = await fetch_pages(url, integration, keep=True)
    store = StateStore(PARTITIONS)
    pair = store.pair(integration, RESOURCE)
    out: list[list[OutTuple]] = []
    for number, records in enumerate(pages):
        result = diff.diff_page(
            pair.entities, pair.shapes, records, integration=integration, resource=RESOURCE, snapshot=True
        )
        messages: list[OutTuple] = []
        for change in result.changes:
            message = to_kafka_message(change, integration=integration, resource=RESOURCE, detected_at_ms=0)
            messages.append((0, None, message.key, message.value, message.headers))
        last = number == len(pages) - 1
        checkpoint = (
            pair.checkpoint.completed(kind="snapshot", started_at_ms=int(time.time() * 1000))
            if last
            else Checkpoint(in_progress=InProgress("snapshot", "c" * 40, None, 0, number + 1))
        )
        for record in store.records_for(
            integration, RESOURCE, delta=result.delta, new_shapes=result.new_shapes, checkpoint=checkpoint
        ):
            messages.append((1, record.partition, record.key, record.value, None))
        store.apply(integration, RESOURCE, delta=result.delta, new_shapes=result.new_shapes, checkpoint=checkpoint)
        out.append(messages)
    return out


async def produce_only(bootstrap_servers: str, pages: list[list[OutTuple]], prefix: str) -> tuple[float, float]:
    """Send ``pages`` with a bare transactional producer, grouped as the relay would; return the seconds taken and
    this process's CPU seconds meanwhile (the topics' creation and the wait for their leaders left out)."""
    event_topic, state_topic = f"{prefix}.ats.users", f"{prefix}.relay-state"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(event_topic, PARTITIONS, 1),
                NewTopic(state_topic, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"}),
            ]
        )
    finally:
        await admin.close()
    await asyncio.sleep(2.0)  # let the new partitions elect their leader (the relay's topics had as long)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, transactional_id=f"{prefix}-limit", **PRODUCER_SETTINGS
    )
    await producer.start()
    try:
        topics = (event_topic, state_topic)
        counts = [len(await producer.partitions_for(topic)) for topic in topics]
        started, cpu_started = time.perf_counter(), time.process_time()
        for group in _transactions(pages):
            await producer.begin_transaction()
            batches: dict[tuple[str, int], Any] = {}
            # The relay's own way to partition keyed messages: the keys of a transaction hashed at once.
            messages = [message for page in group for message in page]
            event_keys = [key for _, partition, key, _, _ in messages if partition is None]
            keyed = iter(partitions_for_keys(event_keys, counts[0]))
            for which, partition, key, value, headers in messages:
                topic = topics[which]
                if partition is None:
                    assert which == 0, "only events are partitioned by key; state records name their partition"
                    partition = next(keyed)
                batch = batches.get((topic, partition))
                if batch is None:
                    batch = batches[topic, partition] = producer.create_batch()
                if batch.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                    batch.close()
                    await producer.send_batch(batch, topic, partition=partition)
                    batch = batches[topic, partition] = producer.create_batch()
                    batch.append(timestamp=None, key=key, value=value, headers=headers or [])
            for (topic, partition), batch in batches.items():
                batch.close()
                await producer.send_batch(batch, topic, partition=partition)
            await producer.commit_transaction()
        return time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await producer.stop()


def _transactions(pages: list[list[OutTuple]]) -> list[list[list[OutTuple]]]:
    """Consecutive pages grouped as the relay's sink groups them when they all wait: up to MAX_TRANSACTION_MESSAGES
    per transaction, and at least one page."""
    groups: list[list[list[OutTuple]]] = []
    count = MAX_TRANSACTION_MESSAGES + 1
    for page in pages:
        if count + len(page) > MAX_TRANSACTION_MESSAGES:
            groups.append([])
            count = 0
        groups[-1].append(page)
        count += len(page)
    return groups


# ------------------------------------------------------------------------------------------------- the relay


@dataclass
class RelaySnapshot:
    seconds: float
    events: int
    rss_before: int
    rss_after: int
    cpu_seconds: float  # the relay's, and below the others', over the snapshot (idle CPU around it taken out)
    simulator_cpu_seconds: float
    broker_cpu_seconds: float
    fetch_ms_per_page: float
    commit_ms_per_transaction: float


async def relay_snapshot(
    sim: SimulatorProcess, kafka: Any, integration: str, prefix: str, expected_events: int
) -> RelaySnapshot:
    """Run the relay's snapshot of ``integration`` and measure it."""
    bootstrap_servers = kafka.bootstrap_servers
    await sim.set_state(integration, "inactive")
    settings = RelaySettings(
        bootstrap_servers=bootstrap_servers,
        source_url=sim.url,
        integrations=[integration],
        topic_prefix=prefix,
        extra={"RELAY_POLL_INTERVAL_SECONDS": "2", "RELAY_POLL_JITTER_FRACTION": "0"},
    )
    relay = RelayProcess(settings, name=f"relay-{prefix}")
    try:
        await relay.wait_ready()

        async def refused() -> bool:
            return (await relay.metrics()).sum("relay_source_requests_total", code="INTEGRATION.INACTIVE") >= 1

        await wait_for(refused, 60, "the relay's first (refused) poll", interval=0.1)

        def cpu_now() -> tuple[float, float, float, float]:
            return time.monotonic(), relay.cpu_seconds(), cpu_seconds(sim.pid), cpu_seconds(kafka.process.pid)

        # The CPU window is longer than the snapshot: the relay waits out its backoff (up to the 2 s poll interval)
        # before its snapshot poll, and the end is noticed by a scrape every 0.5 s. What each process spends idle
        # meanwhile, measured here over IDLE_SECONDS, is taken out below.
        idle_from = cpu_now()
        await asyncio.sleep(IDLE_SECONDS)
        rss_before = relay.rss_bytes()
        cpu_before = cpu_now()
        idle_rates = [
            (b - a) / (cpu_before[0] - idle_from[0]) for a, b in zip(idle_from[1:], cpu_before[1:], strict=True)
        ]
        await sim.set_state(integration, "active")

        async def snapshot_done() -> Any:
            metrics = await relay.metrics()
            if metrics.sum("relay_polls_total", kind="snapshot", outcome="success") >= 1:
                return metrics
            relay.check_alive()
            return None

        metrics = await wait_for(snapshot_done, 3600, "the snapshot", interval=0.5)
        cpu_after = cpu_now()
        await asyncio.sleep(1.0)
        rss_after = relay.rss_bytes()
        seconds = metrics.sum("relay_poll_duration_seconds_sum", kind="snapshot")
        waited = max(0.0, cpu_after[0] - cpu_before[0] - seconds)
        relay_cpu, sim_cpu, broker_cpu = (
            max(0.0, after - before - rate * waited)
            for before, after, rate in zip(cpu_before[1:], cpu_after[1:], idle_rates, strict=True)
        )
        events = int(metrics.sum("relay_events_published_total", type="created"))
        if events != expected_events:
            raise RuntimeError(f"the snapshot published {events} created events, expected {expected_events}")
        fetch_ms = (
            1000
            * metrics.sum("relay_source_request_duration_seconds_sum")
            / max(1.0, metrics.sum("relay_source_request_duration_seconds_count"))
        )
        commit_ms = (
            1000
            * metrics.sum("relay_kafka_transaction_duration_seconds_sum")
            / max(1.0, metrics.sum("relay_kafka_transaction_duration_seconds_count"))
        )
        return RelaySnapshot(
            seconds, events, rss_before, rss_after, relay_cpu, sim_cpu, broker_cpu, fetch_ms, commit_ms
        )
    finally:
        relay.stop()


async def relay_restore(
    sim: SimulatorProcess, bootstrap_servers: str, integration: str, prefix: str
) -> tuple[float, int, float]:
    """Start a relay whose state topic holds the snapshot; return (seconds from start to ready, RSS when ready, CPU
    seconds of its first poll). That poll is a reconciliation (``RELAY_RECONCILE_INTERVAL_SECONDS`` is 1): a full
    re-fetch of records all unchanged since the snapshot, which issue 19 bounds by 1.5 x the fetch-only floor."""
    settings = RelaySettings(
        bootstrap_servers=bootstrap_servers,
        source_url=sim.url,
        integrations=[integration],
        topic_prefix=prefix,
        extra={
            "RELAY_POLL_INTERVAL_SECONDS": "3600",
            "RELAY_POLL_JITTER_FRACTION": "0",
            "RELAY_RECONCILE_INTERVAL_SECONDS": "1",
        },
    )
    relay = RelayProcess(settings, name=f"restore-{prefix}")
    try:
        seconds = await relay.wait_ready(timeout=600)
        cpu_ready, rss = relay.cpu_seconds(), relay.rss_bytes()

        async def reconciled() -> bool:
            relay.check_alive()
            return (await relay.metrics()).sum("relay_polls_total", kind="reconcile", outcome="success") >= 1

        # A scrape renders every metric: every 0.2 s it cost the relay about 1.5 us per record of a 100k
        # reconciliation, which a Prometheus scraping every 15 s does not. Once a second the end is still seen soon.
        await wait_for(reconciled, 3600, "the reconciliation after the restore", interval=1.0)
        return seconds, rss, relay.cpu_seconds() - cpu_ready
    finally:
        relay.stop()


# ----------------------------------------------------------------------------------------------------- suite


async def warm_up(sim: SimulatorProcess, kafka: Any, users: int, tag: str) -> None:
    """One unmeasured round of every phase, so that the broker's JVM has compiled its hot paths before the first
    measured run. A fresh broker spends seconds of CPU in its JIT compiler (seen at N=10,000: 166 us of broker CPU
    per record, against 60 to 75 after this round), on the cores the relay needs; a broker in production has long
    been warm."""
    integration = "bench:warm-up"
    log(f"warming up the broker with a snapshot of {users:,} users")
    await sim.control("POST", "integrations", {"id": integration, "users": users, "state": "active"})
    pages = await prepare_messages(sim.url, integration)
    prefix = f"b{tag}warm"
    await relay_snapshot(sim, kafka, integration, prefix, await sim.live_records(integration))
    await relay_restore(sim, kafka.bootstrap_servers, integration, prefix)
    await produce_only(kafka.bootstrap_servers, pages, f"limit{tag}warm")
    await sim.control("DELETE", f"integrations/{integration}")


async def run(sizes: list[int], runs: int, kafka_port: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    results: list[Run] = []
    with broker(kafka_port) as kafka:
        sim = SimulatorProcess(["bench:empty"], users=0)
        try:
            await sim.wait_serving()
            await warm_up(sim, kafka, min(WARM_UP_USERS, max(sizes)), tag)
            for n in sizes:
                integration = f"bench:n{n}"
                log(f"seeding {n} users in the simulator")
                await sim.control("POST", "integrations", {"id": integration, "users": n, "state": "active"})
                records = await sim.all_records(integration)
                live = await sim.live_records(integration)
                log(f"preparing the produce-only messages for N={n}")
                pages = await prepare_messages(sim.url, integration)
                for r in range(runs):
                    prefix = f"b{tag}n{n}r{r}"
                    snap = await relay_snapshot(sim, kafka, integration, prefix, live)
                    restore_seconds, restore_rss, refetch_cpu = await relay_restore(
                        sim, kafka.bootstrap_servers, integration, prefix
                    )
                    sim_cpu_before, client_cpu_before = cpu_seconds(sim.pid), time.process_time()
                    fetch_seconds, fetched, _ = await fetch_pages(sim.url, integration)
                    fetch_sim_cpu = cpu_seconds(sim.pid) - sim_cpu_before
                    fetch_client_cpu = time.process_time() - client_cpu_before
                    assert fetched == records, (fetched, records)
                    broker_cpu_before = cpu_seconds(kafka.process.pid)
                    produce_seconds, produce_client_cpu = await produce_only(
                        kafka.bootstrap_servers, pages, f"limit{tag}n{n}r{r}"
                    )
                    produce_broker_cpu = cpu_seconds(kafka.process.pid) - broker_cpu_before
                    result = Run(
                        n=n,
                        run=r,
                        records=records,
                        events=snap.events,
                        relay_seconds=snap.seconds,
                        fetch_seconds=fetch_seconds,
                        produce_seconds=produce_seconds,
                        rss_before=snap.rss_before,
                        rss_after=snap.rss_after,
                        restore_seconds=restore_seconds,
                        restore_rss=restore_rss,
                        relay_cpu_seconds=snap.cpu_seconds,
                        fetch_ms_per_page=snap.fetch_ms_per_page,
                        commit_ms_per_page=snap.commit_ms_per_transaction,
                        simulator_cpu_seconds=snap.simulator_cpu_seconds,
                        broker_cpu_seconds=snap.broker_cpu_seconds,
                        fetch_simulator_cpu_seconds=fetch_sim_cpu,
                        fetch_client_cpu_seconds=fetch_client_cpu,
                        produce_broker_cpu_seconds=produce_broker_cpu,
                        produce_client_cpu_seconds=produce_client_cpu,
                        refetch_cpu_seconds=refetch_cpu,
                    )
                    results.append(result)
                    us = {
                        name: f"{1e6 * seconds / records:.1f}"
                        for name, seconds in (
                            ("relay", snap.cpu_seconds),
                            ("simulator", snap.simulator_cpu_seconds),
                            ("broker", snap.broker_cpu_seconds),
                            ("fetch-only simulator", fetch_sim_cpu),
                            ("fetch-only client", fetch_client_cpu),
                            ("produce-only broker", produce_broker_cpu),
                            ("produce-only client", produce_client_cpu),
                            ("relay re-fetch", refetch_cpu),
                        )
                    }
                    log(
                        f"N={n} run {r}: relay {result.relay_rps:,.0f}/s, fetch-only {result.fetch_rps:,.0f}/s, "
                        f"produce-only {result.produce_rps:,.0f}/s, ratio {result.ratio:.2f}, "
                        f"relay CPU / floors {result.cpu_floor_ratio:.2f}, re-fetch CPU / fetch-only "
                        f"{result.refetch_floor_ratio:.2f}, {result.bytes_per_entity:.0f} B/entity, "
                        f"restore {restore_seconds:.2f}s, relay CPU "
                        f"{snap.cpu_seconds / snap.seconds:.0%}, in the relay: fetch {snap.fetch_ms_per_page:.1f} "
                        f"ms/page, commit {snap.commit_ms_per_transaction:.1f} ms/transaction; CPU us/record {us}; "
                        f"two-core bound {result.two_core_rps:,.0f}/s"
                    )
                del pages
                await sim.control("DELETE", f"integrations/{integration}")
        finally:
            sim.stop()
    return summarize(results, runs)


def summarize(results: list[Run], runs: int) -> dict[str, Any]:
    by_n: dict[int, list[Run]] = {}
    for result in results:
        by_n.setdefault(result.n, []).append(result)
    sizes = []
    for n, group in sorted(by_n.items()):
        sizes.append(
            {
                "n": n,
                "runs": len(group),
                "records": group[0].records,
                "relay_rps": median(r.relay_rps for r in group),
                "fetch_rps": median(r.fetch_rps for r in group),
                "produce_rps": median(r.produce_rps for r in group),
                "ratio": median(r.ratio for r in group),
                "relay_cpu_share": median(r.relay_cpu_seconds / r.relay_seconds for r in group),
                "relay_fetch_ms_per_page": median(r.fetch_ms_per_page for r in group),
                "relay_commit_ms_per_page": median(r.commit_ms_per_page for r in group),
                "fetch_only_ms_per_page": median(1000 * r.fetch_seconds / (r.records / PAGE_SIZE) for r in group),
                "produce_only_ms_per_page": median(1000 * r.produce_seconds / (r.records / PAGE_SIZE) for r in group),
                "cpu_us_per_record": {
                    "relay": median(1e6 * r.relay_cpu_seconds / r.records for r in group),
                    "simulator": median(1e6 * r.simulator_cpu_seconds / r.records for r in group),
                    "broker": median(1e6 * r.broker_cpu_seconds / r.records for r in group),
                    "fetch_only_simulator": median(1e6 * r.fetch_simulator_cpu_seconds / r.records for r in group),
                    "fetch_only_client": median(1e6 * r.fetch_client_cpu_seconds / r.records for r in group),
                    "produce_only_broker": median(1e6 * r.produce_broker_cpu_seconds / r.records for r in group),
                    "produce_only_client": median(1e6 * r.produce_client_cpu_seconds / r.records for r in group),
                    "relay_refetch": median(1e6 * r.refetch_cpu_seconds / r.records for r in group),
                    "total": median(r.cpu_us_per_record for r in group),
                },
                "cpu_floor_ratio": median(r.cpu_floor_ratio for r in group),
                "refetch_floor_ratio": median(r.refetch_floor_ratio for r in group),
                "two_core_rps": median(r.two_core_rps for r in group),
                "relay_share_of_two_core": median(r.relay_rps / r.two_core_rps for r in group),
                "bytes_per_entity": median(r.bytes_per_entity for r in group),
                "rss_before_mb": median(r.rss_before for r in group) / 2**20,
                "rss_after_mb": median(r.rss_after for r in group) / 2**20,
                "restore_seconds": median(r.restore_seconds for r in group),
                "restore_rss_mb": median(r.restore_rss for r in group) / 2**20,
            }
        )
    return {"runs_per_size": runs, "page_size": PAGE_SIZE, "sizes": sizes, "raw": [r.as_json() for r in results]}

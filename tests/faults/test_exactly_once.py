"""The proof of exactly-once delivery and crash safety: the relay as a real process, faults injected, and an oracle
(``oracle.py``, from the simulator's mutation log) judging what a ``read_committed`` consumer saw.

Scenarios (each prints ``scenario=... changes_expected=N events_seen=M lost=L duplicated=D ...``):

1. SIGKILL at random moments while the simulator churns: at start-up, at random times, while a page is being fetched
   (a LATENCY fault holds the response), and right after a transaction's first records reach the log (seen by a
   ``read_uncommitted`` consumer, i.e. mid-transaction). There is no window "between commit and state write" to aim
   at: a page's events, state records and checkpoint are one Kafka transaction, so that moment does not exist by
   design; the high kill frequency covers the moments around the commit.
2. The Kafka broker stopped mid-run and restarted on the same port and data: readiness goes false, the relay
   recovers by itself and nothing is skipped.
3. Source faults throughout (429 with and without Retry-After, 503, HTML 502, stalls ending in timeouts, truncated
   and malformed JSON, rejected cursors), including a cursor rejected right after a restart mid-snapshot.
4. Replicas taking turns: each newcomer shares the state partitions with the replica running, which is then stopped
   by SIGTERM (its partitions move at once) or SIGKILL (they move once the group's session timeout expired).
5. SIGTERM during a large snapshot: exit 0 within the grace period, resume from the committed cursor.
6. A fleet: three replicas, SIGKILLs of random ones (steady, mid-transaction, mid-rebalance), each followed by a new
   one, then scaled up to four and down to two by SIGTERM.
7. A zombie: a replica frozen (SIGSTOP) past its session timeout with work in flight while another takes its
   partitions over, then woken (SIGCONT): it commits nothing, notices, and rejoins.
8. The registry and operators' commands, by the real ``relay`` CLI, on a fleet of two: an integration added is
   snapshotted within one poll interval, one removed is no longer asked for, a pause outlives a restart of the fleet,
   a resnapshot re-announces exactly the live records once (the oracle's resnapshot rules), a command delivered twice
   acts once, and one for an integration the registry does not poll exits 9.

Scenarios 4, 6 and 7 also check that no state partition was committed by two replicas in one generation: from the
replicas' ``/status`` while they run, and from the producer id and epoch of every committed record batch against
each replica's claims in its log (``writers.py``).

Every ``relay run`` is a replica of the fleet: one SIGKILLed keeps its partitions until the group's session timeout
expired (``RELAY_GROUP_SESSION_TIMEOUT_SECONDS=6`` here, the least allowed), so a restart after a kill waits for it.

Plus, in process: a page Kafka refuses in part (one record over the size limit) commits nothing, and a relay
without the group (``connect_kafka``) that is fenced stops with exit code 4.

CI size runs in ``make test``; ``make soak`` (``RELAY_SOAK=1``) runs the same scenarios larger (200 kills). The
random seed is printed; ``RELAY_FAULTS_SEED`` replays the choices (the timing of a run is not replayable).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from relay.app import EXIT_FENCED, Relay
from relay.commands_cli import EXIT_UNKNOWN_INTEGRATION
from relay.control import ControlAction
from relay.errors import Fenced, RecordTooLarge
from relay.partitioning import partition_for_key
from relay.simulator import Fault, FaultKind
from tests.faults.chaos import (
    ACME,
    BASE_ENV,
    REPO,
    SOAK,
    USERS,
    FaultWorld,
    Fleet,
    RelayProcess,
    UncommittedWatcher,
    converge,
    fault_world,
    free_port,
    log_time,
    spread_integrations,
    wait_for,
)
from tests.faults.oracle import SUMMARIES, Oracle, Verdict
from tests.faults.writers import HANDED_OVER, fenced_count, read_written, who_wrote
from tests.integration.harness import Collector, relay_config

sys.path.insert(0, str(REPO / "deploy" / "local-kafka"))
from local_kafka import LocalKafka

pytestmark = pytest.mark.kafka


@dataclass(frozen=True)
class Scale:
    name: str
    kills: int  # scenario 1
    users: int  # per integration, scenarios 1-4 and 7
    churn: float  # mutations per second
    outages: int  # scenario 2
    fault_seconds: float  # scenario 3
    handovers: int  # scenario 4 (SIGTERM and SIGKILL in turn)
    snapshot_users: int  # scenario 5
    fleet_integrations: int  # scenario 6
    fleet_users: int  # per integration, scenario 6
    fleet_kills: int  # scenario 6
    pauses: int  # scenario 7
    registry_users: int  # per integration, scenario 8
    registry_interval: float  # RELAY_POLL_INTERVAL_SECONDS of scenario 8: a snapshot must be committed within it
    timeout: float  # per test


CI = Scale(
    "ci", kills=20, users=200, churn=20, outages=1, fault_seconds=20, handovers=4, snapshot_users=20_000,
    fleet_integrations=20, fleet_users=100, fleet_kills=10, pauses=1, registry_users=100,
    registry_interval=2, timeout=280,
)  # fmt: skip
SOAK_SCALE = Scale(
    "soak", kills=200, users=1000, churn=50, outages=5, fault_seconds=300, handovers=20, snapshot_users=100_000,
    fleet_integrations=60, fleet_users=1000, fleet_kills=60, pauses=5, registry_users=2000,
    registry_interval=5, timeout=4 * 3600,
)  # fmt: skip
SCALE = SOAK_SCALE if SOAK else CI
# The size is chosen by the environment, so a run has exactly one variant of each scenario: nothing is skipped.
scaled = pytest.mark.parametrize("scale", [SCALE], ids=[SCALE.name])


def seeded(name: str) -> tuple[int, random.Random]:
    seed = int(os.environ.get("RELAY_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{name}: seed={seed} (RELAY_FAULTS_SEED={seed} replays the choices)")
    return seed, random.Random(seed)


def report(verdict: Verdict) -> None:
    line = verdict.summary()
    print(line)
    SUMMARIES.append(line)
    assert verdict.ok, verdict.details()


async def finish(world: FaultWorld, oracle: Oracle, scenario: str, timeout: float = 120, **extra: object) -> Verdict:
    """Stop churn and faults, let the relays running (or a new one) publish every final state, stop them with SIGTERM,
    and judge."""
    await world.sim.stop_churn()
    world.sim.faults.clear()
    async with world.collector() as events:
        relays = [p for p in world.processes if p.alive()] or [await world.relay()]
        try:
            await converge(oracle, events, relays, timeout)
        except AssertionError as error:
            details = oracle.judge(events.events, scenario).details()
            tails = "\n".join(f"{relay.name}:\n{relay.tail(40)}" for relay in relays)
            raise AssertionError(f"{error}\n{details}\n{tails}") from error
        for relay in relays:  # a fleet stops one replica after the other, each handing its partitions over
            code, _ = await relay.terminate()
            assert code == 0, relay.tail()
    verdict = oracle.judge(events.events, scenario)
    verdict.extra.update(extra)
    return verdict


# ------------------------------------------------------------------------------------------------ 1. SIGKILL


async def kill_moment(
    mode: str, relay: RelayProcess, world: FaultWorld, watcher: UncommittedWatcher, rng: random.Random
) -> bool:
    """Wait for the moment ``mode`` aims at; False if it did not come in time (the kill then lands anyway)."""
    if mode == "startup":  # while connecting, creating topics or restoring the state
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        return True
    await relay.wait_ready()
    if mode == "random":
        await asyncio.sleep(rng.uniform(0, 2.5))
        return True
    if mode == "fetch":  # a page request is being answered (slowly) by the source
        fault = world.sim.faults.inject(FaultKind.LATENCY, count=1, latency=2.0)
        if not await fault_applied(fault, timeout=20):
            world.sim.faults.remove(fault.id)
            return False
        await asyncio.sleep(rng.uniform(0, 1.5))
        return True
    assert mode == "transaction"  # the first records of a transaction are in the log; its commit may not be
    return await watcher.wait_new_records(timeout=20)


async def fault_applied(fault: Fault, timeout: float) -> bool:
    """True once the simulator picked ``fault`` for a request (which is then in flight); False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while fault.applied == 0:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@scaled
@pytest.mark.timeout(SCALE.timeout)
async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    scale: Scale, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed, rng = seeded("sigkill")
    async with fault_world(bootstrap_servers, topic_prefix, tmp_path, users=scale.users) as world:
        oracle = Oracle(world.sim, world.integrations)
        await world.ensure_topics()
        watcher = UncommittedWatcher(bootstrap_servers, [*world.event_topics, world.state_topic], world.event_topics)
        await watcher.start()
        modes: Counter[str] = Counter()
        try:
            world.sim.start_churn(scale.churn)
            for _ in range(scale.kills):
                relay = await world.relay(page_size="5")
                mode = rng.choice(("startup", "random", "fetch", "transaction"))
                hit = await kill_moment(mode, relay, world, watcher, rng)
                assert relay.alive(), f"the relay died by itself ({relay.returncode}):\n{relay.tail()}"
                await relay.kill_and_wait()
                modes[mode if hit else f"{mode}-missed"] += 1
            verdict = await finish(world, oracle, "sigkill", kills=scale.kills, seed=seed)
        finally:
            await watcher.stop()
        # What a read_uncommitted consumer saw: events of aborted transactions, mostly published again (same id), but
        # some never: the record had changed again before the retry, which then published the newer content instead.
        uncommitted = Counter(watcher.event_ids)
        verdict.extra["uncommitted_duplicates"] = sum(n - 1 for n in uncommitted.values() if n > 1)
        verdict.extra["uncommitted_never_committed"] = len(set(uncommitted) - verdict.event_ids)
        verdict.extra["modes"] = ",".join(f"{k}:{v}" for k, v in sorted(modes.items()))
        # Restores after kills mid-transaction never wait on an open transaction (the new producer aborted it first).
        verdict.extra["max_restore_seconds"] = max(_restore_seconds(p) for p in world.processes)
    report(verdict)


def _restore_seconds(relay: RelayProcess) -> float:
    times = [orjson.loads(line).get("seconds", 0.0) for line in relay.log().splitlines() if '"state restored"' in line]
    return max(times, default=0.0)


# ------------------------------------------------------------------------------------------------ 2. broker outage


@scaled
@pytest.mark.timeout(SCALE.timeout)
async def test_kafka_outage_the_relay_recovers_by_itself(scale: Scale, topic_prefix: str, tmp_path: Path) -> None:
    broker = LocalKafka(port=free_port(), data_dir=tmp_path / "kafka", log_file=tmp_path / "broker.log")
    await asyncio.to_thread(broker.start)
    try:
        async with fault_world(broker.bootstrap_servers, topic_prefix, tmp_path / "logs", users=scale.users) as world:
            # A commit timeout shorter than the outage: transactions in flight are aborted and retried, not waited out.
            world.env_overrides["RELAY_KAFKA_COMMIT_TIMEOUT_SECONDS"] = "3"
            oracle = Oracle(world.sim, world.integrations)
            world.sim.start_churn(scale.churn)
            relay = await world.relay()
            await relay.wait_ready()
            for _ in range(scale.outages):
                await _wait_for_commits(relay, 5)
                await _broker_outage(broker, relay, seconds=8)
                assert relay.alive(), relay.tail()
                await relay.wait_ready(timeout=120)  # by itself
            await _wait_for_commits(relay, 5)
            assert await relay.metric("relay_kafka_transaction_errors_total") > 0  # the abort path ran

            # SIGTERM while the broker is away: the relay still exits in time; its successor is not ready until it
            # could restore the state, and then catches up.
            await asyncio.to_thread(broker.stop)
            await wait_for(_kafka_unreachable(relay), 30, "/readyz to report Kafka unreachable")
            code, stop_seconds = await relay.terminate(timeout=60)
            assert code == 0, relay.tail()
            assert stop_seconds < 25, f"took {stop_seconds:.1f}s to stop"
            successor = await world.relay()
            await wait_for(_answers(successor), 30, "the successor's HTTP server")
            answer = await successor.get("/readyz")
            assert answer is not None
            assert answer[0] == 503
            assert '"state_restored": false' in answer[1]
            await asyncio.to_thread(broker.start)
            await successor.wait_ready(timeout=120)
            verdict = await finish(
                world, oracle, "broker-outage", outages=scale.outages + 1, stop_seconds=round(stop_seconds, 1)
            )
    finally:
        await asyncio.to_thread(broker.cleanup)
    report(verdict)


async def _broker_outage(broker: LocalKafka, relay: RelayProcess, seconds: float) -> None:
    """Stop the broker; readiness must go false; keep it away ``seconds``; start it again (same port and data)."""
    await asyncio.to_thread(broker.stop)
    down_at = time.monotonic()
    await wait_for(_kafka_unreachable(relay), 30, "/readyz to report Kafka unreachable")
    # Keep the broker away a while longer: polls fail, transactions abort, the relay backs off and retries.
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - down_at)))
    await asyncio.to_thread(broker.start)


def _kafka_unreachable(relay: RelayProcess) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        answer = await relay.get("/readyz")
        return answer is not None and answer[0] == 503 and '"kafka_reachable": false' in answer[1]

    return check


def _answers(relay: RelayProcess) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await relay.get("/livez") is not None

    return check


async def test_a_page_kafka_refuses_in_part_commits_nothing(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    """aiokafka commits a transaction even when one of its batches failed (here: a record over the topic's size
    limit, refused by the broker); only that batch's send future tells. The page must then not commit at all:
    neither the other events nor the checkpoint, or the refused change would be skipped for good."""
    async with fault_world(bootstrap_servers, topic_prefix, tmp_path, users=20, integrations=[ACME]) as world:
        config = relay_config(
            source_url=world.server.url,
            api_key=world.sim.api_key,
            integrations=[ACME],
            bootstrap_servers=bootstrap_servers,
            topic_prefix=topic_prefix,
            initial_snapshot="skip",
        )
        relay = Relay(config)
        await relay.start_http()
        try:
            assert await relay.connect_kafka()
            await relay.pipeline.poll_once(ACME, USERS)
            before = relay.store.pair(ACME, USERS).checkpoint
            small, large = [r["id"] for r in world.sim.records(ACME, USERS, include_deleted=False)][:2]
            world.sim.update(ACME, USERS, small, {"first_name": "Small"})
            incompressible = base64.b64encode(os.urandom(1_500_000)).decode()  # > 1 MB even after zstd
            world.sim.update(ACME, USERS, large, {"first_name": incompressible})
            with pytest.raises(RecordTooLarge):  # the broker's refusal: not Kafka being down (issue 14)
                await relay.pipeline.poll_once(ACME, USERS)
            assert relay.store.pair(ACME, USERS).checkpoint == before
            assert await world.checkpoint(ACME) == before
            async with world.collector() as events:
                await events.settle()
            assert events.events == []
        finally:
            await relay.close()


async def _wait_for_commits(relay: RelayProcess, count: int, timeout: float = 60) -> None:
    """Wait until the relay finished ``count`` more polls (each commits at least its checkpoint)."""
    before = await relay.metric("relay_polls_total", outcome="success")

    async def done() -> bool:
        return await relay.metric("relay_polls_total", outcome="success") >= before + count

    await wait_for(done, timeout, f"{count} more successful polls", interval=0.2)


# ------------------------------------------------------------------------------------------------ 3. source faults

SOURCE_FAULTS = (
    FaultKind.HTTP_429,
    FaultKind.HTTP_503,
    FaultKind.HTML_502,
    FaultKind.STALL,
    FaultKind.TRUNCATED_JSON,
    FaultKind.MALFORMED_JSON,
    FaultKind.HTTP_400,  # with a cursor: rejected cursor; without: a failed poll, backed off
    FaultKind.LATENCY,
)


@scaled
@pytest.mark.timeout(SCALE.timeout)
async def test_source_faults_throughout(
    scale: Scale, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    seed, rng = seeded("source-faults")
    async with fault_world(bootstrap_servers, topic_prefix, tmp_path, users=scale.users * 2, rate_window=2.0) as world:
        oracle = Oracle(world.sim, world.integrations)
        world.sim.start_churn(scale.churn)
        world.sim.faults.inject(FaultKind.LATENCY, fraction=0.3, latency=0.1)  # a snapshot of many slow pages
        relay = await world.relay(page_size="10")

        # A restart mid-snapshot whose saved cursor the source then rejects: the poll restarts from the watermark.
        async def snapshot_in_progress() -> bool:
            status = await relay.status()
            return status is not None and any(p["in_progress"] and not p["snapshot_done"] for p in status["pairs"])

        await wait_for(snapshot_in_progress, 60, "a snapshot in progress")
        relay.kill()
        await relay.wait_exit(10)
        resumable = [i for i in world.integrations if (await world.checkpoint(i)).in_progress is not None]
        assert resumable
        world.sim.faults.clear()  # only the 400s now, so that they meet the resumed cursors
        for integration in resumable:
            world.sim.faults.inject(FaultKind.HTTP_400, count=1, integration=integration)
        relay = await world.relay(page_size="10")

        async def cursor_rejected() -> bool:
            return await relay.metric("relay_polls_total", outcome="cursor_rejected") >= len(resumable)

        await wait_for(cursor_rejected, 60, "the resumed cursors to be rejected")

        injected: Counter[str] = Counter()
        deadline = time.monotonic() + scale.fault_seconds
        while time.monotonic() < deadline:
            kind = rng.choice(SOURCE_FAULTS)
            if kind is FaultKind.HTTP_429:
                world.sim.rate_limiter.retry_after = rng.random() < 0.5
                injected["429" + ("+retry-after" if world.sim.rate_limiter.retry_after else "")] += 1
            else:
                injected[kind.value] += 1
            world.sim.faults.inject(kind, count=1, latency=0.5)
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            assert relay.alive(), relay.tail()
        retries = await relay.metric("relay_source_retries_total")
        verdict = await finish(
            world, oracle, "source-faults", faults=sum(injected.values()), retries=int(retries), seed=seed
        )
    print("injected:", dict(injected))
    report(verdict)


# ------------------------------------------------------------------------------------------------ 4. handover


@scaled
@pytest.mark.timeout(SCALE.timeout)
async def test_replicas_taking_turns_hand_over_without_loss_or_duplicates(
    scale: Scale, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Two relays with the same settings are two replicas sharing the state partitions. Each newcomer takes its share
    from the one running, which is then stopped, by SIGTERM (it hands its partitions over and leaves the group: they
    move at once) or by SIGKILL (they move once the group's session timeout expired), and the newcomer owns
    everything."""
    partitions = 4
    async with fault_world(
        bootstrap_servers, topic_prefix, tmp_path, users=scale.users, integrations=spread_integrations(4, partitions)
    ) as world:
        world.env_overrides["RELAY_STATE_TOPIC_PARTITIONS"] = str(partitions)
        oracle = Oracle(world.sim, world.integrations)
        await world.ensure_topics()
        world.sim.start_churn(scale.churn)
        fleet = Fleet(partitions)
        older = await world.relay()
        fleet.replicas.append(older)
        await fleet.wait_settled()
        # Seconds from the signal to the rebalance (the newcomer hands its own partitions over, as every member does
        # at a rebalance), and to the newcomer owning everything.
        rebalance: dict[str, list[float]] = {"sigterm": [], "sigkill": []}
        takeover: dict[str, list[float]] = {"sigterm": [], "sigkill": []}
        for number in range(scale.handovers):
            await _wait_for_commits(older, 3)
            newer = await world.relay()
            fleet.replicas.append(newer)
            await fleet.wait_settled()
            assert await fleet.owned_by(older), "the newcomer took every partition"
            assert await fleet.owned_by(newer), "the newcomer got no partition"
            how = "sigterm" if number % 2 == 0 else "sigkill"
            signalled = time.time()
            if how == "sigterm":
                code, _ = await older.terminate()
                assert code == 0, older.tail()
            else:
                await older.kill_and_wait()
            fleet.replicas.remove(older)
            await fleet.wait_settled()
            takeover[how].append(time.time() - signalled)
            handovers = [e["at"] for e in newer.entries() if e["event"] == HANDED_OVER and e["at"] >= signalled]
            rebalance[how].append(min(handovers) - signalled)
            older = newer
        verdict = await finish(world, oracle, "handover", handovers=scale.handovers)
        writers = await who_wrote(world)
    # A replica stopped by SIGTERM leaves the group: the others do not wait for its session to expire to rebalance.
    session = float(BASE_ENV["RELAY_GROUP_SESSION_TIMEOUT_SECONDS"])
    assert max(rebalance["sigterm"]) < session, rebalance
    verdict.extra.update(
        rebalance_sigterm_max=f"{max(rebalance['sigterm']):.1f}s",
        rebalance_sigkill_min=f"{min(rebalance['sigkill']):.1f}s",
        takeover_sigterm_max=f"{max(takeover['sigterm']):.1f}s",
        takeover_sigkill_max=f"{max(takeover['sigkill']):.1f}s",
        **writers.summary(),
        fenced=fenced_count(world.processes),
        generations=fleet.generations,
    )
    assert not fleet.conflicts, fleet.conflicts
    assert not writers.problems, "\n".join(writers.problems[:10])
    report(verdict)


async def test_without_the_group_a_fenced_relay_reports_not_ready_and_stops_with_exit_code_4(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    """A relay its caller drives (``connect_kafka``: the in-process harness of the tests, tools) joins no group and
    claims every state partition outright, so another one claiming them is a twin, not a replica: being fenced stays
    fatal there. Not ready at once, ``relay_fenced`` 1, its scheduler stops by itself with exit code 4, and its sink
    never writes again. (``relay run`` is always a replica: a partition taken over from it is let go, as the
    scenarios above and below show, and it never exits with 4.)"""
    async with fault_world(bootstrap_servers, topic_prefix, tmp_path, users=20, integrations=[ACME]) as world:
        config = relay_config(
            source_url=world.server.url,
            api_key=world.sim.api_key,
            integrations=[ACME],
            bootstrap_servers=bootstrap_servers,
            topic_prefix=topic_prefix,
            transactional_id=f"fenced-{topic_prefix}",
        )
        first, second = Relay(config), Relay(config)
        try:
            for relay in (first, second):
                await relay.start_http()
            assert first.readiness()[0] is False  # nothing restored yet
            assert await first.connect_kafka()
            assert first.readiness()[0] is True
            await first.pipeline.poll_once(ACME, USERS)
            assert await second.connect_kafka()  # same transactional ids: the first is fenced from now on
            world.sim.create(ACME, USERS)
            with pytest.raises(Fenced):
                await first.pipeline.poll_once(ACME, USERS)
            ready, checks = first.readiness()
            assert (ready, checks["not_fenced"]) == (False, False)
            assert first.metrics.registry.get_sample_value("relay_fenced") == 1
            await asyncio.wait_for(first.scheduler.run(grace_seconds=1), 30)  # stops by itself: never writes again
            assert first._exit_code(first.scheduler.fatal) == EXIT_FENCED
            with pytest.raises(Fenced):
                await first.sink.commit([])
            assert await first.sink.probe() is False
            await second.pipeline.poll_once(ACME, USERS)
            assert second.readiness()[0] is True
        finally:
            await asyncio.gather(first.close(), second.close())
            del first, second
            # aiokafka leaves the fenced producer's futures with their ProducerFenced unretrieved; have them reported
            # now, inside the test, rather than collected at any later moment (in CPython 3.11.7, a collection during
            # pytest's final import of hypothesis turns that report into an INTERNALERROR).
            gc.collect()


# ------------------------------------------------------------------------------------------------ 5. SIGTERM


@scaled
@pytest.mark.timeout(SCALE.timeout)
async def test_sigterm_during_a_large_snapshot_exits_in_time_and_resumes(
    scale: Scale, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with fault_world(
        bootstrap_servers, topic_prefix, tmp_path, users=scale.snapshot_users, integrations=[ACME]
    ) as world:
        oracle = Oracle(world.sim, world.integrations)
        world.sim.start_churn(scale.churn / 2)
        world.sim.faults.inject(FaultKind.LATENCY, fraction=0.2, latency=0.2)
        # The default grace period (RELAY_SHUTDOWN_GRACE_SECONDS unset: 20 s).
        relay = await world.relay(page_size="100")

        async def some_pages_committed() -> bool:
            status = await relay.status()
            pairs = [] if status is None else status["pairs"]  # the pairs it polls: none before it owns them
            return bool(pairs) and pairs[0]["in_progress"] and pairs[0]["entities"] >= 3000

        await wait_for(some_pages_committed, 120, "the snapshot to be under way", interval=0.1)
        world.sim.faults.clear()
        slow = world.sim.faults.inject(FaultKind.LATENCY, count=1, latency=3.0)
        assert await fault_applied(slow, timeout=30)  # SIGTERM while a slow page is in flight
        code, seconds = await relay.terminate(timeout=40)
        assert code == 0, relay.tail()
        assert seconds < 25, f"took {seconds:.1f}s to stop"
        assert "poll interrupted by shutdown" in relay.log()
        checkpoint = await world.checkpoint(ACME)
        assert checkpoint.in_progress is not None
        assert not checkpoint.snapshot_done
        assert checkpoint.in_progress.pages >= 30

        world.sim.faults.clear()
        last_interaction = max((i["id"] for i in await world.interactions()), default=0)
        relay = await world.relay(page_size="100")
        await relay.wait_ready()

        async def first_request() -> bool:
            return any(i["id"] > last_interaction for i in await world.interactions())

        await wait_for(first_request, 60, "the restarted relay's first request")
        first = min((i for i in await world.interactions() if i["id"] > last_interaction), key=lambda i: i["id"])
        assert f"cursor={checkpoint.in_progress.cursor}" in first["query"], first  # resumed where it stopped
        verdict = await finish(
            world, oracle, "sigterm-snapshot", timeout=240, stop_seconds=round(seconds, 1),
            resumed_at_page=checkpoint.in_progress.pages,
        )  # fmt: skip
    report(verdict)


# ------------------------------------------------------------------------------------------------ 6. fleet


@scaled
@pytest.mark.timeout(SCALE.timeout)
async def test_a_fleet_killed_and_rescaled_loses_and_duplicates_nothing(
    scale: Scale, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Three replicas, many integrations churning: replicas SIGKILLed at random moments, each followed by a new one;
    then a fourth replica, then two stopped by SIGTERM. Besides the oracle: no two replicas ever owned a partition in
    one generation (from their ``/status``), and every committed record was written by the one replica owning its
    state partition at the time (``writers.py``, from the producer of every record batch)."""
    seed, rng = seeded("fleet")
    partitions = 6
    integrations = spread_integrations(scale.fleet_integrations, partitions)
    async with fault_world(
        bootstrap_servers, topic_prefix, tmp_path, users=scale.fleet_users, integrations=integrations
    ) as world:
        world.env_overrides["RELAY_STATE_TOPIC_PARTITIONS"] = str(partitions)
        oracle = Oracle(world.sim, world.integrations)
        await world.ensure_topics()
        watcher = UncommittedWatcher(bootstrap_servers, [world.state_topic], [])
        await watcher.start()
        moments: Counter[str] = Counter()
        try:
            world.sim.start_churn(scale.churn)
            fleet = Fleet(partitions)
            fleet.replicas.extend([await world.relay() for _ in range(3)])
            await fleet.wait_settled()
            for _ in range(scale.fleet_kills):
                moment = rng.choice(("steady", "transaction", "rebalance"))
                victim, hit = await _fleet_victim(moment, fleet, world, watcher, rng)
                await victim.kill_and_wait()
                moments[moment if hit else f"{moment}-missed"] += 1
                fleet.replicas.remove(victim)
                fleet.replicas.append(await world.relay())
            await fleet.wait_settled()

            fleet.replicas.append(await world.relay())  # scale up: 6 partitions over 4 replicas, none idle
            await fleet.wait_settled()
            for replica in fleet.replicas:
                assert await fleet.owned_by(replica), f"{replica.name} owns no partition among 4 replicas"
            for victim in rng.sample(fleet.replicas, 2):  # scale down to 2, by SIGTERM
                code, _ = await victim.terminate()
                assert code == 0, victim.tail()
                fleet.replicas.remove(victim)
                await fleet.wait_settled()
            verdict = await finish(
                world, oracle, "fleet", kills=scale.fleet_kills, replicas_started=len(world.processes)
            )
        finally:
            await watcher.stop()
        writers = await who_wrote(world)
    verdict.extra.update(
        seed=seed,
        moments=",".join(f"{k}:{v}" for k, v in sorted(moments.items())),
        generations=fleet.generations,
        ownership_conflicts=len(fleet.conflicts),
        **writers.summary(),
        fenced=fenced_count(world.processes),
    )
    assert not fleet.conflicts, fleet.conflicts
    assert not writers.problems, "\n".join(writers.problems[:10])
    report(verdict)


async def _fleet_victim(
    moment: str, fleet: Fleet, world: FaultWorld, watcher: UncommittedWatcher, rng: random.Random
) -> tuple[RelayProcess, bool]:
    """The replica to kill at ``moment``, once it came; and whether it came (else a random one, now):

    * ``steady``: the group settled, a random replica once it finished a few more polls;
    * ``transaction``: the group settled, the owner of the state partition a transaction just wrote to (its commit
      may not have happened yet);
    * ``rebalance``: a random replica at once, while the group may still be rebalancing after the last restart.
    """
    if moment == "rebalance":
        return rng.choice(fleet.replicas), True
    await fleet.wait_settled()
    if moment == "steady":
        victim = rng.choice(fleet.replicas)
        await _wait_for_commits(victim, rng.randint(1, 4))
        return victim, True
    assert moment == "transaction"
    owners = {p: replica for replica in fleet.replicas for p in await fleet.owned_by(replica)}
    before = dict(watcher.by_partition)
    if await watcher.wait_new_records(20, where=[(world.state_topic, p) for p in owners]):
        written = [
            p for p in owners if watcher.by_partition[world.state_topic, p] > before.get((world.state_topic, p), 0)
        ]
        return owners[written[0]], True
    return rng.choice(fleet.replicas), False


# ------------------------------------------------------------------------------------------------ 7. zombie


@scaled
@pytest.mark.timeout(SCALE.timeout)
async def test_a_zombie_replica_commits_nothing_notices_and_rejoins(
    scale: Scale, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    """A replica frozen (SIGSTOP) past its session timeout with work in flight, a page the source is still sending it
    (with a new record in it) and, when it comes in time, a transaction of its own; the other replica takes its
    partitions over and publishes that record. Woken (SIGCONT), the zombie commits nothing (nothing it had in flight
    reaches a read_committed consumer through it: its producers were fenced), notices (it hands its partitions over,
    and its ``/status`` shows another generation and member id), and rejoins: it owns partitions again and publishes
    their changes."""
    seed, rng = seeded("zombie")
    partitions = 4
    integrations = spread_integrations(8, partitions)
    async with fault_world(
        bootstrap_servers, topic_prefix, tmp_path, users=scale.users, integrations=integrations
    ) as world:
        world.env_overrides["RELAY_STATE_TOPIC_PARTITIONS"] = str(partitions)
        # A page held 3 s by the source is still in flight when the zombie is frozen, and no timeout on its side.
        world.env_overrides["RELAY_SOURCE_READ_TIMEOUT_SECONDS"] = "10"
        oracle = Oracle(world.sim, world.integrations)
        await world.ensure_topics()
        watcher = UncommittedWatcher(bootstrap_servers, [world.state_topic, *world.event_topics], world.event_topics)
        await watcher.start()
        held: list[tuple[str, float]] = []  # the key of the record in the held page, when the zombie was frozen
        try:
            world.sim.start_churn(scale.churn)
            fleet = Fleet(partitions)
            zombie, other = await world.relay(), await world.relay()
            fleet.replicas.extend([zombie, other])
            async with world.collector() as events:
                for _ in range(scale.pauses):
                    await fleet.wait_settled()
                    before = await _fleet_of(zombie)
                    owned = set(before["owned_partitions"])
                    assert owned, "the zombie-to-be owns nothing"
                    integration = rng.choice(
                        [i for i in integrations if partition_for_key(i.encode(), partitions) in owned]
                    )
                    created = world.sim.create(integration, USERS)
                    page = world.sim.faults.inject(FaultKind.LATENCY, count=1, latency=3.0, integration=integration)
                    assert await fault_applied(page, timeout=30)
                    # The moment a transaction of its own just wrote to the log: maybe still open, maybe committed.
                    await watcher.wait_new_records(1.5, where=[(world.state_topic, p) for p in owned])
                    zombie.pause()
                    held.append((f"{integration}:{created['id']}", time.time()))
                    fleet.replicas.remove(zombie)
                    await fleet.wait_settled()  # the other owns everything: it claimed (fenced) the zombie's partitions
                    await _published_or_gone(events, world, integration, created["id"])

                    zombie.resume()
                    resumed_at = zombie.resumed_at
                    assert resumed_at is not None
                    fleet.replicas.append(zombie)
                    await fleet.wait_settled()
                    after = await _fleet_of(zombie)
                    assert after["generation"] > before["generation"], (before, after)
                    assert after["member_id"] != before["member_id"], (before, after)
                    assert after["owned_partitions"], "the zombie rejoined and owns nothing"
                    handed = {
                        p
                        for entry in zombie.entries()
                        if entry["event"] == HANDED_OVER and entry["at"] >= resumed_at
                        for p in entry["partitions"]
                    }
                    assert owned <= handed, f"the zombie did not let go of {sorted(owned - handed)}"
                    published = await zombie.metric("relay_events_published_total")

                    async def publishing_again(before: float = published) -> bool:
                        return await zombie.metric("relay_events_published_total") > before

                    await wait_for(publishing_again, 60, "the zombie to publish again from its new partitions")
            fenced = fenced_count([zombie])
            verdict = await finish(world, oracle, "zombie", pauses=scale.pauses, seed=seed)
        finally:
            await watcher.stop()
        writers = await who_wrote(world)
        uncommitted = await read_written(
            bootstrap_servers, [(world.state_topic, p) for p in range(partitions)], committed=False
        )
    assert not writers.problems, "\n".join(writers.problems[:10])
    # Nothing the zombie had in flight was committed through it: no event of a held record was written by the producer
    # session it was frozen in, and of what that session wrote, what was still open stayed uncommitted.
    frozen = [t for t in writers.tenures if t.replica == zombie.name and any(t.start < at <= t.end for _, at in held)]
    for key, _ in held:
        for event in (e for e in writers.events if e.key == key.encode()):
            assert writers.tenure_of(event) not in frozen, f"{key} was committed by the zombie's frozen producer"
    sessions = {(r.producer_id, r.epoch) for r in writers.runs if r.tenure in frozen}
    committed = {(w.partition, w.offset) for w in writers.state}
    in_flight = [
        w for w in uncommitted if (w.producer_id, w.epoch) in sessions and (w.partition, w.offset) not in committed
    ]
    verdict.extra.update(
        **writers.summary(),
        fenced_commits=fenced,
        zombie_uncommitted_records=len(in_flight),
    )
    report(verdict)


async def _fleet_of(relay: RelayProcess) -> dict[str, Any]:
    status = await relay.status()
    assert status is not None, f"{relay.name} does not answer:\n{relay.tail()}"
    fleet: dict[str, Any] = status["fleet"]
    return fleet


async def _published_or_gone(events: Collector, world: FaultWorld, integration: str, entity: str) -> None:
    """Wait until the entity's record was published, or no longer needs to be (the churn deleted it meanwhile)."""
    key = f"{integration}:{entity}"

    async def done() -> bool:
        await events.drain()
        record = world.sim.get(integration, USERS, entity)
        return any(e.key == key for e in events.events) or record is None or record.get("remote_deleted_at") is not None

    await wait_for(done, 60, f"{key} to be published by the new owner")


# ------------------------------------------------------------------------------------------------ 8. registry


@scaled
@pytest.mark.timeout(SCALE.timeout)
async def test_the_registry_and_operator_commands_drive_a_running_fleet(
    scale: Scale, bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    """A fleet of two replicas (``relay run`` processes) while the source churns, driven by the real ``relay`` CLI as
    an operator runs it, each step seen at the simulator (requests per integration) and on Kafka:

    * ``integrations add NEW`` (served by the simulator, not in RELAY_INTEGRATIONS): polled, and its snapshot
      committed, within one poll interval (jitter included) of the registry write;
    * ``resnapshot Z``: every live record of Z re-announced once (the oracle's resnapshot rules); the same command
      delivered again, before and after a restart of the fleet, is counted a duplicate and acts not at all;
    * ``integrations remove X``: no request for X at the simulator, no event for its changes;
    * ``integrations pause Y``, both replicas stopped by SIGTERM and two new ones started: Y is still paused (no
      request), X still removed (RELAY_INTEGRATIONS, which names it, does not seed it back);
    * a command for an integration the registry does not hold, or holds removed: exit 9, the message naming it;
    * ``resume Y`` and ``integrations add X`` again: each polled within one poll interval of the write, X resuming
      where it was (its changes meanwhile published, nothing re-announced).

    Then the oracle judges every event: nothing lost, duplicated or invalid across all of it."""
    partitions = 2
    removed, paused, resnapshotted, added = spread_integrations(4, partitions, prefix="personio:registry")
    seeded = [removed, paused, resnapshotted]
    async with fault_world(
        bootstrap_servers, topic_prefix, tmp_path, users=scale.registry_users, integrations=[*seeded, added]
    ) as world:
        world.env_overrides["RELAY_INTEGRATIONS"] = ",".join(seeded)
        world.env_overrides["RELAY_POLL_INTERVAL_SECONDS"] = str(scale.registry_interval)
        world.env_overrides["RELAY_PAGE_SIZE"] = "100"
        oracle = Oracle(world.sim, world.integrations)
        await world.ensure_topics()
        world.sim.start_churn(scale.churn / 2)
        fleet = Fleet(partitions)
        fleet.replicas.extend([await world.relay(), await world.relay()])
        await fleet.wait_settled()
        figures: dict[str, object] = {}
        async with world.collector() as events:
            assert not [r for r in await world.requests_after(0) if r["integration"] == added]

            # Added at runtime: polled, and snapshotted, within one poll interval of the write.
            run = await world.cli("integrations", "add", added, "--json")
            assert run.code == 0, run
            written_at = log_time(run.json()["entry"]["added_at"])
            snapshot_at = await _snapshot_committed(fleet, added)
            first_request = min(log_time(r["time"]) for r in await world.requests_after(0) if r["integration"] == added)
            within = scale.registry_interval * (1 + float(BASE_ENV["RELAY_POLL_JITTER_FRACTION"]))
            figures.update(
                add_to_first_request=f"{first_request - written_at:.2f}s",
                add_to_snapshot=f"{snapshot_at - written_at:.2f}s",
            )
            assert first_request - written_at <= within, figures
            assert snapshot_at - written_at <= within, figures
            await _published(events, world, added)

            # Resnapshot: exactly the live records once; the same command again acts not at all.
            with oracle.resnapshot(resnapshotted, USERS):
                run = await world.cli("resnapshot", resnapshotted, "--json")
            assert run.code == 0, run
            ack = run.json()
            assert ack["ack"]["outcome"] == "ok", run
            assert "resnapshot done" in ack["ack"]["message"], run
            await _deliver_again(world, resnapshotted, ack["command_id"], partitions)
            await _duplicates_counted(fleet, 1)

            # Removed: no more requests, nothing published of its changes.
            run = await world.cli("integrations", "remove", removed)
            assert run.code == 0, run
            assert f"removed {removed}" in run.stdout, run
            await wait_for(_not_polled(fleet, removed), 30, f"{removed} to stop being polled")
            mark = await world.last_request()
            unpublished = [_change(world, removed)]
            await _polled_again(world, mark, [paused, resnapshotted, added])

            # Paused, then the fleet restarted: still paused, and the removed one still removed.
            run = await world.cli("integrations", "pause", paused)
            assert run.code == 0, run
            await wait_for(_paused_and_idle(fleet, paused), 30, f"{paused} to be paused")
            paused_mark = await world.last_request()
            unpublished.append(_change(world, paused))
            for replica in list(fleet.replicas):
                code, _ = await replica.terminate()
                assert code == 0, replica.tail()
                fleet.replicas.remove(replica)
            fleet.replicas.extend([await world.relay(), await world.relay()])
            await fleet.wait_settled()
            assert await _is_paused(fleet, paused)
            await _deliver_again(world, resnapshotted, ack["command_id"], partitions)  # the new owner knows it
            await _duplicates_counted(fleet, 1)
            await _polled_again(world, mark, [resnapshotted, added])
            for integration, since in ((removed, mark), (paused, paused_mark)):
                asked = [r["id"] for r in await world.requests_after(since) if r["integration"] == integration]
                assert not asked, f"{integration} was asked for after request {since}: requests {asked}"
            await events.drain()
            for integration, entity, record in unpublished:  # what each would have published, had it been polled
                key = f"{integration}:{entity}"
                assert not [e for e in events.events if e.key == key and e.data["record"] == record], key

            # Commands for what the registry does not poll: exit 9, saying why.
            for argv, message in (
                (("resnapshot", "personio:nobody"), "personio:nobody is not in the registry of integrations"),
                (("resnapshot", removed), f"{removed} is removed from the registry"),
                (("integrations", "pause", "personio:nobody"), "personio:nobody"),
            ):
                run = await world.cli(*argv, "--timeout", "30")
                assert run.code == EXIT_UNKNOWN_INTEGRATION, run
                assert message in run.stderr, run

            # Resumed, and the removed one added again: each polled within one interval of the write (the latter
            # resuming where it was: the oracle finds nothing re-announced).
            for integration, action, figure in ((paused, "resume", "resume"), (removed, "add", "readd")):
                mark = await world.last_request()
                run = await world.cli("integrations", action, integration, "--json")
                assert run.code == 0, run
                written_at = log_time(run.json()["entry"]["updated_at"])
                await _polled_again(world, mark, [integration], times=1)
                requests = await world.requests_after(mark)
                asked_at = min(log_time(r["time"]) for r in requests if r["integration"] == integration)
                figures[f"{figure}_to_first_request"] = f"{asked_at - written_at:.2f}s"
                assert asked_at - written_at <= within, figures
        verdict = await finish(world, oracle, "registry", **figures)
    report(verdict)


async def _snapshot_committed(fleet: Fleet, integration: str, timeout: float = 30) -> float:
    """When (wall clock) a replica's ``/status`` first showed the integration's snapshot committed."""

    async def done() -> bool:
        statuses = await fleet.look()
        return any(
            pair["integration"] == integration and pair["snapshot_done"]
            for status in statuses
            if status is not None
            for pair in status["pairs"]
        )

    await wait_for(done, timeout, f"the snapshot of {integration}", interval=0.02)
    return time.time()


async def _published(events: Collector, world: FaultWorld, integration: str, timeout: float = 30) -> None:
    """Wait until a created event reached Kafka for every record of ``integration`` live now (the snapshot's)."""

    async def done() -> bool:
        await events.drain()
        created = {e.entity for e in events.events if e.data["integration_id"] == integration and e.kind == "created"}
        return all(r["id"] in created for r in world.sim.records(integration, USERS, include_deleted=False))

    await wait_for(done, timeout, f"the snapshot of {integration} on Kafka")


async def _deliver_again(world: FaultWorld, integration: str, command_id: str, partitions: int) -> None:
    """The record of a command already sent, sent once more (as a producer retrying it would)."""
    again = ControlAction("resnapshot", integration, (), None, round(time.time() * 1000), command_id)
    producer = AIOKafkaProducer(bootstrap_servers=world.bootstrap_servers)
    await producer.start()
    try:
        topic = f"{world.topic_prefix}.relay-control"
        partition = partition_for_key(integration.encode(), partitions)
        await producer.send_and_wait(topic, again.encode(), key=integration.encode(), partition=partition)
    finally:
        await producer.stop()


async def _duplicates_counted(fleet: Fleet, count: int, timeout: float = 30) -> None:
    """Wait until the replicas running counted ``count`` resnapshot commands as duplicates, between them."""

    async def counted() -> bool:
        labels = {"kind": "resnapshot", "outcome": "duplicate"}
        return sum([await r.metric("relay_control_actions_total", **labels) for r in fleet.replicas]) >= count

    await wait_for(counted, timeout, f"{count} duplicate resnapshot command(s) to be counted")


def _not_polled(fleet: Fleet, integration: str) -> Callable[[], Awaitable[bool]]:
    """No replica polls the integration any more (its pairs dropped once their poll in progress ended)."""

    async def check() -> bool:
        statuses = await fleet.look()
        return all(
            status is not None and all(pair["integration"] != integration for pair in status["pairs"])
            for status in statuses
        )

    return check


def _paused_and_idle(fleet: Fleet, integration: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await _is_paused(fleet, integration, idle=True)

    return check


async def _is_paused(fleet: Fleet, integration: str, *, idle: bool = False) -> bool:
    """Its owner holds every pair of the integration paused (and, ``idle``, none polling: a poll in progress
    finishes)."""
    pairs = [
        pair
        for status in await fleet.look()
        if status is not None
        for pair in status["pairs"]
        if pair["integration"] == integration
    ]
    return bool(pairs) and all(pair["paused"] and not (idle and pair["polling"]) for pair in pairs)


def _change(world: FaultWorld, integration: str) -> tuple[str, str, dict[str, Any]]:
    """Change a live record of the integration: (integration, id, record) that a poll would publish."""
    entity = next(iter(world.sim.records(integration, USERS, include_deleted=False)))["id"]
    record = world.sim.update(integration, USERS, entity, {"first_name": "Unpolled"})
    return integration, entity, record


async def _polled_again(world: FaultWorld, mark: int, integrations: list[str], times: int = 3) -> None:
    """Wait until the simulator answered each integration ``times`` more requests after request ``mark``: time
    enough for any other integration owned by the same replicas to have been asked as often, were it polled."""

    async def polled() -> bool:
        asked = Counter(r["integration"] for r in await world.requests_after(mark))
        return all(asked[integration] >= times for integration in integrations)

    await wait_for(polled, 60, f"{', '.join(integrations)} to be polled {times} more time(s)", interval=0.2)

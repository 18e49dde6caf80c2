"""Helpers of the fault-injection suite: the relay as a real subprocess (so SIGKILL and SIGTERM are real), the
simulator in the test's event loop, and readers of what reached Kafka."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import os
import signal
import socket
import sys
import time
from asyncio.subprocess import PIPE
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer

from relay.config import load_config
from relay.metrics import Metrics
from relay.partitioning import partition_for_key
from relay.simulator import Simulator, SimulatorServer
from relay.sink import KafkaSink
from relay.state import Checkpoint, StateStore
from relay.state_topic import restore
from tests.faults.oracle import Oracle
from tests.integration.harness import Collector, collect

REPO = Path(__file__).resolve().parents[2]
ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
USERS = "ats/users"

SOAK = os.environ.get("RELAY_SOAK", "") not in ("", "0", "false", "no")

BASE_ENV = {
    "RELAY_RESOURCES": USERS,
    "RELAY_PAGE_SIZE": "20",
    "RELAY_POLL_INTERVAL_SECONDS": "0.5",
    "RELAY_POLL_JITTER_FRACTION": "0.2",
    "RELAY_OVERLAP_SECONDS": "2",
    "RELAY_RECONCILE_INTERVAL_SECONDS": "3",
    "RELAY_SOURCE_CONNECT_TIMEOUT_SECONDS": "2",
    "RELAY_SOURCE_READ_TIMEOUT_SECONDS": "2",
    "RELAY_SOURCE_BACKOFF_INITIAL_SECONDS": "0.05",
    "RELAY_SOURCE_BACKOFF_MAX_SECONDS": "0.5",
    "RELAY_INTEGRATION_BACKOFF_MAX_SECONDS": "2",
    "RELAY_TOPIC_PARTITIONS": "2",
    "RELAY_STATE_TOPIC_PARTITIONS": "2",
    "RELAY_HTTP_HOST": "127.0.0.1",
    "RELAY_LOG_FORMAT": "json",
    "RELAY_FATAL_EXIT_DELAY_SECONDS": "0",
    # Every `relay run` is a replica of the fleet: one SIGKILLed keeps its partitions until the group's session timeout
    # expires (its successor waits that long), so the suite uses the shortest the relay accepts.
    "RELAY_GROUP_SESSION_TIMEOUT_SECONDS": "6",
}


def log_time(stamp: str) -> float:
    """A relay log line's ``time`` (``2026-11-27T08:01:29.196Z``, UTC, milliseconds) in seconds since the epoch."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(fraction or 0) / 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05) -> None:
    """Wait until the (async) condition holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


class RelayProcess:
    """``python -m relay run`` with its output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = int(env["RELAY_HTTP_PORT"])
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.base = f"http://127.0.0.1:{self.port}"
        self._http: aiohttp.ClientSession | None = None
        # Wall-clock times (time.time(), the clock of the relay's log lines and of the records it writes).
        self.exited_at: float | None = None  # seen dead after a SIGKILL: it wrote nothing after this
        self.paused_at: float | None = None  # SIGSTOP
        self.resumed_at: float | None = None  # SIGCONT

    @property
    def name(self) -> str:
        return self.log_path.stem

    async def start(self) -> RelayProcess:
        log = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay", "run", env=self.env, cwd=REPO, stdout=log, stderr=log
            )
        finally:
            log.close()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        return self

    @property
    def returncode(self) -> int | None:
        assert self.process is not None
        return self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def entries(self) -> list[dict[str, Any]]:
        """The relay's JSON log lines, parsed, with ``at`` (the line's time, in seconds since the epoch) added."""
        entries = []
        for line in self.log().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # not a log line (a Python warning, say)
            if isinstance(entry, dict) and "time" in entry:
                entry["at"] = log_time(entry["time"])
                entries.append(entry)
        return entries

    async def get(self, path: str) -> tuple[int, str] | None:
        """(status, body) of a GET to the relay's HTTP server, or None if it does not answer."""
        assert self._http is not None
        try:
            async with self._http.get(self.base + path) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def ready(self) -> bool:
        answer = await self.get("/readyz")
        return answer is not None and answer[0] == 200

    async def wait_ready(self, timeout: float = 60) -> None:
        async def ready_or_dead() -> bool:
            if not self.alive():
                raise AssertionError(f"the relay exited with {self.returncode} before it was ready:\n{self.tail()}")
            return await self.ready()

        await wait_for(ready_or_dead, timeout, "the relay to be ready")

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` with these labels (0 if absent)."""
        answer = await self.get("/metrics")
        if answer is None:
            return 0.0
        total = 0.0
        for line in answer[1].splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    async def status(self) -> dict[str, Any] | None:
        answer = await self.get("/status")
        return None if answer is None else orjson.loads(answer[1])

    def count_log(self, event: str, since: float = 0.0) -> int:
        """How many log lines say ``event`` (at or after ``since``)."""
        return sum(1 for entry in self.entries() if entry["event"] == event and entry["at"] >= since)

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)

    async def kill_and_wait(self, timeout: float = 10) -> None:
        """SIGKILL, and wait until it is gone (``exited_at``: nothing it wrote is later than this)."""
        self.kill()
        assert await self.wait_exit(timeout) == -signal.SIGKILL
        self.exited_at = time.time()

    def pause(self) -> None:
        """SIGSTOP: the process stays, frozen (no heartbeats, no commits) until :meth:`resume`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused_at = time.time()

    def resume(self) -> None:
        assert self.process is not None
        self.resumed_at = time.time()
        self.process.send_signal(signal.SIGCONT)

    async def terminate(self, timeout: float = 30) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took to exit)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout)
        return code, time.monotonic() - started

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)  # a stopped (SIGSTOP) process dies of it too
        if self.process is not None:
            await self.process.wait()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


SIMULATOR_KEEPS = 1000  # API requests /_sim/interactions remembers


@dataclass(frozen=True)
class CliRun:
    """A finished ``relay`` command: its arguments, exit code and output."""

    argv: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.stdout.strip(), f"relay {' '.join(self.argv)} printed nothing: exit {self.code}, {self.stderr}"
        return orjson.loads(self.stdout)

    def __str__(self) -> str:
        return f"relay {' '.join(self.argv)}: exit {self.code}\n{self.stdout}{self.stderr}"


@dataclass
class FaultWorld:
    """The simulator (in this event loop), the Kafka broker, and the relay processes a scenario runs."""

    sim: Simulator
    server: SimulatorServer
    bootstrap_servers: str
    topic_prefix: str
    integrations: list[str]
    log_dir: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    processes: list[RelayProcess] = field(default_factory=list)

    @property
    def event_topics(self) -> list[str]:
        return [f"{self.topic_prefix}.{USERS.replace('/', '.')}"]

    @property
    def state_topic(self) -> str:
        return f"{self.topic_prefix}.relay-state"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(BASE_ENV)
        env.update(
            {
                "RELAY_SOURCE_URL": self.server.url,
                "RELAY_API_KEY": self.sim.api_key,
                "RELAY_INTEGRATIONS": ",".join(self.integrations),
                "RELAY_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
                "RELAY_TOPIC_PREFIX": self.topic_prefix,
                "RELAY_HTTP_PORT": str(free_port()),
            }
        )
        env.update(self.env_overrides)
        env.update({f"RELAY_{k.upper()}": v for k, v in overrides.items()})
        return env

    async def relay(self, **overrides: str) -> RelayProcess:
        """Start a relay process (not waiting for it to be ready)."""
        number = len(self.processes)
        process = RelayProcess(self.env(**overrides), self.log_dir / f"relay-{number:03d}.log")
        self.processes.append(process)
        return await process.start()

    async def close(self) -> None:
        for process in self.processes:
            await process.close()

    async def ensure_topics(self) -> None:
        """Create the topics as the relay would (so consumers can subscribe before a relay ever ran)."""
        config = load_config(None, self.env())
        await KafkaSink(config, Metrics(config.resources)).ensure_topics()

    @property
    def state_partitions(self) -> int:
        return int(self.env()["RELAY_STATE_TOPIC_PARTITIONS"])

    async def committed_state(self) -> StateStore:
        """The state as a restarting relay would restore it (read_committed, to the end of the state topic)."""
        store = StateStore(self.state_partitions)
        await restore(store, self.state_topic, {"bootstrap_servers": self.bootstrap_servers})
        return store

    async def checkpoint(self, integration: str, resource: str = USERS) -> Checkpoint:
        return (await self.committed_state()).pair(integration, resource).checkpoint

    async def interactions(self, limit: int = 1000) -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.server.control_url}/interactions", params={"limit": str(limit)}) as response,
        ):
            body: dict[str, Any] = await response.json()
            return list(body["interactions"])

    async def requests_after(self, mark: int) -> list[dict[str, Any]]:
        """The API requests the simulator answered after the one numbered ``mark`` (``/_sim/interactions``, which
        keeps the last 1000: fails if more came since, so that a request is never missed)."""
        recent = await self.interactions(limit=SIMULATOR_KEEPS)
        if len(recent) == SIMULATOR_KEEPS and recent[0]["id"] > mark + 1:
            raise AssertionError(f"more than {SIMULATOR_KEEPS} requests since request {mark}: look more often")
        return [interaction for interaction in recent if interaction["id"] > mark]

    async def last_request(self) -> int:
        """The number of the simulator's last API request (0: none yet), a mark for :meth:`requests_after`."""
        recent = await self.interactions(limit=1)
        return int(recent[-1]["id"]) if recent else 0

    async def cli(self, *argv: str, timeout: float = 90) -> CliRun:
        """``python -m relay ARGV`` as an operator runs it: a process of its own with the fleet's configuration, but
        without the source's URL and API key (the commands talk only to Kafka)."""
        env = {k: v for k, v in self.env().items() if k not in ("RELAY_API_KEY", "RELAY_SOURCE_URL")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", *argv, env=env, cwd=REPO, stdout=PIPE, stderr=PIPE
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        assert process.returncode is not None
        return CliRun(argv, process.returncode, stdout.decode(), stderr.decode())

    @asynccontextmanager
    async def collector(self) -> AsyncIterator[Collector]:
        async with collect(self.bootstrap_servers, self.event_topics) as events:
            yield events


@asynccontextmanager
async def fault_world(
    bootstrap_servers: str,
    topic_prefix: str,
    log_dir: Path,
    *,
    users: int,
    integrations: list[str] | None = None,
    seed: int = 11,
    **sim_options: Any,
) -> AsyncIterator[FaultWorld]:
    integrations = integrations or [ACME, GLOBEX]
    sim = Simulator(api_key="faults-key", integrations=integrations, users=users, seed=seed, **sim_options)
    log_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 -- a local directory, once per test
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        world = FaultWorld(sim, server, bootstrap_servers, topic_prefix, integrations, log_dir)
        try:
            yield world
        finally:
            await world.close()
            await sim.stop_churn()


class UncommittedWatcher:
    """A ``read_uncommitted`` consumer of the event and state topics: it sees records of transactions that are still
    open or were aborted, which is how the suite times kills "mid-transaction" and shows what such consumers see."""

    def __init__(self, bootstrap_servers: str, topics: list[str], event_topics: list[str]) -> None:
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap_servers,
            isolation_level="read_uncommitted",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=1000,
        )
        self._event_topics = set(event_topics)
        self.records = 0
        self.by_partition: Counter[tuple[str, int]] = Counter()  # records seen per (topic, partition)
        self.event_ids: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._consumer.start()
        except BaseException:
            await self._consumer.stop()
            raise
        self._task = asyncio.create_task(self._run(), name="uncommitted watcher")

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=20)
            for records in batches.values():
                for record in records:
                    self.records += 1
                    self.by_partition[record.topic, record.partition] += 1
                    if record.topic in self._event_topics and record.value is not None:
                        self.event_ids.append(str(orjson.loads(record.value)["id"]))

    async def wait_new_records(self, timeout: float, where: Collection[tuple[str, int]] | None = None) -> bool:
        """True once a record arrives that was not there when called (in one of the partitions ``where``, if given);
        False after ``timeout``."""

        def seen() -> int:
            return self.records if where is None else sum(self.by_partition[tp] for tp in where)

        before = seen()
        deadline = time.monotonic() + timeout
        while seen() == before:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


async def converge(
    oracle: Oracle, events: Collector, relays: Sequence[RelayProcess], timeout: float, quiet_seconds: float = 2.0
) -> None:
    """Wait until every entity's final state has been published (by ``relays``, the replicas running), then until
    nothing more arrives."""

    async def caught_up() -> bool:
        for relay in relays:
            if not relay.alive():
                raise AssertionError(f"{relay.name} exited with {relay.returncode}:\n{relay.tail()}")
        before = len(events.events)
        await events.drain(timeout_ms=500)
        # The oracle's check is not cheap with many records, and the simulator shares this event loop: only judge
        # once events stopped arriving for a moment, not while a snapshot is still streaming in.
        return len(events.events) == before and oracle.lost(events.events) == 0

    await wait_for(caught_up, timeout, "the relay to publish every final state", interval=0.2)
    await events.settle(quiet_seconds)


def spread_integrations(count: int, partitions: int, prefix: str = "personio:fleet") -> list[str]:
    """``count`` integration ids spread evenly over the state partitions (the relay places an integration in
    ``murmur2(id) % partitions``), so that every replica of a fleet has integrations to poll."""
    quota = {p: count // partitions + (1 if p < count % partitions else 0) for p in range(partitions)}
    chosen: list[str] = []
    number = 0
    while len(chosen) < count:
        candidate = f"{prefix}{number}"
        number += 1
        partition = partition_for_key(candidate.encode(), partitions)
        if quota[partition] > 0:
            quota[partition] -= 1
            chosen.append(candidate)
    return chosen


class Fleet:
    """The replicas of a scenario that are running, as their ``/status`` shows them.

    Every look also records which replica said it owned each partition in each generation of the group: two
    replicas owning one partition in one generation is a ``conflict`` (the group assigns a partition to one member
    per generation, and a replica's claim or handover happens inside one).
    """

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.replicas: list[RelayProcess] = []
        self.owners: dict[int, dict[int, str]] = {}  # generation -> partition -> replica
        self.conflicts: list[str] = []

    async def look(self) -> list[dict[str, Any] | None]:
        statuses = await asyncio.gather(*(replica.status() for replica in self.replicas))
        for replica, status in zip(self.replicas, statuses, strict=True):
            fleet = None if status is None else status["fleet"]
            if fleet is None or fleet["generation"] is None:
                continue
            owners = self.owners.setdefault(fleet["generation"], {})
            for partition in fleet["owned_partitions"]:
                owner = owners.setdefault(partition, replica.name)
                if owner != replica.name:
                    self.conflicts.append(
                        f"generation {fleet['generation']}: partition {partition} owned by {owner} and {replica.name}"
                    )
        return statuses

    async def settled(self) -> bool:
        """Every replica is ready, all are in one generation, and they own every partition once between them."""
        for replica in self.replicas:
            if not replica.alive():
                raise AssertionError(f"{replica.name} exited with {replica.returncode}:\n{replica.tail()}")
        statuses = await self.look()
        if any(status is None or not status["ready"] for status in statuses):
            return False
        fleets = [status["fleet"] for status in statuses if status is not None]
        if len({fleet["generation"] for fleet in fleets}) != 1 or fleets[0]["generation"] is None:
            return False
        owned = [p for fleet in fleets for p in fleet["owned_partitions"]]
        return sorted(owned) == list(range(self.partitions))

    async def wait_settled(self, timeout: float = 90) -> None:
        await wait_for(self.settled, timeout, "the replicas to split every state partition between them", 0.2)

    async def owned_by(self, replica: RelayProcess) -> set[int]:
        status = await replica.status()
        return set() if status is None else set(status["fleet"]["owned_partitions"])

    @property
    def generations(self) -> int:
        return len(self.owners)

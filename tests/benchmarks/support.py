"""What every benchmark needs: a real broker, the simulator and the relay as separate processes, their CPU and
memory read from ``/proc``, the relay's metrics, and small statistics helpers.

The relay and the simulator run as subprocesses (``python -m relay run`` / ``python -m relay simulate``) so that the
CPU and resident memory read for the relay are the relay's alone: the simulator, the broker's JVM and this
orchestrating process are other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
TMP = RESULTS / "tmp"  # logs of the processes of the last run (git ignores it)
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
API_KEY = "sim-api-key"
RESOURCE = "ats/users"

sys.path.insert(0, str(REPO / "deploy" / "local-kafka"))
from local_kafka import LocalKafka  # noqa: E402


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_busy_seconds() -> float:
    """CPU seconds the machine's cores have spent busy since boot, summed over the cores (``/proc/stat``: every state
    but idle and iowait; guest time is already inside user time). Over a window, that minus what the benchmark's own
    processes used is what other processes on the machine took from the same cores."""
    with open("/proc/stat") as f:
        fields = [int(value) for value in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


def load_average() -> str:
    """``uptime``'s load averages (1, 5, 15 min), to report beside the figures."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation), ``fraction`` in (0, 1]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return float(ordered[rank - 1])


# ------------------------------------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (``VmRSS`` of ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ------------------------------------------------------------------------------------------------------ Kafka


@contextlib.contextmanager
def broker(port: int) -> Any:
    """A fresh single-node Kafka (empty data directory) on ``port``, removed afterwards."""
    TMP.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="relay-bench-kafka-"))
    kafka = LocalKafka(port=port, data_dir=data_dir, log_file=TMP / "kafka.log")
    log(f"starting Kafka on 127.0.0.1:{port} (data in {data_dir})")
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def topic_partitions(bootstrap_servers: str, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of ``topics``, which must exist (a consumer's ``end_offsets`` waits forever for one that
    does not)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    found = {t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described if not t["error_code"]}
    missing = [topic for topic in topics if not found.get(topic)]
    if missing:
        raise RuntimeError(f"no such topic: {', '.join(missing)}")
    return [TopicPartition(topic, partition) for topic in topics for partition in found[topic]]


# -------------------------------------------------------------------------------------------------- processes


class Process:
    """A child process whose output goes to a log file in ``results/tmp``."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str] | None = None, cwd: Path = REPO) -> None:
        TMP.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = TMP / f"{name}.log"
        self._log: TextIO = open(self.log_path, "w")  # noqa: SIM115 - closed by stop()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if not self.alive():
            tail = "\n".join(self.output().splitlines()[-30:])
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def terminate(self) -> None:
        """Send SIGTERM without waiting: stopping several processes at once, then :meth:`stop` each."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()


class SimulatorProcess(Process):
    """``relay simulate`` with only ``ats/users`` records, no churn and no effective rate limit."""

    def __init__(self, integrations: Sequence[str], users: int, *, churn: float = 0.0, name: str = "simulator"):
        self.port = free_port()
        self.integrations = list(integrations)
        argv = [PYTHON, "-m", "relay", "simulate", "--port", str(self.port), "--users", str(users)]
        argv += ["--candidates", "0", "--jobs", "0", "--employees", "0", "--churn", str(churn)]
        argv += ["--rate-limit", str(10**9), "--seed", "1", "--integrations", ",".join(integrations)]
        super().__init__(name, argv)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/_sim"

    async def wait_serving(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while "serving" not in self.output():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start within {timeout:.0f}s")
            await asyncio.sleep(0.2)

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, f"{self.control_url}/{path}", data=orjson.dumps(body) if body else None) as r,
        ):
            payload = orjson.loads(await r.read())
            if r.status >= 400:
                raise RuntimeError(f"simulator {method} {path}: {r.status} {payload}")
            return payload

    async def set_state(self, integration: str, state: str) -> None:
        await self.control("PUT", f"integrations/{integration}/state", {"state": state})

    async def live_records(self, integration: str) -> int:
        state = await self.control("GET", "state")
        entry = state["integrations"][integration]
        return int(entry["records"][RESOURCE]) - int(entry["deleted"][RESOURCE])

    async def all_records(self, integration: str) -> int:
        state = await self.control("GET", "state")
        return int(state["integrations"][integration]["records"][RESOURCE])


@dataclass
class RelaySettings:
    bootstrap_servers: str
    source_url: str
    integrations: Sequence[str]
    topic_prefix: str
    extra: dict[str, str] = field(default_factory=dict)

    def environ(self, http_port: int) -> dict[str, str]:
        env = {
            "RELAY_SOURCE_URL": self.source_url,
            "RELAY_API_KEY": API_KEY,
            "RELAY_INTEGRATIONS": ",".join(self.integrations),
            "RELAY_RESOURCES": RESOURCE,
            "RELAY_PAGE_SIZE": "250",
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "RELAY_TOPIC_PREFIX": self.topic_prefix,
            "RELAY_HTTP_HOST": "127.0.0.1",
            "RELAY_HTTP_PORT": str(http_port),
            "RELAY_LOG_FORMAT": "json",
            "RELAY_RECONCILE_INTERVAL_SECONDS": "0",
        }
        env.update(self.extra)
        return env


class RelayProcess(Process):
    """``python -m relay run`` with the given settings; its HTTP server on a port of its own. ``tree``: the source
    tree the relay's code is imported from (``python -m`` puts its current directory first on the path)."""

    def __init__(self, settings: RelaySettings, name: str = "relay", tree: Path = REPO) -> None:
        self.http_port = free_port()
        self.settings = settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(settings.environ(self.http_port))
        super().__init__(name, [PYTHON, "-m", "relay", "run"], env, cwd=tree)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.base_url}/readyz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def wait_ready(self, timeout: float = 300.0, interval: float = 0.02) -> float:
        """Wait until ``/readyz`` answers 200; return the seconds since the process was started."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while not await self.ready(session):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the relay was not ready within {timeout:.0f}s")
                await asyncio.sleep(interval)
        return time.monotonic() - self.started

    async def metrics(self) -> Metrics:
        async with aiohttp.ClientSession() as session, session.get(f"{self.base_url}/metrics") as response:
            return Metrics.parse(await response.text())

    async def status(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.base_url}/status") as response:
            return dict(orjson.loads(await response.read()))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)


def stop_all(processes: Iterable[Process]) -> None:
    """SIGTERM to every process first, then wait for each: replicas of a fleet stop together, instead of each one's
    partitions moving to the others while they wait for their turn."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()


async def fleet_settled(relays: Sequence[RelayProcess], partitions: int) -> list[dict[str, Any]] | None:
    """Each replica's ``/status`` once the group has settled, else None: every replica ready (its assigned partitions
    restored), all in one generation, and the partitions they own disjoint and all of them (``fleet.owned_partitions``
    summing to the partition count)."""
    statuses = []
    for relay in relays:
        relay.check_alive()
        try:
            status = await relay.status()
        except (aiohttp.ClientError, OSError):
            return None
        if not status.get("ready"):
            return None
        statuses.append(status)
    owned = sorted(p for status in statuses for p in status["fleet"]["owned_partitions"])
    generations = {status["fleet"]["generation"] for status in statuses}
    if owned != list(range(partitions)) or len(generations) != 1 or None in generations:
        return None
    return statuses


@dataclass
class Metrics:
    """A scrape of ``/metrics``: sample name and labels -> value."""

    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples = [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
        return cls(samples)

    def sum(self, name: str, **labels: str) -> float:
        """The sum of every sample of ``name`` whose labels include ``labels``."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )


async def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Call the async ``condition`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)

"""Fleet idle cost (target 4): many integrations, nothing changing, poll interval 10 s.

The simulator (a subprocess) serves M integrations of a few users each, without churn. The relay (a subprocess)
polls all of them (``ats/users``) every 10 s. Once every snapshot is done and one interval has passed, each run is
a window in which the relay's CPU time (``/proc/PID/stat``) and its own counters are read at both ends:

* CPU as a share of one core;
* source requests per poll, and polls per pair per interval (target: one request per pair and interval);
* Kafka transactions (``relay_kafka_transaction_duration_seconds_count``; target: none when nothing changed).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from tests.benchmarks.support import (
    RelayProcess,
    RelaySettings,
    SimulatorProcess,
    broker,
    log,
    median,
    wait_for,
)

POLL_INTERVAL = 10.0
USERS_PER_INTEGRATION = 5


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

"""Idle replica, A/B: the CPU of one idle ``relay run`` replica per variant, measured side by side.

Issue 19's target 3 (at most 3% of a core per 1,000 idle integrations at a 10 s interval) is a few tenths of a percent
from what a change can save, on a machine that other work keeps busy. Runs of the ``fleet-scale`` benchmark one after
the other see the machine's load change more than that. Here every variant runs at once, one replica each (a topic
prefix, and so a consumer group, of its own) polling the same simulator's integrations, and each window reads the
CPU of every variant's relay process over the same seconds (``/proc/PID/stat``, the relay process alone): each
window is one A/B comparison under one load.

A variant is ``NAME=TREE[,KEY=VALUE...]``: the relay's code is imported from the source tree ``TREE`` (the current
directory of its process, so ``git archive`` of another commit unpacked somewhere compares that commit), with the
given extra environment variables.

    .venv/bin/python -m tests.benchmarks.bench_idle_ab --variant base=/tmp/base --variant new=. --windows 4

The windows start once every pair's snapshot is done and one interval's worth of polls went by without a
transaction (as in :mod:`tests.benchmarks.bench_fleet`); each window also checks one request per poll, polls per pair
per interval and no transaction, per variant.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.benchmarks import bench_fleet
from tests.benchmarks.support import (
    RelayProcess,
    RelaySettings,
    SimulatorProcess,
    broker,
    free_port,
    load_average,
    log,
    median,
    stop_all,
    wait_for,
)


@dataclass
class Variant:
    name: str
    tree: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, _, rest = spec.partition("=")
        tree, *pairs = rest.split(",")
        env = dict(pair.split("=", 1) for pair in pairs)
        return cls(name, Path(tree or ".").resolve(), env)


async def _settle(relays: list[RelayProcess], size: int) -> None:
    for relay in relays:
        await relay.wait_ready()

    async def snapshots_done() -> bool:
        metrics = [await relay.metrics() for relay in relays]
        return all(m.sum("relay_polls_total", kind="snapshot", outcome="success") >= size for m in metrics)

    await wait_for(snapshots_done, 1800, f"{size} snapshots per variant", interval=2.0)
    for relay in relays:
        await bench_fleet._wait_idle([relay], size, 600)  # the fleet benchmark's own notion of idle


async def _window(relays: list[RelayProcess], size: int, seconds: float) -> list[dict[str, float]]:
    before = [await relay.metrics() for relay in relays]
    cpu_before = [relay.cpu_seconds() for relay in relays]
    started = time.monotonic()
    await asyncio.sleep(seconds)  # the measured window
    cpu = [relay.cpu_seconds() - b for relay, b in zip(relays, cpu_before, strict=True)]
    elapsed = time.monotonic() - started
    after = [await relay.metrics() for relay in relays]
    rows = []
    for b, a, c in zip(before, after, cpu, strict=True):
        polls = a.sum("relay_polls_total", kind="incremental", outcome="success") - b.sum(
            "relay_polls_total", kind="incremental", outcome="success"
        )
        requests = a.sum("relay_source_requests_total") - b.sum("relay_source_requests_total")
        transactions = a.sum("relay_kafka_transaction_duration_seconds_count") - b.sum(
            "relay_kafka_transaction_duration_seconds_count"
        )
        rows.append(
            {
                "cpu_share": c / elapsed,
                "requests_per_poll": requests / polls if polls else float("nan"),
                "polls_per_pair_per_interval": polls / size / (elapsed / bench_fleet.POLL_INTERVAL),
                "transactions": transactions,
            }
        )
    return rows


async def run(variants: list[Variant], size: int, windows: int, seconds: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    integrations = [f"fleet:{i:05d}" for i in range(size)]
    results: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    with broker(free_port()) as kafka:
        sim = SimulatorProcess(integrations, users=bench_fleet.USERS_PER_INTEGRATION, name="simulator-idle-ab")
        relays: list[RelayProcess] = []
        try:
            await sim.wait_serving()
            for variant in variants:
                settings = RelaySettings(
                    bootstrap_servers=kafka.bootstrap_servers,
                    source_url=sim.url,
                    integrations=integrations,
                    topic_prefix=f"ab{tag}{variant.name}",
                    extra={"RELAY_POLL_INTERVAL_SECONDS": str(bench_fleet.POLL_INTERVAL), **variant.env},
                )
                relays.append(RelayProcess(settings, name=f"relay-ab-{variant.name}", tree=variant.tree))
            await _settle(relays, size)
            log(f"idle A/B: {len(variants)} variants settled; load average {load_average()}")
            for window in range(windows):
                rows = await _window(relays, size, seconds)
                for variant, row in zip(variants, rows, strict=True):
                    results[variant.name].append(row)
                log(
                    f"window {window}: "
                    + "; ".join(
                        f"{v.name} {r['cpu_share']:.2%} ({r['requests_per_poll']:.3f} req/poll, "
                        f"{r['polls_per_pair_per_interval']:.3f} polls/pair/interval, {r['transactions']:.0f} txn)"
                        for v, r in zip(variants, rows, strict=True)
                    )
                    + f"; load average {load_average()}"
                )
        finally:
            stop_all(relays)
            sim.stop()
    for variant in variants:
        shares = [r["cpu_share"] for r in results[variant.name]]
        log(f"{variant.name}: median {median(shares):.2%} of a core; windows {', '.join(f'{s:.2%}' for s in shares)}")
    return {"integrations": size, "window_seconds": seconds, "variants": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", type=Variant.parse, required=True, help="NAME=TREE[,K=V...]")
    parser.add_argument("--integrations", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--window-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    asyncio.run(run(args.variant, args.integrations, args.windows, args.window_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

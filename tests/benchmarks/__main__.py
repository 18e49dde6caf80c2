"""Run the benchmarks: ``python -m tests.benchmarks [--quick] [--only NAME ...] [--runs R] [--size N ...]``.

``--quick`` uses small sizes (N up to 10k, 100 integrations, short windows) for development; without it the full
set runs (N up to 1M, 1,000 and 5,000 integrations), which takes the better part of an hour on 2 cores. ``--only``
runs some benchmarks and merges their figures into the existing ``results/latest.json``. ``--size`` sets the N of the
snapshot benchmark (repeatable) and the records of the profile (the largest N): ``--only profile`` takes a few minutes
at its default 100k, ``--only profile --size 1000000`` the same measures at 1M. ``fleet-scale`` (about 15 minutes)
snapshots 40 integrations of 5,000 users with 1 replica and with 2 (``--scale-integrations``, ``--scale-users``), then
idles 1,000 integrations over 1 replica and over 3.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from typing import Any

import orjson

from tests.benchmarks import (
    bench_fleet,
    bench_fleet_scale,
    bench_latency,
    bench_profile,
    bench_snapshot,
    bench_webhook_latency,
    report,
)
from tests.benchmarks.support import REPO, RESULTS, load_average, log

BENCHMARKS = ("snapshot", "latency", "fleet", "profile", "webhooks", "fleet-scale")
ALIASES = {"throughput": "snapshot", "memory": "snapshot", "restore": "snapshot", "idle": "fleet"}

QUICK: dict[str, dict[str, Any]] = {
    "snapshot": {"sizes": [2_000, 10_000], "runs": 3},
    "latency": {"users": 10_000, "windows": 2, "window_seconds": 30.0},
    "fleet": {"fleet_sizes": [100], "windows": 3, "window_seconds": 20.0},
    "profile": {"users": 10_000, "runs": 3},
    "webhooks": {"changes": 30, "rate": 2.0},
    "fleet-scale": {
        "integrations": 12,
        "users": 1_000,
        "replicas": [1, 2],
        "runs": 1,
        "idle_integrations": 100,
        "idle_replicas": [1, 3],
        "windows": 2,
        "window_seconds": 20.0,
    },
}
FULL: dict[str, dict[str, Any]] = {
    "snapshot": {"sizes": [10_000, 100_000, 1_000_000], "runs": 3},
    "latency": {"users": 100_000, "windows": 3, "window_seconds": 60.0},
    "fleet": {"fleet_sizes": [1_000, 5_000], "windows": 3, "window_seconds": 60.0},
    "profile": {"users": 100_000, "runs": 5},
    "webhooks": {"changes": 120, "rate": 2.0},
    "fleet-scale": {
        "integrations": 40,
        "users": 5_000,
        "replicas": [1, 2],
        "runs": 3,
        "idle_integrations": 1_000,
        "idle_replicas": [1, 3],
        "windows": 3,
        "window_seconds": 60.0,
    },
}


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memory_kb = int(f.readline().split()[1])
    return f"{os.cpu_count()} cores ({model}), {memory_kb / 2**20:.0f} GiB, Python {platform.python_version()}"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


async def run_one(name: str, params: dict[str, Any], kafka_port: int) -> dict[str, Any]:
    if name == "snapshot":
        return await bench_snapshot.run(params["sizes"], params["runs"], kafka_port)
    if name == "latency":
        return await bench_latency.run(params["users"], params["windows"], params["window_seconds"], kafka_port)
    if name == "fleet":
        return await bench_fleet.run(params["fleet_sizes"], params["windows"], params["window_seconds"], kafka_port)
    if name == "fleet-scale":
        return await bench_fleet_scale.run(
            params["integrations"],
            params["users"],
            params["replicas"],
            params["runs"],
            params["idle_integrations"],
            params["idle_replicas"],
            params["windows"],
            params["window_seconds"],
            kafka_port,
        )
    if name == "webhooks":  # starts a broker of its own, on a free port
        return await bench_webhook_latency.run(params["changes"], params["rate"])
    return await bench_profile.run(params["users"], params["runs"], kafka_port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted({*BENCHMARKS, *ALIASES}),
        help="run only this benchmark (repeatable); the others' figures are kept from results/latest.json",
    )
    parser.add_argument("--runs", type=int, help="runs (or windows) per figure, overriding the default")
    parser.add_argument(
        "--size",
        type=int,
        action="append",
        help="N of the snapshot benchmark (repeatable) and records of the profile (the largest N)",
    )
    parser.add_argument("--kafka-port", type=int, default=19095, help="port of the benchmarks' own broker")
    parser.add_argument(
        "--scale-integrations",
        type=int,
        help="fleet-scale: integrations in the snapshot over replicas (default 40; --quick 12)",
    )
    parser.add_argument(
        "--scale-users", type=int, help="fleet-scale: users per integration in that snapshot (default 5,000)"
    )
    parser.add_argument("--report", action="store_true", help="only render latest.md and the plots from latest.json")
    args = parser.parse_args(argv)
    if args.report:
        results = orjson.loads((RESULTS / "latest.json").read_bytes())
        write_report(results)
        return 0
    selected = list(dict.fromkeys(ALIASES.get(n, n) for n in (args.only or BENCHMARKS)))
    settings = QUICK if args.quick else FULL

    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest.json"
    results: dict[str, Any] = {"benchmarks": {}}
    if args.only and latest.exists():
        results = orjson.loads(latest.read_bytes())
        if bool(results.get("meta", {}).get("quick")) != args.quick:
            results = {"benchmarks": {}}  # do not mix quick and full figures
    results["meta"] = {
        "machine": machine(),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": args.quick,
        "command": " ".join(["python -m tests.benchmarks", *(argv if argv is not None else sys.argv[1:])]),
    }
    for name in selected:
        params = dict(settings[name])
        if args.runs:
            params["runs" if "runs" in params else "windows"] = args.runs
        if args.size and name == "snapshot":
            params["sizes"] = sorted(set(args.size))
        if args.size and name == "profile":
            params["users"] = max(args.size)
        if name == "fleet-scale":
            params["integrations"] = args.scale_integrations or params["integrations"]
            params["users"] = args.scale_users or params["users"]
        log(f"=== {name} {params} (load {load_average()})")
        started = time.monotonic()
        load_before = load_average()
        data = asyncio.run(run_one(name, params, args.kafka_port))
        data.update(
            load_before=load_before,
            load_after=load_average(),
            seconds=time.monotonic() - started,
            date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            params=params,
        )
        results["benchmarks"][name] = data
        latest.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))

    write_report(results)
    return 0


def write_report(results: dict[str, Any]) -> None:
    try:
        written = report.plots(results)
        results["meta"].pop("plots_skipped", None)
        log("plots: " + ", ".join(str(p.relative_to(REPO)) for p in written))
    except ImportError:
        results["meta"]["plots_skipped"] = "matplotlib is not installed (pip install -e '.[bench]')"
        log("matplotlib is not installed: no plots (pip install -e '.[bench]')")
    (RESULTS / "latest.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    (RESULTS / "latest.md").write_text(report.markdown(results))
    print()
    print(report.markdown(results))


if __name__ == "__main__":
    sys.exit(main())

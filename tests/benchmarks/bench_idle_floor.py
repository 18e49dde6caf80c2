"""The floor under an idle replica's CPU: bare aiohttp making the idle fleet's requests, and nothing else.

An idle replica of 1,000 integrations at a 10 s interval makes 100 requests a second, each answered by an empty page;
its pairs wake on the scheduler's grid (0.5 s at that interval), so about 50 requests start together. This benchmark
makes the same requests (the relay's query, headers, timeouts and connection pool, the simulator's answers read and
decoded with orjson) from one process that does nothing else, and reads that process's CPU over windows: what the
relay's own work adds is the relay's CPU (``bench_idle_ab``) less this. ``--grid`` makes the requests on another
grid (0.1 s was the relay's before), to see what batching the wake-ups saves.

    .venv/bin/python -m tests.benchmarks.bench_idle_floor --windows 4 [--uvloop] [--grid SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import aiohttp
import orjson

from relay.scheduler import WAKE_GRID_FRACTION, WAKE_GRID_SECONDS
from tests.benchmarks import bench_fleet
from tests.benchmarks.support import API_KEY, RESOURCE, SimulatorProcess, load_average, log, median

RELAY_GRID_SECONDS = min(WAKE_GRID_SECONDS, bench_fleet.POLL_INTERVAL * WAKE_GRID_FRACTION)  # the relay's wake grid


async def _get(session: aiohttp.ClientSession, url: str, integration: str) -> None:
    params = {"page_size": "250", "include_deleted": "true", "updated_after": "2099-01-01T00:00:00.000Z"}
    async with session.get(url, params=params, headers={"X-Integration-Id": integration}) as response:
        body = await response.read()
    orjson.loads(body)


async def _poll_forever(url: str, integrations: list[str], grid: float) -> None:
    """Every grid step, the requests of the pairs due then, all at once; every pair once per interval."""
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=10, sock_read=30)
    headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}
    steps = round(bench_fleet.POLL_INTERVAL / grid)
    async with aiohttp.ClientSession(
        timeout=timeout, headers=headers, connector=aiohttp.TCPConnector(limit=16)
    ) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for step in range(sys.maxsize):
            due = integrations[step % steps :: steps]
            await asyncio.gather(*(_get(session, url, integration) for integration in due))
            await asyncio.sleep(max(0.0, start + (step + 1) * grid - loop.time()))


async def run(size: int, windows: int, seconds: float, grid: float = RELAY_GRID_SECONDS) -> list[float]:
    integrations = [f"fleet:{i:05d}" for i in range(size)]
    sim = SimulatorProcess(
        integrations, users=bench_fleet.USERS_PER_INTEGRATION, name=f"simulator-idle-floor-{os.getpid()}"
    )
    shares = []
    try:
        await sim.wait_serving()
        polling = asyncio.create_task(_poll_forever(f"{sim.url}/{RESOURCE}", integrations, grid))
        await asyncio.sleep(bench_fleet.POLL_INTERVAL)  # one interval: the connections opened
        for window in range(windows):
            cpu, started = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)  # the measured window
            if polling.done():
                polling.result()  # raises what stopped it
                raise RuntimeError("the requests stopped")
            shares.append((time.process_time() - cpu) / (time.monotonic() - started))
            log(f"window {window}: bare aiohttp {shares[-1]:.2%} of a core; load average {load_average()}")
        polling.cancel()
    finally:
        sim.stop()
    log(f"median {median(shares):.2%} of a core")
    return shares


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--integrations", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--window-seconds", type=float, default=30.0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as relay run does")
    parser.add_argument("--grid", type=float, default=RELAY_GRID_SECONDS, help="seconds between two bursts")
    args = parser.parse_args(argv)
    coroutine = run(args.integrations, args.windows, args.window_seconds, args.grid)
    if args.uvloop:
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)
    return 0


if __name__ == "__main__":
    sys.exit(main())

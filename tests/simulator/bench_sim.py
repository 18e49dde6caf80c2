"""Measure the simulator at scale (not a test: run it by hand, it takes about a minute).

    .venv/bin/python tests/simulator/bench_sim.py [USERS]   # default 1000000

Prints the time and memory to seed USERS users in one integration, and page latencies over HTTP on 127.0.0.1
(first page, deep pages by cursor, an updated_after page, an emails lookup), with the churn off and on.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import statistics
import sys
import time

import aiohttp

from relay.simulator import Simulator, SimulatorServer
from relay.timestamps import format_timestamp_ms as iso_ms

ACME = "personio:acme"


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def timed_get(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> tuple[float, dict]:  # type: ignore[type-arg]
    headers = {"Authorization": "Bearer sim-api-key", "X-Integration-Id": ACME}
    started = time.perf_counter()
    async with session.get(url, params=params, headers=headers) as response:
        body = await response.json()
    assert response.status == 200, body
    return (time.perf_counter() - started) * 1000, body


async def pages(server: SimulatorServer, sim: Simulator, label: str) -> None:
    url = f"{server.url}/ats/users"
    async with aiohttp.ClientSession() as session:
        first = [await timed_get(session, url, {"page_size": "250"}) for _ in range(20)]
        cursor = first[0][1]["data"]["next"]
        deep = []
        for _ in range(40):
            ms, body = await timed_get(session, url, {"page_size": "250", "cursor": cursor})
            deep.append(ms)
            cursor = body["data"]["next"]
        since = iso_ms(sim.now_ms() - 3 * 86_400_000)  # the last tenth of the 30-day history
        recent = {"page_size": "250", "updated_after": since}
        incremental = [(await timed_get(session, url, recent))[0] for _ in range(20)]
        email = next(iter(sim.records(ACME, "ats/users")))["email"]
        lookups = [(await timed_get(session, url, {"emails": email}))[0] for _ in range(20)]
    for name, samples in (
        ("first page", [m for m, _ in first]),
        ("cursor pages", deep),
        ("updated_after page", incremental),
        ("emails lookup", lookups),
    ):
        print(f"  {label:10} {name:20} median {statistics.median(samples):6.1f} ms  max {max(samples):6.1f} ms")


async def main(users: int) -> None:
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    sim = Simulator(integrations=[ACME], users=users, rate_limit=10**9)
    seconds = time.perf_counter() - started
    gc.collect()
    grown = rss_mb() - before
    print(f"seeded {users} users in {seconds:.1f} s; RSS +{grown:.0f} MB = {grown * 1024 * 1024 / users:.0f} B/record")
    async with SimulatorServer(sim) as server:
        await pages(server, sim, "no churn")
        sim.start_churn(200.0)
        await pages(server, sim, "churn 200/s")
        await sim.stop_churn()
        print(f"  churn performed {len(sim.mutations)} mutations meanwhile")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))

"""The remembered entities' container alone, in process: ``python -m tests.benchmarks.bench_entity_table``.

Compares ``relay.entity_table.EntityTable`` (``table``) with the ``dict[str, bytes]`` it replaced (``dict``), with
24-character random ids and 45-byte fingerprints like the simulator's users. Run it at two commits to compare two
versions of the table. Measures, each in a fresh process (``--measure``):

* ``stall``: the longest single ``put()`` while inserting 1.5M entities one by one (a resize runs inside one write,
  on the event loop);
* ``compact``: the longest single ``put()`` while 1M entities are each rewritten to another length, twice;
* ``memory``: bytes per entity at 1M, RSS delta after ``malloc_trim(0)`` (as the relay calls it: ``relay/heap.py``)
  and without it, and tracemalloc's (current and peak);
* ``ops``: CPU time per get (absent, present), put (new, same length, another length) and per item iterated,
  200k entities, best of 5.

Not part of ``make bench``: a few minutes, and wall-clock stalls are only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, MutableMapping

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def ids(n: int, seed: int = 1) -> Iterator[str]:
    rnd = random.Random(seed)
    for _ in range(n):
        yield "".join(rnd.choices(_ALPHABET, k=24))


def fingerprint(i: int, length: int = 45) -> bytes:
    return i.to_bytes(8, "little") * 5 + bytes(length - 40)


def make(kind: str) -> MutableMapping[str, bytes]:
    if kind == "dict":
        return {}
    from relay.entity_table import EntityTable

    return EntityTable()


def putter(table: MutableMapping[str, bytes]) -> Callable[[str, bytes], object]:
    put = getattr(table, "put", None)
    return put if put is not None else table.__setitem__


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stall(kind: str) -> str:
    put, clock, worst = putter(make(kind)), time.perf_counter, (0.0, 0)
    for i, entity_id in enumerate(ids(1_500_000)):
        value = fingerprint(i)
        started = clock()
        put(entity_id, value)
        took = clock() - started
        if took > worst[0]:
            worst = (took, i)
    return f"worst put while inserting 1.5M: {worst[0] * 1e3:.1f} ms (entity {worst[1]:,})"


def compact(kind: str) -> str:
    put, clock, worst = putter(make(kind)), time.perf_counter, (0.0, 0)
    keys = list(ids(1_000_000))
    for i, entity_id in enumerate(keys):
        put(entity_id, fingerprint(i))
    for round_, length in enumerate((47, 45)):
        for i, entity_id in enumerate(keys):
            value = fingerprint(i, length)
            started = clock()
            put(entity_id, value)
            took = clock() - started
            if took > worst[0]:
                worst = (took, round_ * 1_000_000 + i)
    return f"worst put while rewriting 1M to another length twice: {worst[0] * 1e3:.1f} ms (write {worst[1]:,})"


def memory(kind: str, n: int = 1_000_000) -> str:
    def fill() -> MutableMapping[str, bytes]:
        table = make(kind)
        for i, entity_id in enumerate(ids(n)):
            table[entity_id] = fingerprint(i)
        gc.collect()
        return table

    gc.collect()
    before = rss()
    table = fill()
    untrimmed = rss() - before
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = rss() - before
    del table
    gc.collect()
    tracemalloc.start()
    table = fill()
    assert len(table) == n
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (
        f"B per entity at {n:,}: RSS {trimmed / n:.1f} after malloc_trim ({untrimmed / n:.1f} before); "
        f"tracemalloc {current / n:.1f} (peak {peak / n:.1f})"
    )


def ops(kind: str, n: int = 200_000) -> str:
    keys, absent = list(ids(n)), list(ids(n, seed=2))
    values = [fingerprint(i) for i in range(n)]
    same_length = [fingerprint(i + 7) for i in range(n)]
    other_length = [fingerprint(i, 47) for i in range(n)]
    clock, best = time.process_time, dict[str, float]()
    for _ in range(5):
        table = make(kind)
        put, get = putter(table), table.get
        times = [clock()]
        for key, value in zip(keys, values, strict=True):
            put(key, value)
        times.append(clock())
        for key in absent:
            get(key)
        times.append(clock())
        for key in keys:
            get(key)
        times.append(clock())
        for key, value in zip(keys, same_length, strict=True):
            put(key, value)
        times.append(clock())
        for key, value in zip(keys, other_length, strict=True):
            put(key, value)
        times.append(clock())
        for _item in table.items():
            pass
        times.append(clock())
        names = ("put new", "get absent", "get present", "put same length", "put other length", "items")
        for name, started, ended in zip(names, times, times[1:], strict=False):
            best[name] = min(best.get(name, float("inf")), ended - started)
    return "us per op (CPU, best of 5, 200k): " + "; ".join(f"{k} {v / n * 1e6:.2f}" for k, v in best.items())


MEASURES: dict[str, Callable[[str], str]] = {"stall": stall, "compact": compact, "memory": memory, "ops": ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kind", choices=["dict", "table"], action="append", help="default: both")
    parser.add_argument("--measure", choices=list(MEASURES), action="append", help="default: all")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, measure = args.child
        print(f"{kind:5} {measure:7} {MEASURES[measure](kind)}", flush=True)
        return
    for measure in args.measure or list(MEASURES):
        for kind in args.kind or ["dict", "table"]:
            command = [sys.executable, "-m", "tests.benchmarks.bench_entity_table", "--child", kind, measure]
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()

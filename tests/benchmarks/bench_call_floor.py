"""The floor under the relay's own CPU per record: the C calls it must make for each record, and nothing else.

Issue 19 asks for a snapshot at most 1.5 x (fetch-only + produce-only) and a re-fetch of unchanged records at most
1.5 x fetch-only, CPU per record. With fetching and producing at their floors, that leaves 0.5 x (fetch-only +
produce-only) for everything the relay does of its own in a snapshot (validate, fingerprint, diff, serialize), and
0.5 x fetch-only for a re-fetch (validate, hash, look up). This benchmark measures what the C calls alone cost over the
same records the profile uses (the simulator's users, 10 fields each), each call in a tight loop of its own that keeps
no result (keeping 100,000 results measures the allocator instead), best of 5 passes, CPU time:

* snapshot: the record as sorted JSON and its 64-bit blake2b (the content hash), the 16-bit crc32 of each top-level
  value (field hashes), packing the fingerprint, the event id (a 128-bit blake2b and its hex), joining the event's
  JSON and encoding its Kafka key;
* re-fetch: the sorted JSON and its hash, a ``dict`` lookup of the id (the lower bound of any container; the relay's
  packed table costs more, see :mod:`tests.benchmarks.bench_entity_table`), and the timestamp validation.

What these calls compute is fixed by what is persisted: the content hash and the field hashes are in the state topic,
and the content hash feeds the event ids, so another function (xxhash) would re-announce every entity once after an
upgrade unless the state format carried both.

    .venv/bin/python -m tests.benchmarks.bench_call_floor [--users 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import struct
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from relay.timestamps import parse_timestamp_ms
from tests.benchmarks.bench_profile import INTEGRATION, _bodies
from tests.benchmarks.support import SimulatorProcess, log

_dumps = orjson.dumps
_SORT_KEYS = orjson.OPT_SORT_KEYS


def _per_record(work: Callable[[], None], records: int, passes: int = 5) -> float:
    """Microseconds of CPU per record of ``work``, the best of ``passes``."""
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best / records * 1e6


def _content_calls(records: Sequence[dict[str, Any]]) -> dict[str, Callable[[], None]]:
    """What every record fetched costs, changed or not: its sorted JSON and the content hash of that."""
    jsons = [_dumps(r, option=_SORT_KEYS) for r in records]
    blake2b = hashlib.blake2b

    def sorted_json() -> None:
        for record in records:
            _dumps(record, option=_SORT_KEYS)

    def content_hash() -> None:
        for text in jsons:
            blake2b(text, digest_size=8).digest()

    return {"sorted JSON": sorted_json, "content hash (blake2b, 64 bits)": content_hash}


def _snapshot_calls(records: Sequence[dict[str, Any]]) -> dict[str, Callable[[], None]]:
    jsons = [_dumps(r, option=_SORT_KEYS) for r in records]
    pairs = list(zip(records, jsons, strict=True))
    layout = struct.Struct("<8sqIIB" + "H" * len(records[0]))
    hashes = [0] * len(records[0])
    pair_hasher = hashlib.blake2b(digest_size=16, person=b"relay.event-id")
    pair_hasher.update(b'["bench:floor","ats/users",')
    crc32 = zlib.crc32

    def field_hashes() -> None:
        for record in records:
            for value in record.values():
                crc32(_dumps(value, option=_SORT_KEYS))

    def fingerprint() -> None:
        for _ in records:
            layout.pack(b"01234567", 1, 1, 0, 0, *hashes)

    def event_id() -> None:
        for record in records:
            hasher = pair_hasher.copy()
            hasher.update(_dumps([record["id"], 1, "created", 12345678901234])[1:])
            hasher.digest().hex()

    def event_json() -> None:
        for record, text in pairs:
            b"".join((b"{", _dumps(record["id"]), b",", _dumps(record["changed_at"]), b",", text, b"}"))

    def kafka_key() -> None:
        for record in records:
            f"bench:floor:{record['id']}".encode()

    return {
        **_content_calls(records),
        "field hashes (JSON and crc32 per value)": field_hashes,
        "fingerprint (struct.pack)": fingerprint,
        "event id (blake2b, 128 bits, hex)": event_id,
        "event JSON (join)": event_json,
        "Kafka key": kafka_key,
    }


def _refetch_calls(records: Sequence[dict[str, Any]]) -> dict[str, Callable[[], None]]:
    table = {r["id"]: b"" for r in records}
    parse = parse_timestamp_ms.__wrapped__  # uncached: every record has its own changed_at

    def lookup() -> None:
        for record in records:
            table.get(record["id"])

    def timestamp() -> None:
        for record in records:
            parse(record["changed_at"])

    return {
        **_content_calls(records),
        "id lookup (dict)": lookup,
        "changed_at validated (parse)": timestamp,
    }


def measure(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {
        name: {call: _per_record(work, len(records)) for call, work in calls.items()}
        for name, calls in (("snapshot", _snapshot_calls(records)), ("re-fetch", _refetch_calls(records)))
    }


async def _records(users: int) -> list[dict[str, Any]]:
    sim = SimulatorProcess([INTEGRATION], users=users, name="simulator-call-floor")
    try:
        await sim.wait_serving()
        bodies = await _bodies(sim.url)
    finally:
        sim.stop()
    return [record for body, _ in bodies for record in orjson.loads(body)["data"]["results"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000, help="records to measure over (default 100,000)")
    args = parser.parse_args(argv)
    records = asyncio.run(_records(args.users))
    log(f"{len(records):,} records, {sum(map(len, records)) / len(records):.1f} top-level fields each")
    for name, calls in measure(records).items():
        print(f"\n{name}: the C calls alone, us of CPU per record\n")
        print("| call | us/record |\n| --- | --- |")
        for call, us in calls.items():
            print(f"| {call} | {us:.2f} |")
        print(f"| **sum** | **{sum(calls.values()):.2f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long ``relay state repartition`` takes, and how much memory, for a state of a given size:
``python -m tests.benchmarks.bench_repartition [--integrations I] [--entities E]``.

It starts a broker, writes a state topic of 6 partitions holding I integrations of E entities each (one resource,
fingerprints of 12 fields, a checkpoint per pair: I * (E + 2) records, as the relay writes them), then runs the
command as a subprocess to move it to 12 partitions, and prints the records, the seconds and the command's peak
resident memory. Not part of ``python -m tests.benchmarks``: a figure for the README's procedure, measured when the
command changes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from relay import diff
from relay.state import Checkpoint, StateStore
from tests.benchmarks.support import PYTHON, LocalKafka, log

PREFIX = "bench"
SOURCE_PARTITIONS = 6
TARGET_PARTITIONS = 12
FIELDS = tuple(f"f{i:02d}" for i in range(12))


async def write_state(bootstrap_servers: str, integrations: int, entities: int) -> int:
    """Write the state topic as relay run would have written it; return its records."""
    topic = f"{PREFIX}.relay-state"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, SOURCE_PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", compression_type="zstd", linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    store = StateStore(SOURCE_PARTITIONS)
    written = 0
    try:
        for n in range(integrations):
            fingerprints = {
                f"u{i:07d}": diff.make_fingerprint(
                    i.to_bytes(8, "little"),
                    changed_at_ms=1,
                    version=1,
                    shape_id=0,
                    deleted=False,
                    field_hashes=list(range(len(FIELDS))),
                )
                for i in range(entities)
            }
            records = store.records_for(
                f"personio:bench{n}",
                "ats/users",
                delta=fingerprints,
                new_shapes=[(0, FIELDS)],
                checkpoint=Checkpoint(watermark_ms=1, snapshot_done=True),
            )
            sent = [await producer.send(topic, r.value, key=r.key, partition=r.partition) for r in records]
            await asyncio.gather(*sent)
            written += len(records)
    finally:
        await producer.stop()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_repartition")
    parser.add_argument("--integrations", type=int, default=200)
    parser.add_argument("--entities", type=int, default=5000, help="per integration")
    args = parser.parse_args()
    broker = LocalKafka()
    broker.start()
    try:
        records = asyncio.run(write_state(broker.bootstrap_servers, args.integrations, args.entities))
        log(f"state topic written: {records} records; repartitioning {SOURCE_PARTITIONS} -> {TARGET_PARTITIONS}")
        environ = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "RELAY_TOPIC_PREFIX": PREFIX,
            "RELAY_STATE_TOPIC_PARTITIONS": str(SOURCE_PARTITIONS),
        }
        argv = ["state", "repartition", "--partitions", str(TARGET_PARTITIONS), "--state-topic", f"{PREFIX}.moved"]
        started = time.monotonic()
        command = subprocess.Popen(
            [PYTHON, "-m", "relay", *argv], env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert command.stderr is not None
        errors = command.stderr.read()
        _, status, usage = os.wait4(command.pid, 0)  # this child's own rusage, not the broker's
        seconds = time.monotonic() - started
    finally:
        broker.cleanup()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"relay state repartition exited {os.waitstatus_to_exitcode(status)}: {errors}")
    peak_mb = usage.ru_maxrss / 1024
    print(f"{records} state records ({args.integrations} x {args.entities}): {seconds:.1f} s, peak {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()

"""Keep a SQLite table per resource up to date from the event topics: the reference consumer of change-relay.

Each table (``ats_users`` for ats/users, ...) has one row per entity, keyed by integration_id and id: the last
record, ``deleted_at`` (null while the entity lives; deleted rows are kept, soft-deleted) and the last event
applied. Query the current state with e.g. ``sqlite3 view.db "select * from ats_users where deleted_at is null"``.

Read it as the example to copy; the rules every consumer of change-relay needs are these:

* Read with ``isolation.level=read_committed``, or aborted transactions' events show up.
* created / updated: upsert the record (a ``snapshot``, ``restored`` or ``reason: "resnapshot"`` created is an
  upsert like any other).
  deleted: mark the row deleted; ``reason: "vanished"`` deletes carry no record, so the last one is kept.
* Apply each event exactly once: a batch of events and the position reached in each partition (topic, partition,
  next offset) are written in ONE SQLite transaction, and Kafka offsets are committed only after it. A crash
  between the two replays the batch from Kafka's older offset; events below the position SQLite holds are skipped,
  so nothing is applied twice (the ``events`` column, events applied to the row, would show it).

Topics and Kafka settings come from the same configuration as ``relay run`` (``--config``, ``RELAY_*``), without
an API key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.config import Config, ConfigError, add_config_argument, print_problems
from relay.kinds import CHANGE_KINDS
from relay.tail import load_reader_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--db", type=Path, required=True, help="SQLite database to keep up to date (created)")
    parser.add_argument(
        "--resource", action="append", dest="resources", help="resource to keep (repeatable; default: configured)"
    )
    parser.add_argument("--group-id", default="relay-materialize", help="Kafka consumer group (one per database)")
    parser.add_argument(
        "--group-instance-id", help="static group membership: a restart with the same id resumes without rebalance"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="most events applied per SQLite transaction")


def table_name(resource: str) -> str:
    return resource.replace("/", "_")


def open_db(path: Path, resources: Iterable[str]) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN ... COMMIT below), nothing is committed implicitly.
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")  # readers (your queries) do not block the consumer
    db.execute(
        "CREATE TABLE IF NOT EXISTS relay_positions (topic TEXT, partition INTEGER, next_offset INTEGER, "
        "PRIMARY KEY (topic, partition))"
    )
    for resource in resources:
        db.execute(
            f'CREATE TABLE IF NOT EXISTS "{table_name(resource)}" ('
            "integration_id TEXT NOT NULL, id TEXT NOT NULL, remote_id TEXT, "
            "record TEXT, "  # JSON; the last one seen, kept when the entity is deleted
            "deleted_at TEXT, "  # null while the entity lives
            "event_id TEXT NOT NULL, event_time TEXT NOT NULL, "  # the last event applied
            "events INTEGER NOT NULL, "  # how many events were applied to the row
            "PRIMARY KEY (integration_id, id))"
        )
    return db


def apply_event(db: sqlite3.Connection, event: dict[str, Any], tables: dict[str, str]) -> None:
    """Apply one change event to its resource's table (events of other resources are ignored)."""
    data = event["data"]
    table = tables.get(data["resource"])
    if table is None:
        return
    kind = event["type"].rsplit(".", 1)[1]
    record = None if data["record"] is None else json.dumps(data["record"], sort_keys=True)
    remote_id = data["remote_id"]
    values = {
        "integration_id": data["integration_id"],
        "id": data["id"],
        "remote_id": None if remote_id is None else str(remote_id),
        "record": record,
        "deleted_at": event["time"] if kind == "deleted" else None,
        "event_id": event["id"],
        "event_time": event["time"],
    }
    # created/updated replace the record and clear deleted_at (a restored entity lives again); deleted sets
    # deleted_at and keeps the last record when the event has none (reason "vanished").
    # The table name is a resource path (a-z, 0-9, _, -: checked by the configuration), never event data.
    db.execute(
        f'INSERT INTO "{table}" (integration_id, id, remote_id, record, deleted_at, event_id, event_time, events) '  # noqa: S608
        "VALUES (:integration_id, :id, :remote_id, :record, :deleted_at, :event_id, :event_time, 1) "
        "ON CONFLICT (integration_id, id) DO UPDATE SET "
        "remote_id = coalesce(excluded.remote_id, remote_id), record = coalesce(excluded.record, record), "
        "deleted_at = excluded.deleted_at, event_id = excluded.event_id, event_time = excluded.event_time, "
        "events = events + 1",
        values,
    )


async def materialize(config: Config, db: sqlite3.Connection, resources: list[str], args: argparse.Namespace) -> None:
    tables = {resource: table_name(resource) for resource in resources}
    topics = list(dict.fromkeys(config.topic_for(r, kind) for r in resources for kind in CHANGE_KINDS))
    consumer = AIOKafkaConsumer(
        *topics,
        **config.kafka_client_kwargs(),
        group_id=args.group_id,
        group_instance_id=args.group_instance_id,
        isolation_level="read_committed",  # never see the events of aborted transactions
        enable_auto_commit=False,  # offsets are committed below, after SQLite
        auto_offset_reset="earliest",  # a new database starts from the topics' beginning
    )
    await consumer.start()
    print(f"relay materialize: {', '.join(topics)} -> {args.db}", file=sys.stderr, flush=True)
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=args.batch_size)
            if not batches:
                continue
            reached: dict[TopicPartition, int] = {}
            db.execute("BEGIN IMMEDIATE")
            try:
                for tp, records in batches.items():
                    row = db.execute(
                        "SELECT next_offset FROM relay_positions WHERE topic = ? AND partition = ?",
                        (tp.topic, tp.partition),
                    ).fetchone()
                    applied_until = row[0] if row else 0
                    for message in records:
                        # Below the position SQLite holds: applied before a crash that came before Kafka's commit.
                        if message.offset >= applied_until and message.value is not None:  # None: a tombstone
                            apply_event(db, json.loads(message.value), tables)
                    reached[tp] = max(applied_until, records[-1].offset + 1)
                    db.execute(
                        "INSERT OR REPLACE INTO relay_positions VALUES (?, ?, ?)", (tp.topic, tp.partition, reached[tp])
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            # Only now tell Kafka: a crash before this line replays the batch, which the positions above skip.
            await consumer.commit(reached)
    finally:
        await consumer.stop()


def main(args: argparse.Namespace) -> int:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # metadata retries while topics appear are noise here
    try:
        config = load_reader_config(args.config)
    except ConfigError as error:
        print_problems(error)
        return 2
    resources = list(args.resources or config.resources)
    db = open_db(args.db, resources)

    async def run() -> None:
        task = asyncio.ensure_future(materialize(config, db, resources, args))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
    finally:
        db.close()
    return 0

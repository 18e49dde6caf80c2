"""Print the change events arriving on the event topics, one line each: time, type, integration, entity, and the
changed fields of updates. For people trying the relay and for debugging.

Reads with ``isolation.level=read_committed``, as every consumer of change-relay should, and without a consumer
group (nothing is committed). Topics come from the same configuration as ``relay run`` (``--config`` and
``RELAY_*``); ``--bootstrap-servers``/``--topic`` override it, so no API key is needed just to watch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer

from relay.config import Config, ConfigError, KafkaSecurity, add_config_argument, load_config, print_problems
from relay.errors import KafkaAuthenticationFailed
from relay.kafka_access import check_kafka_access

DEFAULT_BOOTSTRAP = "localhost:9092"
EXIT_KAFKA_AUTHENTICATION = 7  # as `relay run` (relay.app), which this module does not import: it needs no poller


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: from the configuration)")
    parser.add_argument(
        "--topic", action="append", dest="topics", help="topic to read (repeatable; default: the configured ones)"
    )
    parser.add_argument(
        "--from-beginning", action="store_true", help="print the topics' history too, not only new events"
    )
    parser.add_argument("--json", action="store_true", help="print each event's full JSON instead of a summary")
    parser.add_argument("--max-events", type=int, default=0, help="stop after this many events (0: never)")


def format_event(value: bytes, *, full_json: bool = False) -> str:
    """One line describing an event; raw text when the value is not a change-relay CloudEvent."""
    try:
        event: dict[str, Any] = orjson.loads(value)
        data = event["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"(not a change-relay event) {value[:200]!r}"
    if full_json:
        return orjson.dumps(event).decode()
    flags = [name for name in ("snapshot", "restored") if data.get(name)]
    if data.get("reason"):
        flags.append(f"reason={data['reason']}")
    fields = data.get("changed_fields")
    return "  ".join(
        part
        for part in (
            str(event.get("time", "")),
            f"{event.get('type', '?'):<24}",
            str(data.get("integration_id")),
            str(event.get("subject")),
            f"changed: {', '.join(fields)}" if fields else "",
            f"[{' '.join(flags)}]" if flags else "",
        )
        if part
    )


def _resolve(args: argparse.Namespace) -> tuple[str, list[str], KafkaSecurity]:
    """The brokers, the topics and how to connect (``RELAY_KAFKA_SECURITY_PROTOCOL`` and the rest, always from the
    configuration: ``--bootstrap-servers`` overrides only where to connect, not how)."""
    bootstrap = args.bootstrap_servers
    topics = args.topics
    config = load_reader_config(args.config)
    return bootstrap or config.kafka_bootstrap_servers, topics or list(config.event_topics()), config.kafka_security


def load_reader_config(path: str | None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration ``relay run`` would use (``--config`` and ``RELAY_*``), for commands that only read the
    topics or describe them: those need no API key and no integrations."""
    return load_config(path, environ, kafka_only=True)


async def tail(
    bootstrap: str,
    topics: list[str],
    *,
    from_beginning: bool,
    full_json: bool,
    max_events: int,
    security: KafkaSecurity | None = None,
    out: TextIO = sys.stdout,
) -> int:
    security_kwargs: dict[str, object] = {}
    if security is not None:
        security_kwargs = security.aiokafka_kwargs()
        try:
            await check_kafka_access(bootstrap, security)
        except KafkaAuthenticationFailed as error:
            print(f"relay tail: {error}", file=sys.stderr, flush=True)
            return EXIT_KAFKA_AUTHENTICATION
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        **security_kwargs,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    printed = 0
    try:
        print(f"relay tail: reading {', '.join(topics)} from {bootstrap} (Ctrl-C stops)", file=sys.stderr, flush=True)
        async for record in consumer:
            if record.value is None:
                print(f"{time.strftime('%H:%M:%S')}  tombstone  {record.key!r}", file=out, flush=True)
            else:
                print(format_event(record.value, full_json=full_json), file=out, flush=True)
            printed += 1
            if max_events and printed >= max_events:
                break
    finally:
        await consumer.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    # aiokafka reports every metadata retry (topics not created yet, leaders moving) at ERROR; tail has no use for it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        bootstrap, topics, security = _resolve(args)
    except ConfigError as error:
        print_problems(error)
        return 2

    async def run() -> int:
        task = asyncio.ensure_future(
            tail(
                bootstrap,
                topics,
                from_beginning=args.from_beginning,
                full_json=args.json,
                max_events=args.max_events,
                security=security,
            )
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            return await task
        return 0

    return asyncio.run(run())

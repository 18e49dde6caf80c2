"""Inspect what the relay remembers in its state topic (RELAY_STATE_TOPIC), or move it to a new one:

  relay state show ID [--resource R] [--entities [--limit N]] [--json]
  relay state repartition --partitions N --state-topic NEW [--json] [--timeout SECONDS]

`show` prints, for each resource of the integration (those the registry polls it for, then any other it has state
for): its checkpoint (snapshot done or not, a poll in progress or not), its watermark (as a time, and its lag behind
now), how many entities it remembers (live, deleted), when it last reconciled, and which replica owns the
integration's state partition now (the member of the consumer group RELAY_GROUP_ID that Kafka assigned it: member
id, client id and host; 'none' when the group has no member). --entities lists the entities' ids, each with a
summary of its fingerprint (live/deleted/vanished, events emitted, changed_at, the first 8 hex digits of its content
hash, fields), at most --limit of them per resource, by id. --json prints it all as JSON.

Both talk only to Kafka, with the configuration of `relay run` (--config, RELAY_*) but need neither RELAY_API_KEY nor
RELAY_INTEGRATIONS. `show` is read-only: it reads the registry of integrations, the integration's partition of the state
topic (committed records only, from its beginning to the end it had when the read began) and the group's
description; it creates nothing and joins no group. A replica running meanwhile may have moved on a page or two.

`repartition`, with the fleet stopped (every replica of the group RELAY_GROUP_ID), copies the latest state of every
pair from the state topic (placed for RELAY_STATE_TOPIC_PARTITIONS) into the topic NEW, created compacted with N
partitions (or existing and empty), each integration's records on the partition a relay with
RELAY_STATE_TOPIC_PARTITIONS=N reads them from; reads NEW back as such a relay would and compares every pair's
checkpoint, entities and shapes with the source; grows the control topic (RELAY_CONTROL_TOPIC) to N partitions if it
has fewer; and prints what it did and the two settings to change before the fleet starts again:
RELAY_STATE_TOPIC=NEW and RELAY_STATE_TOPIC_PARTITIONS=N. The state topic itself is only read. --timeout bounds the
whole command (default 600 s for repartition).

Exit status:
  0  shown; repartition: copied and verified
  2  invalid configuration, or an invalid argument (repartition: NEW is the state, control, registry or an event
     topic, or not a topic name)
  5  the state topic holds a record this version cannot read, has fewer partitions than RELAY_STATE_TOPIC_PARTITIONS,
     or (repartition) does not exist
  6  Kafka's ACLs refuse this principal Describe or Read on the topics, or Describe on the group (repartition: also
     Create and Write on NEW, Alter on the control topic)
  7  Kafka refused the credentials or the client certificate, or the broker's certificate was refused
  8  Kafka could not be reached, or did not answer, within --timeout (repartition: NEW may hold part of a copy)
  9  the registry does not hold the integration (what state it has is shown all the same)
 12  repartition refused: the group RELAY_GROUP_ID has a live member (stop the fleet), or the fleet started, or the
     state topic was written, during the copy
 13  repartition refused: NEW exists and holds records, is not compacted, or has another partition count than N
 14  repartition: the copy read back differs from the state topic (the message names the first pair that differs)
"""

# What belongs here: the `relay state` command (this docstring is its --help description): arguments, the Kafka reads
# and exit codes. The report and its rendering are relay.state_show's (pure).

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

from relay.cli_args import kafka_command_config, positive_int, positive_seconds
from relay.commands_cli import add_reset_parser
from relay.commands_cli import main as commands_main
from relay.config import Config, ConfigError, add_config_argument, load_config
from relay.config_kinds import is_resource_path
from relay.errors import (
    KafkaAuthenticationFailed,
    KafkaAuthorizationFailed,
    KafkaUnavailable,
    StateError,
)
from relay.kafka_access import check_kafka_access
from relay.partitioning import partition_for_key
from relay.registry import DefaultResources, RegistryEntry, check_integration_id
from relay.registry_topic import DEFAULT_TIMEOUT_SECONDS, RegistryTopic
from relay.repartition import CopyMismatch, FleetRunning, Repartition, TargetNotUsable, repartition
from relay.repartition import render_json as render_repartition_json
from relay.repartition import render_text as render_repartition_text
from relay.sink import authorization_failed, principal_of
from relay.state import StateStore
from relay.state_records import CHECKPOINT, ENTITY, SHAPE
from relay.state_show import (
    DEFAULT_ENTITY_LIMIT,
    GroupView,
    ResourceReport,
    StateReport,
    group_view,
    render_json,
    render_text,
    resources_to_show,
)
from relay.state_topic import check_partition_count

PROG: Final = "relay state"
EXIT_OK: Final = 0
EXIT_INVALID: Final = 2
EXIT_STATE: Final = 5  # as relay run (relay.app)
EXIT_KAFKA_AUTHORIZATION: Final = 6
EXIT_KAFKA_AUTHENTICATION: Final = 7
EXIT_KAFKA_UNAVAILABLE: Final = 8
EXIT_UNKNOWN_INTEGRATION: Final = 9
EXIT_FLEET_RUNNING: Final = 12  # 10 and 11 are `relay state reset`'s (relay.commands_cli)
EXIT_TARGET_NOT_USABLE: Final = 13
EXIT_COPY_MISMATCH: Final = 14
# What an action's failure is, by exception, as an exit status (most specific first: the repartition's own errors
# before StateError, KafkaUnavailable last).
FAILURES: Final[tuple[tuple[type[Exception], int], ...]] = (
    (FleetRunning, EXIT_FLEET_RUNNING),
    (TargetNotUsable, EXIT_TARGET_NOT_USABLE),
    (CopyMismatch, EXIT_COPY_MISMATCH),
    (StateError, EXIT_STATE),
    (KafkaAuthorizationFailed, EXIT_KAFKA_AUTHORIZATION),
    (KafkaAuthenticationFailed, EXIT_KAFKA_AUTHENTICATION),
    (KafkaUnavailable, EXIT_KAFKA_UNAVAILABLE),
)
_FAILURE_TYPES: Final = tuple(failure for failure, _ in FAILURES)
DEFAULT_REPARTITION_TIMEOUT_SECONDS: Final = 600.0

GROUP_AUTHORIZATION_FAILED: Final = 30  # Kafka's error codes in a DescribeGroups answer
COORDINATOR_NOT_READY: Final = (14, 15, 16)  # COORDINATOR_LOAD_IN_PROGRESS, _NOT_AVAILABLE, NOT_COORDINATOR
POLL_TIMEOUT_MS: Final = 200
RETRY_SECONDS: Final = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser(
        "show",
        parents=[_common(DEFAULT_TIMEOUT_SECONDS)],
        help="print what the relay remembers of an integration, and which replica owns it",
    )
    show.add_argument("integration", metavar="ID", help="the integration id, like personio:8d1hpPsDu6Q5K1UnBDMXiUeGV")
    show.add_argument("--resource", metavar="R", help="only this resource, like ats/users")
    show.add_argument("--entities", action="store_true", help="list the entities' ids with fingerprint summaries")
    show.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_ENTITY_LIMIT,
        metavar="N",
        help=f"with --entities, at most N per resource, by id (default {DEFAULT_ENTITY_LIMIT})",
    )
    add_reset_parser(sub)  # an operator command the owner carries out: relay.commands_cli sends it
    repartition = sub.add_parser(
        "repartition",
        parents=[_common(DEFAULT_REPARTITION_TIMEOUT_SECONDS)],
        help="with the fleet stopped, copy the state into a new state topic placed for N partitions, and verify it",
    )
    repartition.add_argument(
        "--partitions",
        type=positive_int,
        required=True,
        metavar="N",
        help="the partition count of the new state topic: RELAY_STATE_TOPIC_PARTITIONS from then on",
    )
    repartition.add_argument(
        "--state-topic",
        required=True,
        metavar="NEW",
        help="the new state topic (created, or existing and empty): RELAY_STATE_TOPIC from then on",
    )


def _common(timeout: float) -> argparse.ArgumentParser:
    """The options every `relay state` action shares (but reset, which has relay.commands_cli's)."""
    common = argparse.ArgumentParser(add_help=False)
    add_config_argument(common)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument(
        "--timeout",
        type=positive_seconds,
        default=timeout,
        metavar="SECONDS",
        help=f"give up when Kafka has not answered within this long (exit 8; default {timeout:g})",
    )
    return common


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    if args.action == "reset":
        return commands_main(args, out)
    config = kafka_command_config(args.config)
    if config is None:
        return EXIT_INVALID
    handler = ACTIONS[args.action]
    return handler(config, args, out)


def _show_main(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    try:
        check_integration_id(args.integration)
        if args.resource is not None and not is_resource_path(args.resource):
            raise ValueError(f"--resource {args.resource!r} is not a path like ats/users")
    except ValueError as error:
        return _fail(args, error, EXIT_INVALID)
    return asyncio.run(_show(config, args, out))


def _exit_status(error: Exception) -> int:
    """The exit status of an action that failed with ``error``, one of FAILURES."""
    return next(code for failure, code in FAILURES if isinstance(error, failure))


def _fail(args: argparse.Namespace, error: BaseException | str, code: int) -> int:
    print(f"{PROG} {args.action}: {error}", file=sys.stderr)
    return code


# --- repartition ----------------------------------------------------------------------------------------------------


def _repartition_main(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    try:
        target = _target_config(config, args)
    except ValueError as error:
        return _fail(args, error, EXIT_INVALID)
    return asyncio.run(_repartition(config, target, args, out))


def _target_config(config: Config, args: argparse.Namespace) -> Config:
    """The configuration relay run will have once the state is moved: the new state topic and partition count, checked
    as relay run checks them (a valid topic name, none of the event, control or registry topics)."""
    if args.state_topic == config.state_topic:
        raise ValueError(
            f"--state-topic {args.state_topic!r} is the state topic (RELAY_STATE_TOPIC) itself: name a new topic; "
            "the state topic is only read, so that nothing is lost if the copy fails"
        )
    if args.state_topic == config.control_topic:  # not among relay.config's checks of RELAY_STATE_TOPIC
        raise ValueError(f"--state-topic {args.state_topic!r} is the control topic (RELAY_CONTROL_TOPIC)")
    settings = {"RELAY_STATE_TOPIC": args.state_topic, "RELAY_STATE_TOPIC_PARTITIONS": str(args.partitions)}
    try:
        return load_config(args.config, {**os.environ, **settings}, kafka_only=True)
    except ConfigError as error:
        problems = "; ".join(error.problems)
        raise ValueError(f"--state-topic {args.state_topic!r} --partitions {args.partitions}: {problems}") from None


async def _repartition(config: Config, target: Config, args: argparse.Namespace, out: TextIO) -> int:
    timeout_ms = max(1000, round(args.timeout * 1000))
    steps = Repartition(config, target, timeout_ms=timeout_ms)
    try:
        async with asyncio.timeout(args.timeout):
            await check_kafka_access(config.kafka_bootstrap_servers, config.kafka_security, timeout=args.timeout)
            async with _admin(config, timeout_ms) as admin:
                report = await repartition(steps, functools.partial(describe_group, admin, config))
    except TimeoutError:
        error = KafkaUnavailable(
            f"Kafka at {config.kafka_bootstrap_servers} did not answer within {args.timeout:g} s (--timeout); "
            f"{target.state_topic!r} may hold part of a copy: delete it before running again"
        )
        return _fail(args, error, EXIT_KAFKA_UNAVAILABLE)
    except _FAILURE_TYPES as error:
        return _fail(args, error, _exit_status(error))
    if args.json:
        out.write(orjson.dumps(render_repartition_json(report), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write("".join(line + "\n" for line in render_repartition_text(report)))
    return EXIT_OK


# `relay state ACTION`: each takes the configuration, the arguments and where to print, and returns the exit status.
ACTIONS: Final[dict[str, Callable[[Config, argparse.Namespace, TextIO], int]]] = {
    "show": _show_main,
    "repartition": _repartition_main,
}


# --- show -----------------------------------------------------------------------------------------------------------


async def _show(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    try:
        async with asyncio.timeout(args.timeout):
            await check_kafka_access(config.kafka_bootstrap_servers, config.kafka_security, timeout=args.timeout)
            found = await read_integration(config, args.integration, timeout=args.timeout)
    except TimeoutError:
        error = KafkaUnavailable(f"Kafka at {config.kafka_bootstrap_servers} did not answer within {args.timeout:g} s")
        return _fail(args, error, EXIT_KAFKA_UNAVAILABLE)
    except _FAILURE_TYPES as error:
        return _fail(args, error, _exit_status(error))
    entry = found.entry
    polled = () if entry is None or entry.removed else DefaultResources.from_config(config).resources_of(entry)
    stored = {resource for (integration, resource), _ in found.store.pairs() if integration == args.integration}
    entity_limit = args.limit if args.entities else None
    report = StateReport(
        integration=args.integration,
        entry=entry,
        registry_topic=config.integrations_topic,
        state_topic=config.state_topic,
        partition=found.partition,
        records=found.records,
        group=found.group,
        resources=tuple(
            ResourceReport.of(
                resource,
                found.store.pair(args.integration, resource) if resource in stored else None,
                in_registry=in_registry,
                entity_limit=entity_limit,
            )
            for resource, in_registry in resources_to_show(stored, polled, args.resource)
        ),
    )
    now_ms = round(time.time() * 1000)
    if args.json:
        out.write(orjson.dumps(render_json(report, now_ms, polled=polled), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write("".join(line + "\n" for line in render_text(report, now_ms, polled=polled)))
    if entry is None:
        state = "its state is shown above" if report.has_state else "and no state is in the state topic"
        return _fail(
            args, f"integration {args.integration!r} is not in the registry: {state}", EXIT_UNKNOWN_INTEGRATION
        )
    return EXIT_OK


@dataclass(frozen=True, slots=True)
class Found:
    """What Kafka holds about one integration."""

    entry: RegistryEntry | None
    partition: int
    records: int
    store: StateStore
    group: GroupView


async def read_integration(config: Config, integration: str, *, timeout: float) -> Found:
    """Read, from Kafka, what ``relay state show`` reports about ``integration``: its registry entry, its state (only
    its records of its partition of the state topic) and the consumer group's description."""
    timeout_ms = max(1000, round(timeout * 1000))
    async with _admin(config, timeout_ms) as admin:
        topics = set(await admin.list_topics())
        group = await describe_group(admin, config)
    entry = None
    if config.integrations_topic in topics:
        async with RegistryTopic(config, timeout_seconds=timeout) as registry_topic:
            entry = (await registry_topic.read()).get(integration)
    store = StateStore(config.state_topic_partitions)
    partition = store.partition_of(integration)
    records = 0
    if config.state_topic in topics:
        records = await read_state(config, integration, store, timeout_ms=timeout_ms)
    return Found(entry, partition, records, store, group)


@contextlib.asynccontextmanager
async def _admin(config: Config, timeout_ms: int) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**config.kafka_client_kwargs(), request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        yield admin
    except KafkaError as exc:
        raise _refused(exc, config) or KafkaUnavailable(
            f"cannot describe the topics or the group {config.group_id!r}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), 5)


def _refused(exc: KafkaError, config: Config) -> KafkaAuthorizationFailed | None:
    if type(exc).__name__ == "GroupAuthorizationFailedError":
        return _group_refused(config)
    return authorization_failed(exc, config, doing="read")


def _group_refused(config: Config) -> KafkaAuthorizationFailed:
    return KafkaAuthorizationFailed(
        f"Kafka refused {principal_of(config)} Describe on the consumer group {config.group_id!r} "
        "(GROUP_AUTHORIZATION_FAILED): grant it Describe on that group"
    )


async def describe_group(admin: AIOKafkaAdminClient, config: Config) -> GroupView:
    """The fleet's consumer group (``RELAY_GROUP_ID``) as Kafka describes it: state, members and their partitions.
    A coordinator being elected or loading (on a new cluster, while its offsets topic is created) is waited for, within
    the command's timeout."""
    while True:
        try:
            view = await _describe_once(admin, config)
        except KafkaError as exc:
            if not getattr(exc, "retriable", False):
                raise
            view = None
        if view is not None:
            return view
        await asyncio.sleep(RETRY_SECONDS)


async def _describe_once(admin: AIOKafkaAdminClient, config: Config) -> GroupView | None:
    """The group's view; None when its coordinator is not ready yet (try again)."""
    for response in await admin.describe_consumer_groups([config.group_id]):
        for described in response.groups:
            error_code, group_id, state, protocol_type, _protocol, members = described[:6]
            if group_id != config.group_id:
                continue
            if error_code == GROUP_AUTHORIZATION_FAILED:
                raise _group_refused(config)
            if error_code in COORDINATOR_NOT_READY:
                return None
            if error_code:
                raise KafkaUnavailable(f"cannot describe the consumer group {group_id!r}: error code {error_code}")
            return group_view(
                group_id,
                state,
                (
                    (member_id, client_id, client_host, _assignment(assignment) if protocol_type == "consumer" else ())
                    for member_id, client_id, client_host, _metadata, assignment, *_ in members
                ),
            )
    return GroupView(config.group_id, "Dead")


def _assignment(raw: bytes) -> tuple[tuple[str, list[int]], ...]:
    if not raw:
        return ()
    try:
        decoded: Any = ConsumerProtocolMemberAssignment.decode(raw)
        return tuple((topic, list(partitions)) for topic, partitions in decoded.assignment)
    except Exception:  # an assignor of another kind: its member owns nothing we can tell
        return ()


def key_prefixes(integration: str) -> tuple[bytes, ...]:
    """The beginnings of the state-topic keys of ``integration``'s records (:mod:`relay.state_records`): JSON arrays
    whose first items are the kind and the integration."""
    return tuple(orjson.dumps([kind, integration])[:-1] + b"," for kind in (ENTITY, SHAPE, CHECKPOINT))


async def read_state(config: Config, integration: str, store: StateStore, *, timeout_ms: int) -> int:
    """Read ``integration``'s records of its partition of the state topic, committed ones only, from its beginning to
    the end it had when the read began, into ``store``; return how many there were (tombstones included)."""
    topic = config.state_topic
    consumer = AIOKafkaConsumer(
        **config.kafka_client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        request_timeout_ms=timeout_ms,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    prefixes = key_prefixes(integration)
    count = 0
    try:
        await consumer.start()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise KafkaUnavailable(f"the state topic {topic!r} is not in Kafka's metadata")
        check_partition_count(topic, len(partitions), config.state_topic_partitions)
        tp = TopicPartition(topic, partition_for_key(integration.encode(), config.state_topic_partitions))
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        # Positions step over transaction markers too, so comparing with the end offset is exact.
        while await consumer.position(tp) < end:
            batches = await consumer.getmany(tp, timeout_ms=POLL_TIMEOUT_MS, max_records=50_000)
            mine = [
                (record.key, record.value)
                for record in batches.get(tp, ())
                if record.key is not None and record.key.startswith(prefixes)
            ]
            store.restore_records(mine)
            count += len(mine)
    except KafkaError as exc:
        raise authorization_failed(exc, config, doing="read") or KafkaUnavailable(
            f"cannot read the state topic {topic!r}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 5)
    return count

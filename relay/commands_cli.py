"""Operators' commands, sent through the control topic (RELAY_CONTROL_TOPIC) to the replica that owns the integration:

  relay resnapshot ID [--resource R]          re-announce every live record (created, snapshot, reason resnapshot)
  relay reconcile ID [--resource R]           a reconciliation (hard-delete detection) now
  relay state reset ID [--resource R] --yes   forget what the relay remembers: the next poll is a snapshot

Without --resource a command applies to every resource the integration is polled for. The owner runs it as the
pair's next poll, once the poll in progress ended, then writes an acknowledgement to the control topic, which the
command waits for (--timeout, default 60 s; --no-wait sends and returns). A command carries an id: sent twice, it is
acted on once (within RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS). A command that no owner acknowledged (sent while no relay
ran, or handed over before it ran) is run by the partition's next owner, if it comes within that window; one
acknowledged is never run again.

Each talks only to Kafka, with the configuration of `relay run` (--config, RELAY_*), but needs neither RELAY_API_KEY
nor RELAY_INTEGRATIONS. It checks the integration is in the registry of integrations (`relay integrations list`),
prints what it sent and what the owner answered; --json prints it as JSON.

Exit status:
  0  done: the owner acknowledged it (or, with --no-wait, Kafka acknowledged the command)
  2  invalid configuration, or an invalid argument; `state reset` without --yes
  6  Kafka's ACLs refuse this principal the registry or the control topic
  7  Kafka refused the credentials or the client certificate, or the broker's certificate was refused
  8  Kafka could not be reached, or did not answer, within --timeout (the command was not sent)
  9  the integration is not in the registry, is removed or paused, or is not polled for --resource
  10 sent, but no acknowledgement within --timeout: no relay owns the partition, or it is busy (a long poll of
     the pair in progress) or was replaced meanwhile; the command is kept: the partition's (next) owner runs it
     if that is within RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS of its sending
  11 the owner answered that the command failed (its message says why; a failed resnapshot resumes with the
     pair's next poll)
"""

# What belongs here: the commands' arguments, output and exit codes, and their Kafka conversation (registry read,
# command sent, ack awaited: send_command), which the admin HTTP API (relay.admin) holds too, with the same wording.
# What the owner does with a command is relay.commands'.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from relay.cli_args import kafka_command_config, positive_seconds
from relay.config import Config, add_config_argument
from relay.control import ControlAction, UnreadableAction
from relay.errors import (
    KafkaAuthenticationFailed,
    KafkaAuthorizationFailed,
    KafkaTimedOut,
    KafkaUnavailable,
    UnknownIntegration,
)
from relay.kafka_access import check_kafka_access
from relay.partitioning import partition_for_key
from relay.registry import DefaultResources, check_integration_id
from relay.registry_topic import RegistryTopic
from relay.sink import authorization_failed

EXIT_OK: Final = 0
EXIT_INVALID: Final = 2
EXIT_KAFKA_AUTHORIZATION: Final = 6
EXIT_KAFKA_AUTHENTICATION: Final = 7
EXIT_KAFKA_UNAVAILABLE: Final = 8
EXIT_UNKNOWN_INTEGRATION: Final = 9
EXIT_NO_ACK: Final = 10
EXIT_FAILED: Final = 11
DEFAULT_WAIT_SECONDS: Final = 60.0

_HELP: Final = {
    "resnapshot": "re-announce every live record of an integration (created, snapshot, reason resnapshot)",
    "reconcile": "reconcile an integration now: find the records deleted outright (hard deletes)",
    "reset": "forget what the relay remembers of an integration: its next poll is a snapshot",
}
_DID: Final = {"resnapshot": "resnapshot", "reconcile": "reconciliation", "reset": "reset"}
KINDS: Final = tuple(_DID)
# What a command's failure to be sent is, by exception, as an exit status (UnknownIntegration first: it is the most
# specific; KafkaTimedOut is a KafkaUnavailable).
FAILURES: Final[tuple[tuple[type[Exception], int], ...]] = (
    (UnknownIntegration, EXIT_UNKNOWN_INTEGRATION),
    (KafkaAuthorizationFailed, EXIT_KAFKA_AUTHORIZATION),
    (KafkaAuthenticationFailed, EXIT_KAFKA_AUTHENTICATION),
    (KafkaUnavailable, EXIT_KAFKA_UNAVAILABLE),
)
_FAILURE_TYPES: Final = tuple(failure for failure, _ in FAILURES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`relay resnapshot`, `relay reconcile`, or the `relay state` group (with `reset`), by the parser's name."""
    name = parser.prog.split()[-1]
    if name == "state":
        sub = parser.add_subparsers(dest="state_action", metavar="ACTION", required=True)
        add_reset_parser(sub)
    else:
        _add_command_arguments(parser, name)


def add_reset_parser(sub: Any) -> argparse.ArgumentParser:
    """Add `reset` to a `relay state` group's subparsers (for whichever module owns the group)."""
    reset: argparse.ArgumentParser = sub.add_parser(
        "reset",
        help=_HELP["reset"],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_command_arguments(reset, "reset")
    reset.add_argument("--yes", action="store_true", help="yes, forget it (required)")
    reset.set_defaults(handler=main)
    return reset


def _add_command_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    add_config_argument(parser)
    parser.set_defaults(command_kind=kind)
    parser.add_argument("integration", metavar="ID", help="the integration id, like personio:8d1hpPsDu6Q5K1UnBDMXiUeGV")
    parser.add_argument("--resource", metavar="R", help="only this resource, like ats/users (default: all of them)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_WAIT_SECONDS,
        metavar="SECONDS",
        help=f"wait this long for Kafka and the owner's acknowledgement (default {DEFAULT_WAIT_SECONDS:g})",
    )
    parser.add_argument("--no-wait", action="store_true", help="return once Kafka acknowledged the command")


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    kind: str = args.command_kind
    prog = "relay state reset" if kind == "reset" else f"relay {kind}"
    config = kafka_command_config(args.config)
    if config is None:
        return EXIT_INVALID
    try:
        check_integration_id(args.integration)
    except ValueError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_INVALID
    if kind == "reset" and not args.yes:
        print(f"{prog}: {reset_unconfirmed_text(args.integration, args.resource, 'Add --yes')}", file=sys.stderr)
        return EXIT_INVALID
    return asyncio.run(_run(config, args, kind, prog, out))


def reset_unconfirmed_text(integration: str, resource: str | None, confirm: str) -> str:
    """Why a reset is refused until it is confirmed (``confirm``: how to, like 'Add --yes')."""
    return (
        f"this forgets what the relay remembers of {integration} ({resource or 'every resource'}): its next poll is "
        f"a snapshot, which announces every live record again when RELAY_INITIAL_SNAPSHOT=emit. {confirm} to do it"
    )


async def _run(config: Config, args: argparse.Namespace, kind: str, prog: str, out: TextIO) -> int:
    try:
        done = await send_command(
            config,
            kind,
            args.integration,
            args.resource,
            timeout=args.timeout,
            wait=not args.no_wait,
            on_sent=lambda sent: _print_sent(config, args, sent, out),
        )
    except _FAILURE_TYPES as error:
        return _fail(prog, error, exit_status(error))
    if args.no_wait:
        if args.json:  # what was sent, its command id above all: nothing else says it
            out.write(orjson.dumps(document(done.command, None), option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    if done.ack is None:
        return _no_ack(args, done.command, out)
    return _print_ack(prog, args, done.command, done.ack, out)


def exit_status(error: Exception) -> int:
    """The exit status of a command that failed with ``error``, one of FAILURES."""
    return next(code for failure, code in FAILURES if isinstance(error, failure))


@dataclass(frozen=True, slots=True)
class Sent:
    """A command Kafka acknowledged, and what for: the resources it applies to, the control topic's partition."""

    command: ControlAction
    resources: tuple[str, ...]
    partition: int
    ack: ControlAction | None = None  # the owner's, once received (None: not waited for, or not within the timeout)


async def send_command(
    config: Config,
    kind: str,
    integration: str,
    resource: str | None,
    *,
    timeout: float,
    wait: bool = True,
    on_sent: Callable[[Sent], None] = lambda sent: None,
) -> Sent:
    """Send the command ``kind`` (one of KINDS) for ``integration`` (``resource``, or every one) to its owner, after
    checking the registry polls it; ``on_sent`` is told once Kafka has it. With ``wait``, wait for the owner's ack
    until ``timeout`` seconds after the start. Raises, when the command was not sent, UnknownIntegration (not in the
    registry, removed, paused, or not polled for ``resource``), KafkaTimedOut, or another error of FAILURES."""
    deadline = time.monotonic() + timeout
    command = ControlAction(
        kind,  # type: ignore[arg-type]  # one of COMMAND_KINDS
        integration,
        () if resource is None else (resource,),
        None,
        round(time.time() * 1000),
        str(uuid.uuid4()),
    )
    partition = partition_for_key(integration.encode(), config.state_topic_partitions)
    sent: Sent | None = None
    try:
        # The clients close outside the timeout's scope: its expiry must not cancel their closing (a consumer left
        # open), and each close is bounded on its own.
        async with contextlib.AsyncExitStack() as clients, asyncio.timeout(timeout):
            await check_kafka_access(config.kafka_bootstrap_servers, config.kafka_security, timeout=timeout)
            resources = await _check_registry(config, integration, resource, timeout=timeout)
            client = await clients.enter_async_context(ControlClient(config, partition))
            await client.send(command)
            sent = Sent(command, resources, partition)
            on_sent(sent)
            if not wait:
                return sent
            ack = await client.wait_for_ack(command.command_id or "", deadline)
    except TimeoutError:
        if sent is not None:
            return sent
        raise KafkaTimedOut(f"Kafka at {config.kafka_bootstrap_servers} did not answer within {timeout:g} s") from None
    except KafkaError as error:
        if refused := authorization_failed(error, config, doing="write"):
            raise refused from error
        raise KafkaUnavailable(f"{type(error).__name__}: {error}") from error
    return dataclasses.replace(sent, ack=ack)


async def _check_registry(config: Config, integration: str, resource: str | None, *, timeout: float) -> tuple[str, ...]:
    """The resources the command applies to; raises UnknownIntegration when the registry does not poll it."""
    async with RegistryTopic(config, timeout_seconds=timeout) as topic:
        await topic.ensure_topic()
        registry = await topic.read()
    entry = registry.get(integration)
    if entry is None:
        raise UnknownIntegration(
            f"{integration} is not in the registry of integrations ({config.integrations_topic}): "
            "see relay integrations list",
            integration=integration,
        )
    if entry.removed:
        raise UnknownIntegration(
            f"{integration} is removed from the registry: nothing polls it", integration=integration
        )
    if entry.paused:
        raise UnknownIntegration(
            f"{integration} is paused: resume it first (relay integrations resume)", integration=integration
        )
    resources = DefaultResources.from_config(config).resources_of(entry)
    if resource is not None:
        if resource not in resources:
            raise UnknownIntegration(
                f"{integration} is not polled for {resource!r}; its resources: {', '.join(resources) or 'none'}",
                integration=integration,
            )
        return (resource,)
    return tuple(resources)


class ControlTopicMissing(KafkaUnavailable):
    """The control topic, or its partition for the integration, does not exist: no relay of this configuration ran."""


class ControlClient:
    """A producer for the command (unless ``sending`` is False) and a consumer of one partition of the control topic,
    from its end when entered: whatever is written after, an ack included, is read. ``relay integrations`` uses one
    too, entered before it writes the registry, to wait for the owner's ack of the change."""

    def __init__(self, config: Config, partition: int, *, sending: bool = True) -> None:
        self._config = config
        self._tp = TopicPartition(config.control_topic, partition)
        self._producer = (
            AIOKafkaProducer(**config.kafka_client_kwargs(), acks="all", enable_idempotence=False) if sending else None
        )
        self._consumer = AIOKafkaConsumer(
            **config.kafka_client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=200,
        )

    async def __aenter__(self) -> ControlClient:
        try:
            await self._consumer.start()
            partitions = self._consumer.partitions_for_topic(self._tp.topic)
            if not partitions:
                await self._consumer._client.force_metadata_update()
                partitions = self._consumer.partitions_for_topic(self._tp.topic)
            if not partitions or self._tp.partition not in partitions:
                raise ControlTopicMissing(
                    f"the control topic {self._tp.topic!r} has no partition {self._tp.partition}: has a relay of "
                    "this configuration ever run?"
                )
            self._consumer.assign([self._tp])
            end = (await self._consumer.end_offsets([self._tp]))[self._tp]
            self._consumer.seek(self._tp, end)  # the ack comes after the command, which comes after this
            if self._producer is not None:
                await self._producer.start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        for client in (self._producer, self._consumer):
            if client is None:
                continue
            with contextlib.suppress(Exception):  # a client that never started, or a broker gone
                await asyncio.wait_for(client.stop(), 5.0)

    async def send(self, command: ControlAction) -> None:
        if self._producer is None:
            raise RuntimeError("this ControlClient was made with sending=False")
        key = command.integration.encode()
        await self._producer.send_and_wait(self._tp.topic, command.encode(), key=key, partition=self._tp.partition)

    async def wait_for_ack(self, command_id: str, deadline: float) -> ControlAction:
        """The owner's ack of ``command_id``; raises TimeoutError at ``deadline``."""
        return await self.wait_for(lambda ack: ack.command_id == command_id, deadline)

    async def wait_for(self, answers: Callable[[ControlAction], bool], deadline: float) -> ControlAction:
        """The first ack read that ``answers`` accepts; raises TimeoutError at ``deadline``."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            batches = await self._consumer.getmany(self._tp, timeout_ms=max(1, min(500, round(left * 1000))))
            for record in batches.get(self._tp, []):
                try:
                    action = ControlAction.decode(record.value)
                except UnreadableAction:
                    continue
                if action.kind == "ack" and answers(action):
                    return action


def _print_sent(config: Config, args: argparse.Namespace, sent: Sent, out: TextIO) -> None:
    if args.json:
        return
    print(sent_text(config, sent), file=out)
    if not args.no_wait:
        print(f"waiting up to {args.timeout:g} s for the owner's acknowledgement", file=out, flush=True)


def sent_text(config: Config, sent: Sent) -> str:
    """What was sent, where."""
    command = sent.command
    which = command.resources[0] if command.resources else f"every resource: {', '.join(sent.resources)}"
    return (
        f"sent {command.kind} of {command.integration} ({which}) as command {command.command_id} to "
        f"{config.control_topic} partition {sent.partition}"
    )


def document(command: ControlAction, ack: ControlAction | None) -> dict[str, Any]:
    """What ``--json`` prints: the command sent and the owner's ack (None: none within the timeout)."""
    return {
        "command": command.kind,
        "command_id": command.command_id,
        "integration": command.integration,
        "resource": command.resources[0] if command.resources else None,
        "sent": True,
        "ack": None if ack is None else {"outcome": ack.outcome, "message": ack.message},
    }


def done_text(command: ControlAction, ack: ControlAction) -> str:
    """What the owner said it did (``ack.outcome == "ok"``)."""
    return f"{_DID[command.kind]} of {command.integration} done: {ack.message}"


def failed_text(ack: ControlAction) -> str:
    """What the owner said went wrong (``ack.outcome != "ok"``)."""
    return f"the owner answered that it failed: {ack.message}"


def no_ack_text(command: ControlAction, timeout: float) -> str:
    """Why a command sent has no answer."""
    return (
        f"command {command.command_id} was sent, but no owner acknowledged it within {timeout:g} s "
        "(no relay running, a long poll in progress, or a handover meanwhile); it is kept: the partition's owner "
        "runs it if it comes within RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS of now"
    )


def _print_ack(prog: str, args: argparse.Namespace, command: ControlAction, ack: ControlAction, out: TextIO) -> int:
    code = EXIT_OK if ack.outcome == "ok" else EXIT_FAILED
    if args.json:
        out.write(orjson.dumps(document(command, ack), option=orjson.OPT_INDENT_2).decode() + "\n")
    elif code == EXIT_OK:
        print(done_text(command, ack), file=out)
    else:
        print(f"{prog}: {failed_text(ack)}", file=sys.stderr)
    return code


def _no_ack(args: argparse.Namespace, command: ControlAction, out: TextIO) -> int:
    if args.json:
        out.write(orjson.dumps(document(command, None), option=orjson.OPT_INDENT_2).decode() + "\n")
    prog = "relay state reset" if command.kind == "reset" else f"relay {command.kind}"
    print(f"{prog}: {no_ack_text(command, args.timeout)}", file=sys.stderr)
    return EXIT_NO_ACK


def _fail(prog: str, error: Exception, code: int) -> int:
    print(f"{prog}: {error}", file=sys.stderr)
    return code

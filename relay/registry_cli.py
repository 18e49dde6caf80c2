"""Show and change the registry of integrations, kept in Kafka (RELAY_INTEGRATIONS_TOPIC, a compacted topic holding
one record per integration):

  relay integrations list [--json]
  relay integrations add ID [--category ats|hris] [--resources R,R,...]
  relay integrations remove ID
  relay integrations pause ID
  relay integrations resume ID

Each talks only to Kafka, with the configuration of `relay run` (--config, RELAY_*), but needs neither RELAY_API_KEY
nor RELAY_INTEGRATIONS. It creates the registry topic when it is missing, reads it to its end, writes at most one
record (acknowledged by every in-sync replica) and prints what it did; --json prints it as JSON. Then add, remove,
pause and resume wait until the relay owning the integration (the replica owning its state partition) acknowledges on
the control topic (RELAY_CONTROL_TOPIC) that it applied the change: polling started, stopped, paused, resumed. A
change applied while the partition changes owner is acknowledged by its next owner, once its claim applied it.
--timeout (default 30 s) bounds the whole command, the wait included; --no-wait returns once the record is written.

An integration without resources of its own is polled for those of its category: RELAY_RESOURCES_ATS or
RELAY_RESOURCES_HRIS, or RELAY_RESOURCES when that is unset or it has no category. `add` of an integration already
there changes the category and resources given; of a removed one, adds it again. A removal is kept in the registry,
so that RELAY_INTEGRATIONS, which seeds the registry, never adds it back. Doing what is done already (pausing a paused
integration, ...) writes nothing and succeeds.

Exit status:
  0  done, or nothing to do
  2  invalid configuration, or an invalid argument (an integration id, a resource)
  6  Kafka's ACLs refuse this principal the registry topic (Describe, Read, Write; Create when it is missing), or
     the control topic (Describe, Read), read to wait for the owner's acknowledgement, or Create on the event topics
     of resources of its own (add --resources naming a resource no RELAY_RESOURCES* setting lists)
  7  Kafka refused the credentials or the client certificate, or the broker's certificate was refused
  8  Kafka could not be reached, or did not answer, within --timeout
  9  remove, pause or resume of an integration the registry does not hold; pause or resume of a removed one
  10 written, but no relay acknowledged the change within --timeout: none runs (or none ever ran: the control topic
     does not exist, and the command says so at once), or the integration's partition is changing owner and its
     next owner has not claimed it yet. The change stays in the registry: the relay that owns the partition next
     polls as it says (and acknowledges it at its claim, within RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS of the change)


A running relay follows the registry: it polls an integration added within one poll interval, stops polling one
removed, and pauses and resumes with it, with no restart.
"""

# What belongs here: the `relay integrations` command (this docstring is its --help description): arguments, output
# and exit codes, and the conversation with Kafka of each action (read_registry, edit_registry), which the admin HTTP
# API (relay.admin) holds too, with the same wording. The edits are relay.registry's, the Kafka work
# relay.registry_topic's.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

import orjson
from aiokafka.errors import KafkaError

from relay.cli_args import kafka_command_config, positive_seconds
from relay.commands_cli import ControlClient, ControlTopicMissing
from relay.config import Config, add_config_argument
from relay.config_kinds import Invalid, Items, Text, is_resource_path
from relay.control import ControlAction, registry_revision_acked
from relay.errors import (
    KafkaAuthenticationFailed,
    KafkaAuthorizationFailed,
    KafkaTimedOut,
    KafkaUnavailable,
    UnknownIntegration,
)
from relay.kafka_access import check_kafka_access
from relay.partitioning import partition_for_key
from relay.registry import (
    CATEGORIES,
    MAX_BY_LENGTH,
    Category,
    DefaultResources,
    Registry,
    RegistryEntry,
    add,
    check_integration_id,
    check_resources,
    now_text,
    pause,
    remove,
    resume,
)
from relay.registry_topic import DEFAULT_TIMEOUT_SECONDS, RegistryTopic
from relay.sink import authorization_failed, ensure_event_topics

PROG: Final = "relay integrations"
EXIT_OK: Final = 0
EXIT_INVALID: Final = 2  # as relay run's invalid configuration, and argparse's usage errors
EXIT_KAFKA_AUTHORIZATION: Final = 6  # as relay run (relay.app)
EXIT_KAFKA_AUTHENTICATION: Final = 7  # as relay run (relay.app)
EXIT_KAFKA_UNAVAILABLE: Final = 8
EXIT_UNKNOWN_INTEGRATION: Final = 9
EXIT_NO_ACK: Final = 10  # as relay resnapshot, reconcile, state reset (relay.commands_cli)

_RESOURCES: Final = Items(Text("a path like ats/users (a-z, 0-9, _, - between slashes)", is_resource_path))
Edit = Callable[..., RegistryEntry | None]
EditOf = Callable[[Registry], RegistryEntry | None]  # an edit with its arguments given: of the registry read
ACTIONS: Final = ("add", "remove", "pause", "resume")
# What an action's failure is, by exception, as an exit status (most specific first: UnknownIntegration is no
# ValueError, KafkaTimedOut is a KafkaUnavailable).
FAILURES: Final[tuple[tuple[type[Exception], int], ...]] = (
    (UnknownIntegration, EXIT_UNKNOWN_INTEGRATION),
    (ValueError, EXIT_INVALID),
    (KafkaAuthorizationFailed, EXIT_KAFKA_AUTHORIZATION),
    (KafkaAuthenticationFailed, EXIT_KAFKA_AUTHENTICATION),
    (KafkaUnavailable, EXIT_KAFKA_UNAVAILABLE),
)
_FAILURE_TYPES: Final = tuple(failure for failure, _ in FAILURES)
_EDITS: Final[dict[str, tuple[Edit, str]]] = {  # command -> (edit, what it did)
    "add": (add, "added"),
    "remove": (remove, "removed"),
    "pause": (pause, "paused"),
    "resume": (resume, "resumed"),
}
_ALREADY: Final = {
    "add": "is in the registry already, as asked",
    "remove": "is removed already",
    "pause": "is paused already",
    "resume": "is not paused",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_config_argument(common)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"give up when Kafka has not answered within this long (exit 8), or, once the change is written, the "
        f"owner has not acknowledged it (exit 10); default {DEFAULT_TIMEOUT_SECONDS:g}",
    )
    editing = argparse.ArgumentParser(add_help=False, parents=[common])
    editing.add_argument(
        "--by",
        metavar="WHO",
        help="who the registry records as making the change (default: relay integrations (user@host))",
    )
    editing.add_argument(
        "--no-wait",
        action="store_true",
        help="return once Kafka has the change, without waiting for the owner's acknowledgement",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", parents=[common], help="print every integration of the registry, removed ones too")
    adding = sub.add_parser("add", parents=[editing], help="add an integration (or change its category, resources)")
    adding.add_argument("integration", metavar="ID", help="the integration id, like personio:8d1hpPsDu6Q5K1UnBDMXiUeGV")
    adding.add_argument("--category", choices=CATEGORIES, help="its category, which gives its default resources")
    adding.add_argument(
        "--resources",
        metavar="R,R,...",
        help="resources of its own, like ats/users,ats/jobs (default: those of its category)",
    )
    for action, help_text in (
        ("remove", "remove an integration: it is no longer polled (add brings it back)"),
        ("pause", "stop polling an integration for now"),
        ("resume", "poll a paused integration again"),
    ):
        command = sub.add_parser(action, parents=[editing], help=help_text)
        command.add_argument("integration", metavar="ID", help="the integration id")


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    config = kafka_command_config(args.config)
    if config is None:
        return EXIT_INVALID
    try:
        edit = None if args.action == "list" else _edit_of(args)
    except ValueError as error:
        print(f"{PROG} {args.action}: {error}", file=sys.stderr)
        return EXIT_INVALID
    return asyncio.run(_run(config, args, edit, out))


def _edit_of(args: argparse.Namespace) -> EditOf:
    """The edit ``args`` ask for, as a function of the registry read; raises ValueError for an invalid argument."""
    check_integration_id(args.integration)  # first: the id is the argument most worth naming
    by = args.by if args.by is not None else f"{PROG} ({_user()}@{socket.gethostname()})"
    if args.action != "add":
        return make_edit(args.action, args.integration, by=by, by_name="--by")
    resources = _resources(args.resources)
    return make_edit(args.action, args.integration, by=by, by_name="--by", category=args.category, resources=resources)


def make_edit(
    action: str,
    integration: str,
    *,
    by: str,
    by_name: str = "by",
    category: Category | None = None,
    resources: tuple[str, ...] | None = None,
) -> EditOf:
    """The edit ``action`` (add, remove, pause, resume) of ``integration``, as a function of the registry read; raises
    ValueError, naming the argument (``by_name`` for ``by``), for an invalid one. ``category`` and ``resources``
    are add's."""
    check_integration_id(integration)
    if not by or len(by) > MAX_BY_LENGTH or not by.isprintable():
        raise ValueError(f"{by_name} must be printable text of 1 to {MAX_BY_LENGTH} characters")
    function, _ = _EDITS[action]
    if action != "add":
        return lambda registry: function(registry, integration, at=now_text(), by=by)
    check_resources(category, resources)  # again with the registry's category, when only one of them is given
    return lambda registry: function(
        registry, integration, category=category, resources=resources, at=now_text(), by=by
    )


def _resources(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    try:
        return _RESOURCES.parse(text)
    except Invalid as problem:
        raise ValueError(f"--resources {problem}") from None


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container user without a name
        return "unknown"


async def _run(config: Config, args: argparse.Namespace, edit: EditOf | None, out: TextIO) -> int:
    try:
        if edit is None:
            registry = await read_registry(config, timeout=args.timeout)
        else:
            done = await edit_registry(
                config,
                args.action,
                args.integration,
                edit,
                timeout=args.timeout,
                wait=not _no_wait(args),
                on_written=lambda written: _print_written(config, args, written, out),
            )
    except _FAILURE_TYPES as error:
        return _fail(args, error, exit_status(error))
    if edit is None:
        _print_list(config, registry, json=args.json, out=out)
        return EXIT_OK
    if args.json:
        out.write(orjson.dumps(done.document(), option=orjson.OPT_INDENT_2).decode() + "\n")
    if done.written is None or not done.waited:  # nothing to do, or --no-wait
        return EXIT_OK
    if done.ack is None:
        print(f"{PROG} {args.action}: {no_ack_text(config, done, args.timeout)}", file=sys.stderr)
        return EXIT_NO_ACK
    if not args.json:
        print(f"the owner acknowledged it: {done.ack.message or done.ack.outcome}", file=out)
    return EXIT_OK


def _print_written(config: Config, args: argparse.Namespace, done: EditDone, out: TextIO) -> None:
    """As soon as the record is written (or found needless): what was done, and whether an ack is awaited."""
    if args.json:
        return
    print(done.text(config), file=out, flush=True)
    if done.waited and done.written is not None and not done.control_topic_missing:
        print(f"waiting up to {args.timeout:g} s for the owner's acknowledgement", file=out, flush=True)


def no_ack_text(config: Config, done: EditDone, timeout: float) -> str:
    """Why a change written has no acknowledgement."""
    assert done.written is not None
    if done.control_topic_missing:
        return (
            f"no relay of this configuration has run yet (the control topic {config.control_topic} does not exist), "
            "so none acknowledges the change; the first to start polls as the registry says"
        )
    return (
        f"the change is written (revision {done.written.revision}), but no relay acknowledged it within {timeout:g} s "
        "(no relay running, or the integration's partition changing owner); the relay that owns the partition next "
        "polls as the registry says"
    )


def exit_status(error: Exception) -> int:
    """The exit status of an action that failed with ``error``, one of FAILURES."""
    return next(code for failure, code in FAILURES if isinstance(error, failure))


async def read_registry(config: Config, *, timeout: float) -> Registry:
    """The registry, read to its end (its topic created when missing); raises KafkaTimedOut after ``timeout``
    seconds, or another error of FAILURES."""
    try:
        # Each step is bounded by the timeout, and so is the whole: an operator waits the timeout at most. The topic's
        # clients close outside its scope: its expiry must not cancel their closing.
        async with contextlib.AsyncExitStack() as clients, asyncio.timeout(timeout):
            await check_kafka_access(config.kafka_bootstrap_servers, config.kafka_security, timeout=timeout)
            topic = await clients.enter_async_context(RegistryTopic(config, timeout_seconds=timeout))
            await topic.ensure_topic()
            return await topic.read()
    except TimeoutError:
        raise _timed_out(config, timeout, editing=False) from None


@dataclass(frozen=True, slots=True)
class EditDone:
    """What an edit did: ``written`` is the entry it wrote, None when there was nothing to do (``before`` stays)."""

    action: str
    integration: str
    before: RegistryEntry | None
    written: RegistryEntry | None
    waited: bool = False  # for the owner's acknowledgement (not with --no-wait, not when nothing was written)
    control_topic_missing: bool = False  # no relay ever ran, so none could acknowledge: not waited for long
    ack: ControlAction | None = None  # the owner's acknowledgement, when one came within the timeout

    @property
    def did(self) -> str:
        """What it did, in a word: added, updated, removed, paused, resumed, or none."""
        if self.written is None:
            return "none"
        if self.action == "add" and self.before is not None and not self.before.removed:
            return "updated"
        return _EDITS[self.action][1]

    def document(self) -> dict[str, Any]:
        """What ``--json`` prints."""
        entry = self.before if self.written is None else self.written
        return {
            "action": self.did,
            "integration": self.integration,
            "changed": self.written is not None,
            "entry": None if entry is None else entry.as_json(),
            # The owner's acknowledgement that it applied the change; null when none was waited for or none came.
            "ack": None if self.ack is None else {"outcome": self.ack.outcome, "message": self.ack.message},
        }

    def text(self, config: Config) -> str:
        """The line printed without ``--json``."""
        if self.written is None:
            return f"{self.integration} {_ALREADY[self.action]}: nothing written"
        defaults = DefaultResources.from_config(config)
        written = self.written
        return (
            f"{self.did} {written.integration} in {config.integrations_topic} (revision {written.revision}): "
            f"{written.state}, category {written.category or '-'}, resources {_resources_text(written, defaults)}"
        )


async def edit_registry(
    config: Config,
    action: str,
    integration: str,
    edit: EditOf,
    *,
    timeout: float,
    wait: bool = False,
    on_written: Callable[[EditDone], None] = lambda done: None,
) -> EditDone:
    """Read the registry (its topic created when missing), apply ``edit`` (``make_edit``) and write the entry it
    makes, if any (acks=all); ``on_written`` is told what was done once it is. With ``wait``, then wait for the
    owner's acknowledgement that it applied the change (:attr:`EditDone.ack`; None when none came within
    ``timeout``). Raises UnknownIntegration, ValueError (a category its resources are not of), KafkaTimedOut after
    ``timeout`` seconds before the write (the change may have been written), or another error of FAILURES."""
    deadline = time.monotonic() + timeout
    done: EditDone | None = None
    try:
        # Each step is bounded by the timeout, and so is the whole: an operator waits the timeout at most. The clients
        # close outside its scope: its expiry must not cancel their closing (a consumer left open).
        async with contextlib.AsyncExitStack() as clients, asyncio.timeout(timeout):
            await check_kafka_access(config.kafka_bootstrap_servers, config.kafka_security, timeout=timeout)
            topic = await clients.enter_async_context(RegistryTopic(config, timeout_seconds=timeout))
            await topic.ensure_topic()
            registry = await topic.read()
            before = registry.get(integration)
            entry = edit(registry)
            if entry is None:  # nothing to do, nothing to wait for
                done = EditDone(action, integration, before, None)
                on_written(done)
                return done
            await _ensure_event_topics(config, entry)
            owner = await clients.enter_async_context(_owner_acks(config, integration, wait=wait))  # before the write
            written = (await topic.write([entry]))[0]
            done = EditDone(
                action, integration, before, written, waited=wait, control_topic_missing=wait and owner is None
            )
            on_written(done)
            if owner is None:
                return done
            ack = await owner.wait_for(_acknowledges(written), deadline)
    except TimeoutError:
        if done is not None:
            return done
        raise _timed_out(config, timeout, editing=True) from None
    except KafkaError as error:  # reading the control topic for the ack (the registry's own errors are mapped)
        if refused := authorization_failed(error, config, doing="read"):
            raise refused from error
        raise KafkaUnavailable(f"{type(error).__name__}: {error}") from error
    return dataclasses.replace(done, ack=ack)


@contextlib.asynccontextmanager
async def _owner_acks(config: Config, integration: str, *, wait: bool) -> AsyncIterator[ControlClient | None]:
    """A reader of the integration's partition of the control topic, from its end; None without ``wait``, or when no
    relay ever created the control topic (then nobody can acknowledge: the command says so, after writing)."""
    if not wait:
        yield None
        return
    partition = partition_for_key(integration.encode(), config.state_topic_partitions)
    client = ControlClient(config, partition, sending=False)
    try:
        await client.__aenter__()
    except ControlTopicMissing:
        yield None
        return
    try:
        yield client
    finally:
        await client.__aexit__()


def _no_wait(args: argparse.Namespace) -> bool:
    # Callers that build their own arguments (not argparse's) from before --no-wait existed wait, as the CLI does.
    return bool(getattr(args, "no_wait", False))


def _acknowledges(written: RegistryEntry) -> Callable[[ControlAction], bool]:
    """Whether an ack says the owner applied ``written`` (or a later change of the same integration, which it
    applied in the same step)."""

    def answers(ack: ControlAction) -> bool:
        revision = registry_revision_acked(ack)
        return ack.integration == written.integration and revision is not None and revision >= written.revision

    return answers


async def _ensure_event_topics(config: Config, entry: RegistryEntry) -> None:
    """Before an integration is polled for resources of its own that no RELAY_RESOURCES* list names, create their
    event topics (as relay run does for the listed ones): brokers that do not create topics on their own would
    refuse its owner's first transaction."""
    own = [resource for resource in entry.resources or () if resource not in config.all_resources()]
    if own and not entry.removed:
        await ensure_event_topics(config, own)


def _timed_out(config: Config, timeout: float, *, editing: bool) -> KafkaTimedOut:
    return KafkaTimedOut(
        f"Kafka at {config.kafka_bootstrap_servers} did not answer within {timeout:g} s"
        + (": the change may still have been written; list the registry to see" if editing else "")
    )


def _fail(args: argparse.Namespace, error: Exception, code: int) -> int:
    print(f"{PROG} {args.action}: {error}", file=sys.stderr)
    return code


# --- Output ---------------------------------------------------------------------------------------------------------


def _print_list(config: Config, registry: Registry, *, json: bool, out: TextIO) -> None:
    if json:
        out.write(orjson.dumps(list_document(config, registry), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    defaults = DefaultResources.from_config(config)
    entries = [registry[integration] for integration in sorted(registry)]
    if not entries:
        print(f"no integrations in {config.integrations_topic}", file=out)
        return
    rows = [("INTEGRATION", "STATE", "CATEGORY", "RESOURCES", "ADDED", "UPDATED")]
    rows += [
        (
            entry.integration,
            entry.state,
            entry.category or "-",
            _resources_text(entry, defaults),
            f"{entry.added_at} by {entry.added_by}",
            f"{entry.updated_at} by {entry.updated_by}",
        )
        for entry in entries
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]), file=out)


def list_document(config: Config, registry: Registry) -> list[dict[str, Any]]:
    """What ``list --json`` prints: every entry, removed ones too, by id, with the resources it is polled for."""
    defaults = DefaultResources.from_config(config)
    entries = [registry[integration] for integration in sorted(registry)]
    return [{**entry.as_json(), "effective_resources": list(defaults.resources_of(entry))} for entry in entries]


def _resources_text(entry: RegistryEntry, defaults: DefaultResources) -> str:
    polled = ",".join(defaults.resources_of(entry))
    return polled if entry.resources is not None else f"{polled} (default)"


def _print_edit(config: Config, args: argparse.Namespace, done: EditDone, *, out: TextIO) -> None:
    if args.json:
        out.write(orjson.dumps(done.document(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(done.text(config), file=out)

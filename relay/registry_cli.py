"""Show and change the registry of integrations, kept in Kafka (RELAY_INTEGRATIONS_TOPIC, a compacted topic holding
one record per integration):

  relay integrations list [--json]
  relay integrations add ID [--category ats|hris] [--resources R,R,...]
  relay integrations remove ID
  relay integrations pause ID
  relay integrations resume ID

Each talks only to Kafka, with the configuration of `relay run` (--config, RELAY_*), but needs neither RELAY_API_KEY
nor RELAY_INTEGRATIONS. It creates the registry topic when it is missing, reads it to its end, writes at most one
record (acknowledged by every in-sync replica) and prints what it did; --json prints it as JSON.

An integration without resources of its own is polled for those of its category: RELAY_RESOURCES_ATS or
RELAY_RESOURCES_HRIS, or RELAY_RESOURCES when that is unset or it has no category. `add` of an integration already
there changes the category and resources given; of a removed one, adds it again. A removal is kept in the registry,
so that RELAY_INTEGRATIONS, which seeds the registry, never adds it back. Doing what is done already (pausing a paused
integration, ...) writes nothing and succeeds.

Exit status:
  0  done, or nothing to do
  2  invalid configuration, or an invalid argument (an integration id, a resource)
  6  Kafka's ACLs refuse this principal the registry topic (Describe, Read, Write; Create when it is missing)
  7  Kafka refused the credentials or the client certificate, or the broker's certificate was refused
  8  Kafka could not be reached, or did not answer, within --timeout
  9  remove, pause or resume of an integration the registry does not hold; pause or resume of a removed one

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
import getpass
import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

import orjson

from relay.config import Config, ConfigError, add_config_argument, load_config, print_problems
from relay.config_kinds import Invalid, Items, Text, is_resource_path
from relay.errors import (
    KafkaAuthenticationFailed,
    KafkaAuthorizationFailed,
    KafkaTimedOut,
    KafkaUnavailable,
    UnknownIntegration,
)
from relay.kafka_access import check_kafka_access
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

PROG: Final = "relay integrations"
EXIT_OK: Final = 0
EXIT_INVALID: Final = 2  # as relay run's invalid configuration, and argparse's usage errors
EXIT_KAFKA_AUTHORIZATION: Final = 6  # as relay run (relay.app)
EXIT_KAFKA_AUTHENTICATION: Final = 7  # as relay run (relay.app)
EXIT_KAFKA_UNAVAILABLE: Final = 8
EXIT_UNKNOWN_INTEGRATION: Final = 9

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
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"give up when Kafka has not answered within this long (exit 8; default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    editing = argparse.ArgumentParser(add_help=False, parents=[common])
    editing.add_argument(
        "--by",
        metavar="WHO",
        help="who the registry records as making the change (default: relay integrations (user@host))",
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


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return seconds


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    # aiokafka logs every failed connection attempt at ERROR; the command says what went wrong once, itself.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        config = load_config(args.config, kafka_only=True)
    except ConfigError as error:
        print_problems(error)
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
            done = await edit_registry(config, args.action, args.integration, edit, timeout=args.timeout)
    except _FAILURE_TYPES as error:
        return _fail(args, error, exit_status(error))
    if edit is None:
        _print_list(config, registry, json=args.json, out=out)
    else:
        _print_edit(config, args, done, out=out)
    return EXIT_OK


def exit_status(error: Exception) -> int:
    """The exit status of an action that failed with ``error``, one of FAILURES."""
    return next(code for failure, code in FAILURES if isinstance(error, failure))


async def read_registry(config: Config, *, timeout: float) -> Registry:
    """The registry, read to its end (its topic created when missing); raises KafkaTimedOut after ``timeout``
    seconds, or another error of FAILURES."""
    try:
        # Each step is bounded by the timeout, and so is the whole: an operator waits the timeout at most.
        async with asyncio.timeout(timeout):
            await check_kafka_access(config.kafka_bootstrap_servers, config.kafka_security, timeout=timeout)
            async with RegistryTopic(config, timeout_seconds=timeout) as topic:
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


async def edit_registry(config: Config, action: str, integration: str, edit: EditOf, *, timeout: float) -> EditDone:
    """Read the registry (its topic created when missing), apply ``edit`` (``make_edit``) and write the entry it
    makes, if any (acks=all). Raises UnknownIntegration, ValueError (a category its resources are not of),
    KafkaTimedOut after ``timeout`` seconds (the change may have been written), or another error of FAILURES."""
    try:
        async with asyncio.timeout(timeout):
            await check_kafka_access(config.kafka_bootstrap_servers, config.kafka_security, timeout=timeout)
            async with RegistryTopic(config, timeout_seconds=timeout) as topic:
                await topic.ensure_topic()
                registry = await topic.read()
                before = registry.get(integration)
                entry = edit(registry)
                written = None if entry is None else (await topic.write([entry]))[0]
    except TimeoutError:
        raise _timed_out(config, timeout, editing=True) from None
    return EditDone(action, integration, before, written)


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

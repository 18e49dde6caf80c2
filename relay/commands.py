"""Operators' commands on the owner: ``resnapshot``, ``reconcile`` and ``reset`` of a pair, delivered by the control
topic, run by the scheduler as the pair's next poll, and acknowledged on the control topic; and the owner's
acknowledgements of the changes of the registry of integrations it applied.

What belongs here: what the owner does with a delivered command (:class:`CommandApplier`: queue it on the pairs it
names, gather their outcomes, write one ``ack`` record), the acks of registry changes, and the acks' wording. Not the
record format (:class:`relay.control.ControlAction`), nor when a pair polls (:mod:`relay.scheduler`), nor the polls
themselves (:mod:`relay.pipeline`); the CLIs that wait for the acks are :mod:`relay.commands_cli` and
:mod:`relay.registry_cli`.

A command is de-duplicated by its id like a webhook by its id (:class:`relay.control.PartitionWindow`), so one sent
twice is acted on once. The ack says ``ok`` once the work of every pair committed, ``error`` once every pair is done
and one failed (or will never run: the integration is paused, removed, not polled), with one line per pair.

A command survives a change of owner. An owner that hands a partition over (or stops) before a command's pairs ran,
or while they ran (interrupted), acknowledges nothing: the next owner finds the command unacknowledged in the control
partition's window (:meth:`relay.control.ControlChannel.own`) and runs it as its pairs' first poll (a resnapshot the
former owner left in progress resumes from its last committed page). A handover waits for the acks of the commands
that did run (:meth:`CommandApplier.flush`), so the next owner never runs an acknowledged command again. What is not
exactly once: the ack is not written in the state topic's transaction, so a command whose work committed but whose ack
was lost (five failed sends, or the owner killed between the two) runs again on the next owner (a resnapshot
announces again, a reset forgets again; a reconcile finds nothing new); and a command with several pairs, handed over
when some ran and others had not, runs again on all of them. Only commands within the window
(``RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS``; 0: none) are run by a new owner.

A change of the registry survives a change of owner in the same way. An owner acknowledges a change it applies to an
integration of a partition it owns (:meth:`CommandApplier.registry_applied`); one applied while the partition changes
owner is acknowledged by nobody then (the former owner gave the partition up, the new one applies it at its claim).
So a claim acknowledges the changes it applied that no ack in the control partition's window answers
(:meth:`CommandApplier.registry_claimed`, the changes found by
:meth:`relay.control.ControlChannel.registry_unacknowledged`). A change acknowledged twice (the former owner's ack
written as the new owner read the window) is harmless: ``relay integrations`` takes the first ack it reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from relay.control import ControlAction, registry_ack_id
from relay.errors import KafkaUnavailable
from relay.registry import EntryState, RegistryChange, RegistryEntry
from relay.scheduler import CommandHandedOver, CommandNotRun, Scheduler

log = logging.getLogger(__name__)

ACK_SEND_ATTEMPTS: Final = 5


class CommandApplier:
    """Applies the commands the control channel delivers to this owner, and acknowledges each with ``send``."""

    def __init__(self, scheduler: Scheduler, send: Callable[[ControlAction], Awaitable[None]]) -> None:
        self._scheduler = scheduler
        self._send = send
        self._sending: set[asyncio.Task[None]] = set()

    def apply(self, action: ControlAction) -> None:
        """Queue ``action`` on the pairs it names (synchronous: called from the control channel's follow loop)."""
        resource = action.resources[0] if action.resources else None
        command = _Command(action, self._ack, self._left)
        resources = self._scheduler.command(action.integration, resource, action.kind, command.pair_done)
        log.info(
            "operator command received",
            extra={
                "integration": action.integration,
                "command": action.kind,
                "command_id": action.command_id,
                "resources": resources,
            },
        )
        if not resources:
            what = f"resource {resource!r} of " if resource is not None else ""
            self._ack(
                action,
                "error",
                f"{what}{action.integration} is not polled by its owner: not in the registry, removed, or not "
                f"applied there yet",
            )
        else:
            command.expect(resources)

    def registry_applied(self, changes: Iterable[RegistryChange], owns: Callable[[str], bool]) -> None:
        """Acknowledge the changes of the registry of integrations this replica just applied to the integrations it
        owns (``owns``), for ``relay integrations`` waiting for them: one ``ack`` per change, its command id naming
        the registry record (:func:`relay.control.registry_ack_id`)."""
        for change in changes:
            if change.after is None or not owns(change.integration):
                continue  # a tombstone written by hand: nobody waits for it
            message = _REGISTRY_DONE[change.kind]
            ack = ControlAction(
                "ack",
                change.integration,
                (),
                None,
                round(time.time() * 1000),
                registry_ack_id(change.after.revision),
                "ok",
                message,
            )
            log.info(
                "registry change acknowledged",
                extra={"integration": change.integration, "change": change.kind, "revision": change.after.revision},
            )
            self._send_later(ack)

    def registry_claimed(self, entries: Iterable[RegistryEntry]) -> None:
        """Acknowledge the registry's ``entries`` a claim of their partitions just applied, for ``relay integrations``
        waiting for them: the changes no owner acknowledged (made while the partition changed owner). One ``ack`` per
        entry, naming its revision, saying what the new owner does with it."""
        for entry in entries:
            ack = ControlAction(
                "ack",
                entry.integration,
                (),
                None,
                round(time.time() * 1000),
                registry_ack_id(entry.revision),
                "ok",
                f"{_REGISTRY_CLAIMED[entry.state]} (applied by the partition's new owner as it claimed it)",
            )
            log.info(
                "registry change acknowledged at a claim",
                extra={"integration": entry.integration, "state": entry.state, "revision": entry.revision},
            )
            self._send_later(ack)

    def _ack(self, action: ControlAction, outcome: str, message: str) -> None:
        ack = ControlAction(
            "ack",
            action.integration,
            action.resources,
            None,
            round(time.time() * 1000),
            action.command_id,
            outcome,
            message[:2000],
        )
        log.log(
            logging.INFO if outcome == "ok" else logging.WARNING,
            "operator command done",
            extra={
                "integration": action.integration,
                "command": action.kind,
                "command_id": action.command_id,
                "outcome": outcome,
                "detail": message,
            },
        )
        self._send_later(ack)

    def _left(self, action: ControlAction, message: str) -> None:
        """No ack: the command is left to the partition's next owner, which finds it unacknowledged and runs it."""
        log.info(
            "operator command left to the next owner",
            extra={
                "integration": action.integration,
                "command": action.kind,
                "command_id": action.command_id,
                "detail": message,
            },
        )

    def _send_later(self, ack: ControlAction) -> None:
        task = asyncio.get_running_loop().create_task(self._send_ack(ack), name=f"ack {ack.command_id}")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_ack(self, ack: ControlAction) -> None:
        delay = 0.5
        for attempt in range(1, ACK_SEND_ATTEMPTS + 1):
            try:
                await self._send(ack)
                return
            except KafkaUnavailable as error:
                if attempt == ACK_SEND_ATTEMPTS:
                    log.warning(
                        "cannot send a command's ack",
                        extra={"command_id": ack.command_id, "error": str(error)},
                    )
                    return
            await asyncio.sleep(delay)
            delay *= 2

    async def flush(self) -> None:
        """Wait for the acks being sent to be written (or given up: each send is bounded, and so are its retries).
        A handover calls this before it lets the partition go: the next owner then sees them."""
        if self._sending:
            await asyncio.wait(set(self._sending))

    async def close(self) -> None:
        """Wait (briefly) for the acks being sent."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=5.0)


class _Command:
    """One command's pairs, until each is done; then its ack."""

    def __init__(
        self,
        action: ControlAction,
        ack: Callable[[ControlAction, str, str], None],
        left: Callable[[ControlAction, str], None],
    ) -> None:
        self._action = action
        self._ack = ack
        self._left = left
        self._waiting: set[str] | None = None
        self._lines: dict[str, str] = {}
        self._failed = False
        self._handed_over = False  # a pair did not run (or was interrupted) because its partition changes owner
        self._early: list[tuple[str, BaseException | None, object]] = []

    def expect(self, resources: list[str]) -> None:
        self._waiting = set(resources)
        early, self._early = self._early, []
        for done in early:
            self.pair_done(*done)

    def pair_done(self, resource: str, error: BaseException | None, result: object) -> None:
        if self._waiting is None:  # cannot happen (a pair's poll awaits first); kept in order anyway
            self._early.append((resource, error, result))
            return
        if resource not in self._waiting:
            return
        self._waiting.discard(resource)
        if error is None and getattr(result, "interrupted", False):
            # Stopped at a page by a stop, a handover or a removal: what committed stays, the next owner resumes.
            error = CommandHandedOver("interrupted: the relay stopped, or the partition was handed over, meanwhile")
        elif isinstance(error, asyncio.CancelledError):
            # Past the grace of a stop or a handover: its transaction aborted, the next owner runs it.
            error = CommandHandedOver("cancelled: the relay stopped, or the partition was handed over, meanwhile")
        if isinstance(error, CommandHandedOver):
            self._handed_over = True
            self._lines[resource] = f"{resource}: left to the next owner: {error}"
        elif error is not None:
            self._failed = True
            self._lines[resource] = f"{resource}: failed: {_describe_error(error)}"
        else:
            self._lines[resource] = f"{resource}: {describe(self._action.kind, result)}"
        if not self._waiting:
            message = "; ".join(self._lines[r] for r in sorted(self._lines))
            if self._failed:  # final: an acknowledged command is never run again, by anyone
                self._ack(self._action, "error", message)
            elif self._handed_over:
                self._left(self._action, message)
            else:
                self._ack(self._action, "ok", message)


# What the owner did applying a change of the registry to an integration of a partition it owns.
_REGISTRY_DONE: Final = {
    "added": "polling started",
    "removed": "polling stopped",
    "paused": "polling paused",
    "resumed": "polling resumed",
    "updated": "its resources applied",
    "forgotten": "polling stopped",
}
# What a new owner does, at its claim, with an integration the registry holds in each state.
_REGISTRY_CLAIMED: Final[dict[EntryState, str]] = {
    "active": "polling started",
    "paused": "polling paused",
    "removed": "polling stopped",
}


def describe(kind: str, result: object) -> str:
    """What a command did to one pair, from what its operation returned."""
    if kind == "reset":
        return f"forgotten ({result} entities); its next poll is a snapshot"
    polled = getattr(result, "kind", None)
    records = getattr(result, "records", 0)
    events = getattr(result, "events", 0)
    if polled == "snapshot":
        return f"had no snapshot yet: its initial snapshot ran instead ({records} records read, {events} events)"
    if kind == "resnapshot":
        return f"resnapshot done ({records} records read, {events} events)"
    return f"reconciled ({records} records read, {events} events)"


def _describe_error(error: BaseException) -> str:
    if isinstance(error, CommandNotRun | KafkaUnavailable):
        return str(error)
    if isinstance(error, asyncio.CancelledError):
        return "cancelled: the relay stopped meanwhile"
    code = getattr(error, "code", None)
    return f"{code or type(error).__name__}: {error}"

"""Operators' commands on the owner: ``resnapshot``, ``reconcile`` and ``reset`` of a pair, delivered by the control
topic, run by the scheduler as the pair's next poll, and acknowledged on the control topic.

What belongs here: what the owner does with a delivered command (:class:`CommandApplier`: queue it on the pairs it
names, gather their outcomes, write one ``ack`` record) and the ack's wording. Not the record format
(:class:`relay.control.ControlAction`), nor when a pair polls (:mod:`relay.scheduler`), nor the polls themselves
(:mod:`relay.pipeline`); the CLI that sends commands and waits for their ack is :mod:`relay.commands_cli`.

A command is de-duplicated by its id like a webhook by its id (:class:`relay.control.PartitionWindow`), so one sent
twice is acted on once. The ack says ``ok`` once the work of every pair committed, ``error`` as soon as it is known
that one pair's failed (or will never run: paused, handed over, stopped), with one line per pair. A command whose
owner changed before it ran gets no ack from the new owner (it does not replay old commands): the CLI times out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from relay.control import ControlAction
from relay.errors import KafkaUnavailable
from relay.scheduler import CommandNotRun, Scheduler

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
        command = _Command(action, self._ack)
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
        task = asyncio.get_running_loop().create_task(self._send_ack(ack), name=f"ack {action.command_id}")
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

    async def close(self) -> None:
        """Wait (briefly) for the acks being sent."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=5.0)


class _Command:
    """One command's pairs, until each is done; then its ack."""

    def __init__(self, action: ControlAction, ack: Callable[[ControlAction, str, str], None]) -> None:
        self._action = action
        self._ack = ack
        self._waiting: set[str] | None = None
        self._lines: dict[str, str] = {}
        self._failed = False
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
            error = CommandNotRun("interrupted: the relay stopped, or the partition was handed over, meanwhile")
        if error is not None:
            self._failed = True
            self._lines[resource] = f"{resource}: failed: {_describe_error(error)}"
        else:
            self._lines[resource] = f"{resource}: {describe(self._action.kind, result)}"
        if not self._waiting:
            lines = [self._lines[r] for r in sorted(self._lines)]
            self._ack(self._action, "error" if self._failed else "ok", "; ".join(lines))


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

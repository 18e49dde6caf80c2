"""Kombo's integration webhooks drive the registry of integrations (``RELAY_FOLLOW_INTEGRATIONS=true``):
``integration-created`` adds the integration with the resources of its category, ``integration-deleted`` removes it,
``integration-state-changed`` pauses it (``INACTIVE``, ``INVALID``) and resumes it (``ACTIVE``), each as a record of
the registry topic (:mod:`relay.registry`), so that every replica follows it and a restart keeps it.

**Ordering: by the registry, not by arrival.** Kombo may deliver webhooks late, out of order or again (its retries, a
replay). Each is compared with the integration's entry as the registry holds it, never with what arrived before:

* ``integration-state-changed`` carries ``data.updated_at`` and ``integration-deleted`` ``data.deleted_at``: Kombo's
  time of the change. It is applied only when that time is *later* than the entry's ``updated_at`` (the time of the
  entry's last change: Kombo's for a change a webhook made, which the record written takes as its ``updated_at``; the
  operator's clock for ``relay integrations``), so a replayed or late webhook older than the entry's last change,
  the same one delivered again included, changes nothing. A newer one is written even when it changes no flag (an
  ``INACTIVE`` for a paused integration), so that the entry remembers how recent its state is. A webhook without its
  time (not Kombo's shape) changes nothing.
* ``integration-created`` carries no time. Kombo never reuses an integration id, and its creation comes before any other
  webhook of it, so it adds only an integration the registry has never held; one the registry holds, removed included,
  is left as it is (a replayed ``integration-created`` never brings a deleted integration back). An entry whose last
  change is a creation (its ``updated_by`` says so) is older than any state change or deletion of its integration.
* Only ``ATS`` and ``HRIS`` integrations are added (the registry's categories); an ``ASSESSMENT`` or ``LMS`` one is
  not (add it with ``relay integrations add --resources ...``).

The entries a webhook writes are ``updated_by`` (and, when added, ``added_by``) ``kombo <type> <webhook id>``.

What belongs here: the decision (:func:`decide`, pure: a webhook and the entry now, the entry to write or nothing, and
why) and :class:`RegistryFollower`, which applies it with the registry a replica follows and writes through
:meth:`relay.registry_topic.RegistryTopic.write`. Answering the webhook is :mod:`relay.webhooks`'s: within
``REGISTRY_WRITE_TIMEOUT_SECONDS`` or a 503, so that Kombo retries.

Two replicas deciding about the same integration at the same moment read the same entry (a replica sees another's
write within a fraction of a second, when it follows the registry topic): both may write, and the later record by
offset is the entry. Comparing clocks (Kombo's, an operator's) is as exact as those clocks agree.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from relay.config_kinds import is_integration_id
from relay.registry import MAX_BY_LENGTH, Category, Registry, RegistryEntry, now_text
from relay.timestamps import format_timestamp_ms, parse_timestamp_ms
from relay.webhooks import (
    PAUSING_STATES,
    IntegrationCreated,
    IntegrationDeleted,
    IntegrationStateChanged,
    IntegrationWebhook,
)

log = logging.getLogger(__name__)

BY_PREFIX: Final = "kombo"
_CREATED_BY: Final = f"{BY_PREFIX} integration-created"
_CATEGORIES: Final[dict[str, Category]] = {"ATS": "ats", "HRIS": "hris"}

Why = Literal[
    "added",  # written
    "removed",
    "paused",
    "resumed",
    "noted",  # written: a newer state that changes no flag, remembered for its time
    "unknown",  # nothing: the registry does not hold the integration (or the id is not one)
    "known",  # nothing: integration-created of an integration the registry holds (or held)
    "gone",  # nothing: the registry holds it removed
    "stale",  # nothing: the webhook's time is not later than the entry's last change
    "no_time",  # nothing: the webhook has no time of its own (or an unreadable one)
    "category",  # nothing: integration-created of a category the registry has not (ASSESSMENT, LMS)
    "state",  # nothing: a state the relay does not know
]
WRITTEN: Final = frozenset({"added", "removed", "paused", "resumed", "noted"})


@dataclass(frozen=True, slots=True)
class Decision:
    """What a webhook does to the registry: ``entry`` to write (None: nothing), and why."""

    entry: RegistryEntry | None
    why: Why


def by_of(webhook: IntegrationWebhook) -> str:
    """Who the registry records as making a webhook's change: ``kombo <type> <webhook id>`` (the id left out when it
    is not printable), at most MAX_BY_LENGTH characters."""
    by = f"{BY_PREFIX} {webhook.type}"
    ident = f"{by} {webhook.id}"
    return (ident if ident.isprintable() else by)[:MAX_BY_LENGTH]


def decide(webhook: IntegrationWebhook, current: RegistryEntry | None, *, now: str) -> Decision:
    """The registry edit ``webhook`` makes when the registry holds ``current`` for its integration (None: it does
    not); ``now`` is the time an added entry records (``integration-created`` has none of its own)."""
    if not webhook.integration_id or not is_integration_id(webhook.integration_id):
        return Decision(None, "unknown")
    if isinstance(webhook, IntegrationCreated):
        if current is not None:
            return Decision(None, "known")
        category = _CATEGORIES.get(webhook.category.upper())
        if category is None:
            return Decision(None, "category")
        by = by_of(webhook)
        return Decision(RegistryEntry(webhook.integration_id, category, None, False, False, now, by, now, by), "added")
    if current is None:
        return Decision(None, "unknown")
    if current.removed:
        return Decision(None, "gone")
    at_ms = _time_of(webhook)
    if at_ms is None:
        return Decision(None, "no_time")
    if not current.updated_by.startswith(_CREATED_BY) and at_ms <= parse_timestamp_ms(current.updated_at):
        return Decision(None, "stale")
    at, by = format_timestamp_ms(at_ms), by_of(webhook)
    if isinstance(webhook, IntegrationDeleted):
        return Decision(current.edited(at=at, by=by, removed=True), "removed")
    state = webhook.state.upper()
    if state in PAUSING_STATES:
        paused = True
    elif state == "ACTIVE":
        paused = False
    else:
        return Decision(None, "state")
    why: Why = "noted" if paused == current.paused else "paused" if paused else "resumed"
    return Decision(current.edited(at=at, by=by, paused=paused), why)


def _time_of(webhook: IntegrationDeleted | IntegrationStateChanged) -> int | None:
    text = webhook.deleted_at if isinstance(webhook, IntegrationDeleted) else webhook.updated_at
    if text is None:
        return None
    try:
        return parse_timestamp_ms(text)
    except ValueError:
        return None


class RegistryFollower:
    """Applies integration webhooks to the registry: each decided against the newest entry this replica knows (the
    registry it follows, or what it wrote itself since), one at a time, and written with ``write``
    (:meth:`relay.registry_topic.RegistryTopic.write`). Answers (status, outcome) for the webhook's reply; raises
    what the write raised (the caller answers 503)."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        write: Callable[[Sequence[RegistryEntry]], Awaitable[tuple[RegistryEntry, ...]]],
        *,
        clock: Callable[[], str] = now_text,
    ) -> None:
        self._registry = registry
        self._write = write
        self._clock = clock
        self._written: dict[str, RegistryEntry] = {}  # what this replica wrote, until the registry it follows has it
        self._lock = asyncio.Lock()

    def current(self, integration: str) -> RegistryEntry | None:
        followed = self._registry().get(integration)
        mine = self._written.get(integration)
        if mine is None:
            return followed
        if followed is not None and followed.revision >= mine.revision:
            del self._written[integration]
            return followed
        return mine

    async def apply(self, webhook: IntegrationWebhook) -> tuple[int, str]:
        async with self._lock:
            current = self.current(webhook.integration_id)
            decision = decide(webhook, current, now=self._clock())
            extra = {"webhook_id": webhook.id, "type": webhook.type, "integration": webhook.integration_id}
            if decision.entry is None:
                log.info("webhook changes nothing in the registry", extra={**extra, "why": decision.why})
                return (202, "unknown_integration") if decision.why == "unknown" else (200, "ignored")
            (written,) = await self._write([decision.entry])
            self._written[written.integration] = written
            log.info("registry changed by a webhook", extra={**extra, "change": decision.why})
            return 200, "accepted"

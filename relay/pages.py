"""What one page of a pair becomes on its way to Kafka, and what memory learns once it committed.

Rule: the work on a single page lives here: its diff against memory as it will be once the pages before it are
applied, its events serialized, the state records and checkpoint that commit with it (or none, when nothing changed
and the checkpoint may wait), and, after the commit, memory and the counters brought up to date. Which page comes
next, what is in flight and when to wait for Kafka is the poll's business (:mod:`relay.pipeline`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from relay import diff
from relay.config import Config
from relay.events import to_kafka_message
from relay.metrics import Metrics
from relay.pending import Overlay, Prepared, Unapplied, events_by_kind
from relay.sink import OutMessage, check_record_sizes
from relay.source import Page
from relay.state import Checkpoint, PollKind, StateStore

log = logging.getLogger(__name__)

# An incremental page that changed nothing commits no transaction: its checkpoint (the watermark moved) stays in
# memory until the pair's next transaction, or until it has waited this long.
CHECKPOINT_DEFER_SECONDS = 300.0
# Records diffed, and events serialized, between two yields to the event loop while the previous page commits.
PREPARE_SLICE = 50


class DeferredCheckpoints:
    """The pairs whose checkpoint in memory is ahead of the state topic (see CHECKPOINT_DEFER_SECONDS), since when."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since: dict[tuple[str, str], float] = {}

    def may_defer(self, pair_key: tuple[str, str]) -> bool:
        """Whether an unchanged page's checkpoint may stay unpersisted (for at most CHECKPOINT_DEFER_SECONDS)."""
        now = time.monotonic()
        return now - self._since.setdefault(pair_key, now) < CHECKPOINT_DEFER_SECONDS

    def persisted(self, pair_key: tuple[str, str]) -> None:
        """The pair's checkpoint in memory is in the state topic again."""
        self._since.pop(pair_key, None)


class PageMaker:
    """Turns the pages of one poll of one pair into what they commit, and remembers them once committed."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        metrics: Metrics,
        clock: Callable[[], float],
        deferred: DeferredCheckpoints,
        *,
        integration: str,
        resource: str,
        kind: PollKind,
    ) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._deferred = deferred
        self.integration = integration
        self.resource = resource
        self.kind = kind

    async def prepare(self, page: Page, checkpoint: Checkpoint, unapplied: Unapplied) -> Prepared:
        """Diff a page and serialize its events, against memory as it will be once the earlier pages still
        committing are applied (their fingerprints and shapes)."""
        if not page.records:  # an idle poll's page: nothing to diff, no event, only its checkpoint
            return Prepared(self.kind, 0, checkpoint, {}, {}, {}, [], [])
        pair = self._store.pair(self.integration, self.resource)
        page_diff = diff.PageDiff(
            unapplied.entities_over(pair.entities),
            unapplied.shapes_over(pair.shapes),
            integration=self.integration,
            resource=self.resource,
            snapshot=self.kind == "snapshot",
            emit_snapshot=self._config.initial_snapshot == "emit",
            resnapshot=self.kind == "resnapshot",
        )
        # Diffed and serialized in slices, yielding in between: a page's work holds the event loop long enough to
        # matter, and the previous page's transaction needs the loop for each of its round trips to Kafka.
        records = page.records
        for start in range(0, len(records), PREPARE_SLICE):
            if start:
                await asyncio.sleep(0)
            page_diff.feed(records[start : start + PREPARE_SLICE])
        result = page_diff.result()
        changes = list(result.changes)
        now_ms = int(self._clock() * 1000)
        messages: list[OutMessage] = []
        for start in range(0, len(changes), PREPARE_SLICE):
            await asyncio.sleep(0)
            messages.extend(self._event_messages(changes[start : start + PREPARE_SLICE], now_ms))
        # Only what the commit and the counters need is kept: the records and changes go now, not once the page has
        # committed, which holds several pages in flight to their messages.
        return Prepared(
            self.kind,
            len(records),
            checkpoint,
            result.suppressed_by_reason(),
            events_by_kind(changes),
            dict(result.delta),
            list(result.new_shapes),
            messages,
        )

    def messages_to_commit(self, prepared: Prepared, reconcile_seen: set[str] | None) -> list[OutMessage] | None:
        """What a prepared page commits: its events and state records (and, given the ids a reconciliation saw, the
        vanished entities after its last page); None when it needs no transaction at all."""
        if reconcile_seen is not None:
            self._add_vanished(prepared, reconcile_seen)
        pair_key = (self.integration, self.resource)
        if prepared.kind == "incremental" and prepared.changes_nothing and self._deferred.may_defer(pair_key):
            # Nothing changed: no transaction. Only the watermark moved; it is kept in memory and persisted with the
            # pair's next transaction, or within CHECKPOINT_DEFER_SECONDS. A persisted watermark that lags is safe:
            # after a restart the pair re-fetches a little more, and the diff drops what it already announced.
            return None
        if prepared.kind == "reconcile" and prepared.changes_nothing and prepared.checkpoint.in_progress is not None:
            # A page of a reconciliation, not its last, that changed nothing: its checkpoint only says where the poll
            # got to, and a reconciliation never resumes from there (it needs every id of one whole fetch). So it is
            # kept in memory only; the last page commits the poll's outcome. A transaction per page cost the broker
            # and the relay more than re-fetching the page itself.
            return None
        state_records = self._store.records_for(
            self.integration,
            self.resource,
            delta=prepared.delta,
            new_shapes=prepared.new_shapes,
            checkpoint=prepared.checkpoint,
        )
        state_topic = self._config.state_topic
        prepared.messages.extend(OutMessage(state_topic, r.key, r.value, partition=r.partition) for r in state_records)
        # Here, in the poll's own task, before any commit of this page starts: a page refused later, by the sink,
        # while earlier pages still commit, would let the pages after it commit past it.
        check_record_sizes(prepared.messages, self._config.kafka_max_record_bytes)
        return prepared.messages

    def _add_vanished(self, prepared: Prepared, seen: set[str]) -> None:
        entities = self._store.pair(self.integration, self.resource).entities
        # Not a merged copy: the remembered entities are packed (relay.entity_table), a copy would unpack them all.
        merged = Overlay(prepared.delta, entities) if prepared.delta else entities
        result = diff.find_vanished(
            merged,
            seen,
            integration=self.integration,
            resource=self.resource,
            complete=True,
            max_vanish_fraction=self._config.reconcile_max_vanish_fraction,
        )
        if result.refused is not None:
            self._metrics.vanish_refused.labels(self.resource, result.refused).inc()
            log.warning(
                "reconciliation refused to emit vanish-deletes",
                extra={
                    "integration": self.integration,
                    "resource": self.resource,
                    "reason": result.refused,
                    "would_vanish": result.would_vanish,
                },
            )
            return
        changes = list(result.changes)
        prepared.count_events(changes)
        prepared.delta.update(result.delta)
        prepared.messages.extend(self._event_messages(changes, int(self._clock() * 1000)))

    def _event_messages(self, changes: list[diff.Change], now_ms: int) -> list[OutMessage]:
        config = self._config
        messages: list[OutMessage] = []
        topics: dict[str, str] = {}
        tombstones = config.emit_tombstones
        integration, resource = self.integration, self.resource
        for change in changes:
            message = to_kafka_message(change, integration=integration, resource=resource, detected_at_ms=now_ms)
            topic = topics.get(change.kind)
            if topic is None:
                topic = topics[change.kind] = config.topic_for(resource, change.kind)
            messages.append(OutMessage(topic, message.key, message.value, message.headers))
            if tombstones and change.kind == "deleted":
                messages.append(OutMessage(topic, message.key, None))
        return messages

    def remember(self, prepared: Prepared, *, committed: bool) -> int:
        """Remember a page once its transaction committed (or, ``committed`` False, once it needed none); return the
        number of its events."""
        integration, resource = self.integration, self.resource
        metrics = self._metrics
        if committed:
            pair = self._store.pair(integration, resource)
            self._deferred.persisted((integration, resource))
            added = sum(1 for entity_id in prepared.delta if entity_id not in pair.entities)
            self._store.apply(
                integration,
                resource,
                delta=prepared.delta,
                new_shapes=prepared.new_shapes,
                checkpoint=prepared.checkpoint,
            )
            if added:
                metrics.entities.labels(resource).inc(added)
        else:
            self._store.set_checkpoint(integration, resource, prepared.checkpoint)
        series = metrics.for_resource(resource)
        for change_kind, count in prepared.events_by_kind.items():
            series.events_published[change_kind].inc(count)
        for reason, count in prepared.suppressed_by_reason.items():
            if count:
                series.events_suppressed[reason].inc(count)
        return sum(prepared.events_by_kind.values())

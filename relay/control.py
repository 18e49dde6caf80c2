"""The control channel: webhook triggers (and pauses, resumes) carried through Kafka to the replica owning the
integration, de-duplicated there by webhook id.

What belongs here: the control record (:class:`ControlAction` and its encoding), :class:`ControlChannel` (an
idempotent producer that sends actions to ``RELAY_CONTROL_TOPIC``, and a manually assigned consumer that delivers the
actions of the partitions this replica owns), :class:`ForwardingTarget` (the webhook receiver's
:class:`~relay.webhooks.PollTarget` on a replica that forwards instead of polling) and :func:`apply_action` (what the
owner does with a delivered action). Not who owns which partition: the caller says so with :meth:`ControlChannel.own`
and :meth:`ControlChannel.disown`.

The control topic is partitioned like the state topic: an action about an integration goes to partition
``murmur2(integration) % RELAY_STATE_TOPIC_PARTITIONS``, so the owner of that state partition reads it, in order.
De-duplication: within one partition every replica sees the same records in the same order, so "the first record
of a webhook id within ``RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS`` (by record timestamp) is delivered, the later ones are
duplicates" gives the same answer whoever reads it and whenever: a new owner (or a restarted one) rebuilds the window
from the records of the last window (``offsets_for_times``) before delivering anything newer. So a webhook Kombo
retried to another replica, or delivered again after the owner restarted, is acted on once.

Reading that window, a new owner also finds the operators' commands no owner acknowledged (an ``ack`` record with
their command id after them): sent while no replica owned the partition, or left by the former owner, which does not
acknowledge a command it handed over before running it. :meth:`ControlChannel.own` returns them, so that the new owner
runs them (:mod:`relay.commands`); a command acknowledged once is never run again by a later owner. It finds the
registry revisions acknowledged there too (``ack`` records whose command id is ``registry:<revision>``):
:meth:`ControlChannel.registry_unacknowledged` says which changes of the registry made within the window no owner
acknowledged (made while the partition changed owner), so that the new owner acknowledges them once it applied them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final, Literal, NamedTuple, get_args

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from relay.config import Config
from relay.errors import KafkaUnavailable, StateError
from relay.metrics import Metrics
from relay.registry import RegistryEntry
from relay.sink import authorization_failed
from relay.timestamps import parse_timestamp_ms
from relay.webhooks import PollTarget

log = logging.getLogger(__name__)

ActionKind = Literal["trigger", "pause", "resume", "resnapshot", "reconcile", "reset", "ack"]
ACTION_KINDS: Final[tuple[str, ...]] = get_args(ActionKind)
# An operator's commands (relay resnapshot, relay reconcile, relay state reset): each carries a command id, and the
# owner answers it with an "ack" record (same key and partition) once its work committed, or failed.
COMMAND_KINDS: Final = frozenset({"resnapshot", "reconcile", "reset"})
ACK_OUTCOMES: Final = ("ok", "error")
MAX_COMMAND_ID: Final = 128
MAX_ACK_MESSAGE: Final = 2000
RECORD_VERSION: Final = 1
# How long a send may take before the webhook is answered 503 (Kombo retries it): far above a healthy broker's few
# milliseconds, below the patience of an HTTP client.
SEND_TIMEOUT_SECONDS: Final = 5.0
# One getmany waits at most this long while nothing comes (a record ends it at once). own(), disown() and stop()
# interrupt it rather than wait for it: an idle replica's control consumer wakes the process only this often.
POLL_TIMEOUT_MS: Final = 30_000
# How long a fetch waits at the broker while nothing comes (a trigger ends the wait at once). Not longer: a fetch in
# flight holds up the offsets requests of own() on the same connection, so a handover pays up to this, twice; at
# 50 ms, the fetches alone cost an idle replica about 1% of a core.
FETCH_MAX_WAIT_MS: Final = 500
# How often the consumer's background fetcher wakes up when it has nothing to fetch (aiokafka's default, 200 ms, is
# a wake-up of every idle replica 5 times a second); what it waits for (a fetch's answer, an assignment, a consumed
# batch) wakes it at once anyway.
FETCHER_IDLE_WAKE_MS: Final = 5_000
# How long own() may take to read a partition's last window (a day of triggers at most: the topic's retention) before
# the claim is retried; a healthy broker serves it in well under a second.
REBUILD_TIMEOUT_SECONDS: Final = 60.0
# A bound on the webhook ids remembered per partition, whatever the window: the oldest go first.
MAX_DEDUP_ENTRIES: Final = 100_000
MAX_RESOURCES: Final = 256


class UnreadableAction(ValueError):
    """A control record this version cannot read; the message says why, never the whole record."""


class ControlAction(NamedTuple):
    """What a replica asks of the owner of an integration."""

    kind: ActionKind
    integration: str
    resources: tuple[str, ...]  # for a trigger: the resources to poll; empty otherwise
    webhook_id: str | None  # the de-duplication key (Kombo's webhook id); None: never a duplicate
    received_at_ms: int  # when the webhook arrived (Unix time, ms), for the webhook-to-event latency; command: sent
    # A command (COMMAND_KINDS) and its ack: the command's id, its de-duplication key. For a command, ``resources``
    # holds the one resource asked for, or none (every resource of the integration).
    command_id: str | None = None
    outcome: str | None = None  # ack only: "ok" or "error"
    message: str | None = None  # ack only: what the owner did, or why it failed

    @property
    def dedup_key(self) -> str | None:
        """What makes a second record of the same action a duplicate: the webhook id, or the command id."""
        if self.kind in COMMAND_KINDS:
            return f"command:{self.command_id}"
        return None if self.kind == "ack" else self.webhook_id

    def encode(self) -> bytes:
        """The record value: compact JSON with a version field (a command's fields only for commands and acks)."""
        document: dict[str, Any] = {
            "v": RECORD_VERSION,
            "kind": self.kind,
            "integration": self.integration,
            "resources": list(self.resources),
            "webhook_id": self.webhook_id,
            "received_at_ms": self.received_at_ms,
        }
        if self.command_id is not None:
            document["command_id"] = self.command_id
        if self.outcome is not None:
            document["outcome"] = self.outcome
        if self.message is not None:
            document["message"] = self.message
        return orjson.dumps(document)

    @classmethod
    def decode(cls, value: bytes | None) -> ControlAction:
        """The action in a record value; raises :class:`UnreadableAction` for anything else."""
        if value is None:
            raise UnreadableAction("the record has no value")
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise UnreadableAction("the record is not JSON") from None
        if not isinstance(document, dict):
            raise UnreadableAction("the record is not a JSON object")
        if document.get("v") != RECORD_VERSION:
            raise UnreadableAction(f"unknown record version {str(document.get('v'))[:20]!r}")
        kind = document.get("kind")
        integration = document.get("integration")
        resources = document.get("resources")
        webhook_id = document.get("webhook_id")
        received_at_ms = document.get("received_at_ms")
        if kind not in ACTION_KINDS:
            raise UnreadableAction(f"unknown kind {str(kind)[:40]!r} (written by a newer version?)")
        if not isinstance(integration, str) or not integration:
            raise UnreadableAction("integration must be a non-empty string")
        if (
            not isinstance(resources, list)
            or len(resources) > MAX_RESOURCES
            or not all(isinstance(r, str) and r for r in resources)
        ):
            raise UnreadableAction("resources must be a list of non-empty strings")
        if webhook_id is not None and (not isinstance(webhook_id, str) or not webhook_id):
            raise UnreadableAction("webhook_id must be a non-empty string or null")
        if not isinstance(received_at_ms, int) or isinstance(received_at_ms, bool) or received_at_ms < 0:
            raise UnreadableAction("received_at_ms must be a non-negative integer")
        command_id, outcome, message = document.get("command_id"), document.get("outcome"), document.get("message")
        if kind in COMMAND_KINDS or kind == "ack":
            if not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_COMMAND_ID:
                raise UnreadableAction(f"a {kind} needs a command_id of 1 to {MAX_COMMAND_ID} characters")
            if len(resources) > 1:
                raise UnreadableAction(f"a {kind} names one resource at most")
        else:
            command_id = None
        if kind == "ack":
            if outcome not in ACK_OUTCOMES:
                raise UnreadableAction(f"an ack's outcome must be one of {', '.join(ACK_OUTCOMES)}")
            if message is not None and (not isinstance(message, str) or len(message) > MAX_ACK_MESSAGE):
                raise UnreadableAction(f"an ack's message must be text of {MAX_ACK_MESSAGE} characters at most")
        else:
            outcome = message = None
        return cls(kind, integration, tuple(resources), webhook_id, received_at_ms, command_id, outcome, message)


REGISTRY_ACK_PREFIX: Final = "registry:"


def registry_ack_id(revision: int) -> str:
    """The command id of the ack an owner writes once it applied the registry record at offset ``revision`` (in its
    partition of the registry topic) to an integration it owns; ``relay integrations`` waits for it."""
    return f"{REGISTRY_ACK_PREFIX}{revision}"


def registry_revision_acked(ack: ControlAction) -> int | None:
    """The registry revision ``ack`` acknowledges, or None when it acknowledges an operator's command."""
    command_id = ack.command_id or ""
    if ack.kind != "ack" or not command_id.startswith(REGISTRY_ACK_PREFIX):
        return None
    text = command_id.removeprefix(REGISTRY_ACK_PREFIX)
    return int(text) if text.isascii() and text.isdigit() else None


def wall_ms_of(monotonic_at: float, *, now: float | None = None, wall_now: float | None = None) -> int:
    """The Unix time (ms) of a ``time.monotonic()`` reading: how webhooks' arrival times cross processes."""
    now = time.monotonic() if now is None else now
    wall_now = time.time() if wall_now is None else wall_now
    return max(0, round((wall_now - (now - monotonic_at)) * 1000))


def monotonic_of(wall_ms: int, *, now: float | None = None, wall_now: float | None = None) -> float:
    """The ``time.monotonic()`` reading of a Unix time (ms), never in the future (clocks of replicas differ a bit)."""
    now = time.monotonic() if now is None else now
    wall_now = time.time() if wall_now is None else wall_now
    return now - max(0.0, wall_now - wall_ms / 1000)


class PartitionWindow:
    """The webhook ids of one control partition seen within the window, by record timestamp (ms), oldest first.

    Fed every record of the partition in offset order, it answers the same for every reader: the first record of an
    id is new, a later one within ``window_ms`` of it is a duplicate. ``window_ms`` 0 remembers nothing.
    """

    def __init__(self, window_ms: int, max_entries: int = MAX_DEDUP_ENTRIES) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, webhook_id: str, timestamp_ms: int) -> bool:
        """True if ``webhook_id`` was seen within the window before ``timestamp_ms``; otherwise remember it."""
        if self.window_ms <= 0:
            return False
        horizon = timestamp_ms - self.window_ms
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at > horizon and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if webhook_id in self._seen:
            return True
        self._seen[webhook_id] = timestamp_ms
        return False


class ControlChannel:
    """Sends :class:`ControlAction`\\ s to the owner of their integration, and delivers those of the partitions this
    replica owns. One producer (idempotent, ``acks=all``, no linger) and one consumer (manually assigned,
    ``read_committed``), both started by :meth:`start`."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        partition_of: Callable[[str], int],
        send_timeout_seconds: float = SEND_TIMEOUT_SECONDS,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._partition_of = partition_of
        self._send_timeout = send_timeout_seconds
        self._topic = config.control_topic
        self._window_ms = round(config.kombo_webhook_dedup_seconds * 1000)
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._consumer_lock = asyncio.Lock()  # getmany, assign and seek never interleave
        self._windows: dict[int, PartitionWindow] = {}  # per owned partition
        # Per owned partition: integration -> the highest registry revision an ack read since the window's start says
        # was applied (relay.commands acknowledges the others a claim applied).
        self._registry_acks: dict[int, dict[str, int]] = {}
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._getting: asyncio.Future[Any] | None = None  # follow()'s getmany in progress, which _taken() ends
        self._wanted = 0  # callers of _taken() waiting for the consumer or using it: follow() does not wait then
        self._stopping_clients: set[asyncio.Task[None]] = set()

    @property
    def owned(self) -> frozenset[int]:
        """The partitions whose actions this channel delivers."""
        return frozenset(self._windows)

    async def start(self) -> None:
        """Start the producer and the consumer; raises KafkaUnavailable when Kafka cannot be reached, StateError when
        the control topic has fewer partitions than ``RELAY_STATE_TOPIC_PARTITIONS``."""
        await self._ensure_producer()
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self._config.kafka_client_kwargs(),
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",  # only when a position fell out of the log: the oldest still there
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                consumer_timeout_ms=FETCHER_IDLE_WAKE_MS,
            )
            try:
                await consumer.start()
                await self._check_partitions(consumer)
            except KafkaError as exc:
                await _quietly(consumer.stop())
                if refused := authorization_failed(exc, self._config, doing="read"):
                    raise refused from exc
                raise KafkaUnavailable(f"cannot read the control topic {self._topic!r}: {exc}") from exc
            except BaseException:
                await _quietly(consumer.stop())
                raise
            self._consumer = consumer

    async def _check_partitions(self, consumer: AIOKafkaConsumer) -> None:
        partitions = consumer.partitions_for_topic(self._topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(self._topic)
        if not partitions:
            raise KafkaUnavailable(f"the control topic {self._topic!r} is not in Kafka's metadata")
        wanted = self._config.state_topic_partitions
        if len(partitions) < wanted:
            raise StateError(
                f"the control topic {self._topic!r} has {len(partitions)} partition(s), fewer than "
                f"RELAY_STATE_TOPIC_PARTITIONS={wanted}: actions would go to partitions it does not have. Recreate it "
                f"with {wanted} partitions (it holds only short-lived triggers)"
            )

    async def _ensure_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **self._config.kafka_client_kwargs(),
                    acks="all",
                    # Not idempotent: that needs Write on some topic (or IdempotentWrite) before the first send, and a
                    # replica refused Write on its event topics should say so when it commits, naming them, rather
                    # than fail here with a cluster refusal. A duplicated trigger is dropped by its webhook id.
                    enable_idempotence=False,
                    linger_ms=0,
                    request_timeout_ms=max(1000, round(self._send_timeout * 1000)),
                )
                try:
                    await producer.start()
                except BaseException as exc:  # cancelled too (a send's timeout): never leave a client open
                    self._stop_later(producer)
                    if refused := authorization_failed(exc, self._config, doing="write"):
                        raise refused from exc
                    if isinstance(exc, Exception):
                        raise KafkaUnavailable(
                            f"cannot start the control producer: {type(exc).__name__}: {exc}"
                        ) from exc
                    raise
                self._producer = producer
            return self._producer

    async def send(self, action: ControlAction) -> None:
        """Produce ``action`` to its integration's partition and return once Kafka acknowledged it (``acks=all``);
        raise KafkaUnavailable when it was not acknowledged within the send timeout."""
        if self._stopping.is_set():
            raise KafkaUnavailable("the control channel is stopped")
        value = action.encode()
        partition = self._partition_of(action.integration)
        producer: AIOKafkaProducer | None = None
        try:
            async with asyncio.timeout(self._send_timeout):
                producer = await self._ensure_producer()
                await producer.send_and_wait(self._topic, value, key=action.integration.encode(), partition=partition)
        except (KafkaError, TimeoutError, KafkaUnavailable) as exc:
            # A producer whose batch failed may hold a broken sequence: the next send starts a fresh one. Should the
            # abandoned record still arrive, its webhook id makes it a duplicate of the retry.
            if producer is not None:
                await self._discard_producer(producer)
            if isinstance(exc, KafkaUnavailable):
                raise
            raise KafkaUnavailable(f"cannot send a control action: {type(exc).__name__}: {exc}") from exc
        self._metrics.control_actions.labels(action.kind, "sent").inc()

    async def _discard_producer(self, failed: AIOKafkaProducer | None = None) -> None:
        """Stop the producer (only if it is still ``failed``, when given: another send may have replaced it)."""
        async with self._producer_lock:
            producer = self._producer
            if producer is None or (failed is not None and producer is not failed):
                return
            self._producer = None
        self._stop_later(producer)

    def _stop_later(self, producer: AIOKafkaProducer) -> None:
        """Stop ``producer`` in the background: its stop may wait for a broker that is gone, and the webhook waiting
        for the failed send should get its 503 at once. :meth:`stop` waits for these."""
        task = asyncio.create_task(_quietly(producer.stop(), timeout=5.0))
        self._stopping_clients.add(task)
        task.add_done_callback(self._stopping_clients.discard)

    async def own(self, partitions: Iterable[int]) -> list[ControlAction]:
        """Deliver the actions of ``partitions`` too: those that arrive from now on, de-duplicated against the
        records of the last window, which are read here first, before it returns, without being delivered (the new
        owner polls at once anyway, so old triggers are not replayed).

        Returns the operators' commands of that window that no owner acknowledged, in the order sent: sent while no
        replica owned the partition, or left by the former owner at a handover before they ran. The caller runs them
        once it polls their pairs, before anything newer is delivered. Raises KafkaUnavailable when the window cannot
        be read within REBUILD_TIMEOUT_SECONDS (nothing of ``partitions`` is owned then)."""
        consumer = self._require_consumer()
        async with self._taken():
            new = sorted(set(partitions) - set(self._windows))
            if not new:
                return []
            added = [TopicPartition(self._topic, p) for p in new]
            ends = await consumer.end_offsets(added)
            starts = dict(ends)
            if self._window_ms > 0:
                since = round(time.time() * 1000) - self._window_ms
                found = await consumer.offsets_for_times(dict.fromkeys(added, since))
                starts.update({tp: at.offset for tp, at in found.items() if at is not None})
            before = list(self._windows)
            await self._reassign(consumer, [*before, *new])
            windows = {tp.partition: PartitionWindow(self._window_ms) for tp in added}
            registry_acks: dict[int, dict[str, int]] = {tp.partition: {} for tp in added}
            try:
                unanswered = [
                    action
                    for tp in added
                    for action in await self._rebuild(
                        consumer, tp, starts[tp], ends[tp], windows[tp.partition], registry_acks[tp.partition]
                    )
                ]
            except BaseException:
                await self._reassign(consumer, before)  # owning none of them, as before
                raise
            self._windows.update(windows)
            self._registry_acks.update(registry_acks)
        for action in unanswered:
            self._metrics.control_actions.labels(action.kind, "replayed").inc()
        log.info(
            "control partitions owned",
            extra={
                "partitions": new,
                "rebuild_records": sum(ends[tp] - starts[tp] for tp in added),
                "unacknowledged_commands": [action.command_id for action in unanswered],
            },
        )
        self._changed.set()
        return unanswered

    async def _rebuild(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        start: int,
        end: int,
        window: PartitionWindow,
        registry_acks: dict[str, int],
    ) -> list[ControlAction]:
        """Read ``tp`` from ``start`` to ``end`` (exclusive) into ``window``, and the registry revisions acknowledged
        into ``registry_acks``; return the commands read that no ack read after them answers. Never reads past
        ``end``: what comes later is follow()'s to deliver."""
        consumer.seek(tp, start)
        unanswered: OrderedDict[str, ControlAction] = OrderedDict()  # by command id
        try:
            async with asyncio.timeout(REBUILD_TIMEOUT_SECONDS):
                while (position := await consumer.position(tp)) < end:
                    batches = await consumer.getmany(tp, timeout_ms=FETCH_MAX_WAIT_MS * 2, max_records=end - position)
                    for record in batches.get(tp, []):
                        action = self._decode(tp.partition, record, count=False)
                        if action is None:
                            continue
                        if action.kind == "ack":
                            unanswered.pop(action.command_id or "", None)
                            _remember_registry_ack(registry_acks, action)
                            continue
                        key = action.dedup_key
                        first = key is not None and not window.seen(key, record.timestamp)
                        if first and action.kind in COMMAND_KINDS and action.command_id is not None:
                            unanswered[action.command_id] = action
        except (KafkaError, TimeoutError) as exc:
            raise KafkaUnavailable(
                f"cannot read partition {tp.partition} of the control topic {self._topic!r} to its end {end}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return list(unanswered.values())

    async def disown(self, partitions: Iterable[int]) -> None:
        """Stop delivering the actions of ``partitions``; returns once none of them will be delivered any more."""
        consumer = self._require_consumer()
        async with self._taken():
            gone = set(partitions) & set(self._windows)
            if not gone:
                return
            await self._reassign(consumer, [p for p in self._windows if p not in gone])
            for partition in gone:
                del self._windows[partition]
                self._registry_acks.pop(partition, None)
        log.info("control partitions disowned", extra={"partitions": sorted(gone)})
        self._changed.set()

    async def _reassign(self, consumer: AIOKafkaConsumer, partitions: list[int]) -> None:
        """Assign ``partitions``, keeping the positions of those already assigned (assign() forgets them)."""
        kept = {tp: await consumer.position(tp) for tp in consumer.assignment() if tp.partition in partitions}
        consumer.assign([TopicPartition(self._topic, p) for p in sorted(partitions)])
        for tp, position in kept.items():
            consumer.seek(tp, position)

    async def follow(self, on_action: Callable[[ControlAction], None]) -> None:
        """Deliver, in order per partition, the new actions of the owned partitions to ``on_action``, until
        :meth:`stop`. An unreadable record, or an ``on_action`` that raises, is logged and skipped."""
        consumer = self._require_consumer()
        while not self._stopping.is_set():
            if not self._windows:
                self._changed.clear()
                waiting = asyncio.ensure_future(self._changed.wait())
                stopping = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait((waiting, stopping), return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                stopping.cancel()
                continue
            async with self._consumer_lock:
                try:
                    batches = await self._get(consumer)
                except KafkaError as exc:  # the client retries connections itself; anything else: log, go on
                    log.warning("reading the control topic failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                    failed = True
                else:
                    failed = False
                    for tp, records in batches.items():
                        for record in records:
                            self._handle(tp.partition, record, on_action)
            if failed:  # not in a tight loop, and not holding the lock
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def _get(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        """The records fetched, waiting up to POLL_TIMEOUT_MS for some, unless someone wants the consumer (then
        nothing, at once). A getmany cancelled while it waits loses no record: it takes them only as it returns."""
        if self._wanted:
            return {}
        getting = self._getting = asyncio.ensure_future(consumer.getmany(timeout_ms=POLL_TIMEOUT_MS))
        try:
            await asyncio.wait((getting,))
        finally:
            self._getting = None
            getting.cancel()  # follow() itself was cancelled: not left running
        if getting.cancelled():
            return {}
        batches: dict[TopicPartition, list[Any]] = getting.result()
        return batches

    @contextlib.asynccontextmanager
    async def _taken(self) -> AsyncIterator[None]:
        """Hold the consumer (its lock), ending follow()'s wait for records at once rather than after it."""
        self._wanted += 1
        try:
            if self._getting is not None:
                self._getting.cancel()
            async with self._consumer_lock:
                yield
        finally:
            self._wanted -= 1

    def _decode(self, partition: int, record: Any, *, count: bool = True) -> ControlAction | None:
        """The action of a record of ``partition``; None (logged and counted, if ``count``) when it is unreadable."""
        try:
            action = ControlAction.decode(record.value)
            if self._partition_of(action.integration) != partition:
                raise UnreadableAction(
                    f"integration {action.integration[:128]!r} does not belong to partition {partition}"
                )
        except UnreadableAction as exc:
            if count:
                self._metrics.control_actions.labels("unknown", "unreadable").inc()
                log.warning(
                    "unreadable control record skipped",
                    extra={"topic": self._topic, "partition": partition, "offset": record.offset, "error": str(exc)},
                )
            return None
        return action

    def _handle(self, partition: int, record: Any, on_action: Callable[[ControlAction], None]) -> None:
        window = self._windows.get(partition)
        if window is None:  # disowned meanwhile (cannot happen under the lock; cheap to be sure)
            return
        action = self._decode(partition, record)
        if action is None:
            return
        if action.kind == "ack":  # this owner's own answers (or a former owner's): for `relay` commands to read
            _remember_registry_ack(self._registry_acks.setdefault(partition, {}), action)
            return
        key = action.dedup_key
        if key is not None and window.seen(key, record.timestamp):
            self._metrics.control_actions.labels(action.kind, "duplicate").inc()
            log.debug("duplicate control action", extra={"integration": action.integration, "id": key})
            return
        self._metrics.control_actions.labels(action.kind, "delivered").inc()
        try:
            on_action(action)
        except Exception:
            log.exception("a control action failed", extra={"integration": action.integration, "kind": action.kind})

    def registry_unacknowledged(
        self, entries: Iterable[RegistryEntry], *, now_ms: int | None = None
    ) -> list[RegistryEntry]:
        """Of ``entries`` (the registry's entries of owned partitions, as a claim applied them), those changed within
        the window (by ``updated_at``) that no ack read since the window's start acknowledges (an ack of the same
        integration with this revision or a later one, as ``relay integrations`` reads them): changes made while the
        partition changed owner, which the former owner gave up before applying them. None with a window of 0 (no
        ack is read then)."""
        if self._window_ms <= 0:
            return []
        since = (round(time.time() * 1000) if now_ms is None else now_ms) - self._window_ms
        unacknowledged = []
        for entry in entries:
            acks = self._registry_acks.get(self._partition_of(entry.integration))
            if acks is None or parse_timestamp_ms(entry.updated_at) < since:
                continue  # not owned here, or changed before the window: its ack, if any, is not in what was read
            if acks.get(entry.integration, -1) < entry.revision:
                unacknowledged.append(entry)
        return unacknowledged

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("ControlChannel.start() was not called")
        return self._consumer

    async def stop(self) -> None:
        """End :meth:`follow` and stop the clients."""
        self._stopping.set()
        await self._discard_producer()
        async with self._taken():  # follow() is between two getmany calls, and will see _stopping
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                await _quietly(consumer.stop(), timeout=5.0)
        if self._stopping_clients:
            await asyncio.wait(set(self._stopping_clients))


def _remember_registry_ack(registry_acks: dict[str, int], ack: ControlAction) -> None:
    """Keep the registry revision ``ack`` acknowledges, if it acknowledges one: the highest per integration."""
    revision = registry_revision_acked(ack)
    if revision is not None and revision > registry_acks.get(ack.integration, -1):
        registry_acks[ack.integration] = revision


async def _quietly(stopping: Any, timeout: float = 10.0) -> None:
    try:
        await asyncio.wait_for(stopping, timeout)
    except Exception:
        log.debug("stopping a Kafka client failed", exc_info=True)


class ForwardingTarget:
    """The :class:`~relay.webhooks.PollTarget` of a replica that forwards what a webhook asks for to the owner of the
    integration instead of doing it itself.

    The receiver's calls (synchronous) only collect actions; :meth:`flush`, which the webhook handler awaits right
    after the receiver returned (with no await in between, so the collected actions are that webhook's), sends them
    and returns once Kafka acknowledged them, or raises KafkaUnavailable (the handler then answers 503 and Kombo
    retries). ``resources_of`` and ``is_paused`` answer from what the caller knows (the relay: the registry of
    integrations as it follows it; by default never paused): the owner is authoritative, and ignores a trigger for an
    integration it has paused.
    """

    def __init__(
        self,
        channel: ControlChannel,
        *,
        resources_of: Callable[[str], tuple[str, ...]],
        is_paused: Callable[[str], bool] = lambda _integration: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._resources_of = resources_of
        self._is_paused = is_paused
        self._clock = clock
        self._pending: list[tuple[ActionKind, str, str | None, float]] = []  # kind, integration, resource, received

    def resources_of(self, integration: str) -> tuple[str, ...]:
        return self._resources_of(integration)

    def is_paused(self, integration: str) -> bool:
        return self._is_paused(integration)

    def trigger(self, integration: str, resource: str, *, received_at: float | None = None) -> bool:
        self._pending.append(("trigger", integration, resource, self._clock() if received_at is None else received_at))
        return True

    def pause(self, integration: str) -> bool:
        self._pending.append(("pause", integration, None, self._clock()))
        return True

    def resume(self, integration: str) -> bool:
        self._pending.append(("resume", integration, None, self._clock()))
        return True

    def take(self, webhook_id: str | None) -> list[ControlAction]:
        """The actions collected since the last call, for the webhook ``webhook_id``: a trigger's resources of one
        integration become one action."""
        pending, self._pending = self._pending, []
        actions: list[ControlAction] = []
        triggers: dict[str, tuple[list[str], float]] = {}
        for kind, integration, resource, received_at in pending:
            if kind == "trigger" and resource is not None:
                if integration not in triggers:
                    triggers[integration] = ([], received_at)
                    actions.append(ControlAction("trigger", integration, (), webhook_id, 0))
                triggers[integration][0].append(resource)
            else:
                actions.append(ControlAction(kind, integration, (), webhook_id, wall_ms_of(received_at)))
        return [
            action._replace(
                resources=tuple(dict.fromkeys(triggers[action.integration][0])),
                received_at_ms=wall_ms_of(triggers[action.integration][1]),
            )
            if action.kind == "trigger"
            else action
            for action in actions
        ]

    async def flush(self, webhook_id: str | None) -> None:
        """Send the actions collected since the last call, in order; return once all were acknowledged."""
        for action in self.take(webhook_id):
            await self._channel.send(action)


def apply_action(target: PollTarget, action: ControlAction) -> None:
    """Do on the owner what ``action`` asks: trigger polls (unless the integration is paused there), pause, resume."""
    if action.kind == "pause":
        target.pause(action.integration)
    elif action.kind == "resume":
        target.resume(action.integration)
    elif not target.is_paused(action.integration):
        received_at = monotonic_of(action.received_at_ms)
        configured = set(target.resources_of(action.integration))
        for resource in action.resources:
            if resource in configured:
                target.trigger(action.integration, resource, received_at=received_at)

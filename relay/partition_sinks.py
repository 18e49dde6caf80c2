"""One fenced transactional producer per owned state partition, and the routing of each page to its partition's.

Rule: a state partition is the unit of ownership, and it has exactly one writer: the producer whose transactional id
is ``{RELAY_TRANSACTIONAL_ID}-{partition}``, opened by the replica that owns the partition. Opening it fences the
previous owner's for that partition only (an old owner that wakes up can never commit to it again). A page's unit of
work (its events, state records and checkpoint) is committed by the producer of the partition its state records go
to, so it stays one transaction, as with one producer. What owning means (when to open, close, restore) is
:mod:`relay.fleet`'s business; this module only keeps the producers and routes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from relay.config import Config
from relay.errors import Fenced, KafkaUnavailable, PartitionLost
from relay.metrics import Metrics
from relay.sink import KafkaSink, OutMessage

log = logging.getLogger(__name__)


def partition_transactional_id(base: str, partition: int) -> str:
    return f"{base}-{partition}"


class PartitionSinks:
    """The producers of the owned partitions, with the face of one sink (``commit``, ``reachable``, ``probe``...)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        fencing_is_fatal: bool = True,
        on_lost: Callable[[int], None] | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._fencing_is_fatal = fencing_is_fatal
        self._on_lost = on_lost
        self._sinks: dict[int, KafkaSink] = {}
        self._connected = False  # Kafka answered once (topics ensured): what reachable says while owning nothing
        self.fenced = False  # alone: another instance took our transactional ids, and nothing may be written again
        self._probe_turn = 0  # which reachable producer :meth:`probe` asks through next

    def in_fleet(self, on_lost: Callable[[int], None]) -> None:
        """From now on a fenced partition is lost to another replica (``on_lost`` is told), not a reason to stop."""
        self._fencing_is_fatal = False
        self._on_lost = on_lost

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._sinks)

    @property
    def reachable(self) -> bool:
        if not self._sinks:
            return self._connected
        return all(sink.reachable for sink in self._sinks.values())

    async def ensure_topics(self) -> None:
        await KafkaSink(self._config, self._metrics).ensure_topics()
        self._connected = True

    async def open(self, partitions: Iterable[int]) -> None:
        """Start the producer of each partition (fencing its previous owner), unless it is open already."""
        for partition in sorted(set(partitions) - self._sinks.keys()):
            sink = KafkaSink(
                self._config,
                self._metrics,
                transactional_id=partition_transactional_id(self._config.transactional_id, partition),
                fencing_is_fatal=self._fencing_is_fatal,
            )
            await sink.start()
            self._sinks[partition] = sink

    async def start(self, partitions: Iterable[int] | None = None) -> None:
        """Start again the producers of ``partitions`` (all owned, by default) after a failed commit discarded one."""
        chosen = self._sinks if partitions is None else partitions
        await asyncio.gather(*(self._sinks[p].start() for p in chosen if p in self._sinks))

    async def close(self, partitions: Iterable[int]) -> None:
        for partition in sorted(set(partitions)):
            sink = self._sinks.pop(partition, None)
            if sink is not None:
                await sink.stop()

    def state_read(self, partitions: Iterable[int] | None = None) -> None:
        """The state of ``partitions`` (all owned, by default) was just read: their commits may go ahead."""
        for partition in self._sinks if partitions is None else partitions:
            sink = self._sinks.get(partition)
            if sink is not None:
                sink.state_read()

    async def probe(self, timeout: float = 5.0) -> bool:
        """Check that Kafka answers, with one producer: the next one each time, and every producer that found it
        unreachable (which starts again those discarded after a failed commit). All their clients talk to the same
        brokers: asking through each one every time (a metadata request per owned partition every few seconds) told
        no more than asking through one, at several times the cost for an idle replica and its brokers."""
        if self.fenced:
            return False
        sinks = [sink for sink in self._sinks.values() if not sink.reachable]
        reachable = [sink for sink in self._sinks.values() if sink.reachable]
        if reachable:
            self._probe_turn = (self._probe_turn + 1) % len(reachable)
            sinks.append(reachable[self._probe_turn])
        results = await asyncio.gather(*(sink.probe(timeout) for sink in sinks))
        return all(results)

    async def commit(self, messages: Sequence[OutMessage]) -> None:
        """Commit ``messages`` with the producer of their state partition; see :meth:`KafkaSink.commit`."""
        if self.fenced:
            raise Fenced("this relay was fenced by another instance with the same transactional id")
        partition = self._partition_of(messages)
        sink = self._sinks.get(partition)
        if sink is None:
            raise PartitionLost(f"state partition {partition} is not owned by this replica (any more)")
        try:
            await sink.commit(messages)
        except Fenced as error:
            if self._fencing_is_fatal:
                self.fenced = True
                raise
            self._lost(partition)
            raise PartitionLost(f"state partition {partition} is owned by another replica now: {error}") from error

    def _lost(self, partition: int) -> None:
        log.warning("a state partition was taken over by another replica", extra={"partition": partition})
        if self._on_lost is not None:
            self._on_lost(partition)

    def _partition_of(self, messages: Sequence[OutMessage]) -> int:
        # A unit of work always carries its pair's checkpoint, a state record; state records come last.
        state_topic = self._config.state_topic
        for message in reversed(messages):
            if message.topic == state_topic and message.partition is not None:
                return message.partition
        raise KafkaUnavailable("a unit of work without a state record cannot be placed on a state partition")

    async def stop(self) -> None:
        await self.close(list(self._sinks))

"""Reading the compacted state topic back from Kafka into a :class:`~relay.state.StateStore`, and the checks of where
its records sit.

What belongs here: the state topic as Kafka sees it (partitions, placement, reading it to its end); not the record
format (:mod:`relay.state_records`) nor the memory it fills (:mod:`relay.state`).

Every state record of an integration goes to partition ``murmur2(integration) % partitions``, so that a replica
owning a set of integrations can one day restore only their partitions. ``partitions`` is
``RELAY_STATE_TOPIC_PARTITIONS``; it must stay what it was when the state was written, since a pair whose records
sat in two partitions would restore in no defined order (the newer fingerprint could lose to the older).
:func:`restore` checks that every record is where that count places it, and that the topic has that many
partitions, and raises :class:`~relay.errors.StateError` otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from relay.errors import KafkaUnavailable, StateError
from relay.partitioning import partition_for_key

if TYPE_CHECKING:
    from relay.state import StateStore

log = logging.getLogger(__name__)


async def restore(
    store: StateStore,
    topic: str,
    client_kwargs: Mapping[str, Any],
    *,
    partitions: Iterable[int] | None = None,
) -> int:
    """Read the state topic from its beginning to its end (committed records only) into ``store``.

    Returns the number of records read. The end is taken when the restore starts: nothing else writes our pairs'
    state while we restore, since the transactional id fences any older instance.

    Raises StateError when the topic has fewer partitions than ``store.partitions`` (state would be written to
    partitions it does not have), or a record is not in the partition ``store`` places its integration in; raises
    KafkaUnavailable when Kafka's metadata does not know the topic.
    """
    consumer = AIOKafkaConsumer(
        **client_kwargs,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    started = time.monotonic()
    count = 0
    try:
        topic_partitions = consumer.partitions_for_topic(topic) or await _partitions_of(consumer, topic)
        check_partition_count(topic, len(topic_partitions), store.partitions)
        wanted = sorted(partitions) if partitions is not None else sorted(topic_partitions)
        assigned = [TopicPartition(topic, p) for p in wanted]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end_offsets = await consumer.end_offsets(assigned)
        remaining = {tp for tp in assigned if end_offsets[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=50_000)
            for tp, records in batches.items():
                integrations = store.restore_records((record.key, record.value) for record in records)
                check_placement(store, topic, len(topic_partitions), tp.partition, integrations)
                count += len(records)
            # Positions step over transaction markers too, so comparing with the end offsets is exact.
            remaining = {tp for tp in remaining if (await consumer.position(tp)) < end_offsets[tp]}
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    log.info(
        "state restored",
        extra={"topic": topic, "records": count, "seconds": round(time.monotonic() - started, 3)},
    )
    return count


async def _partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise KafkaUnavailable(f"the state topic {topic!r} is not in Kafka's metadata")
    return set(partitions)


def check_partition_count(topic: str, topic_partitions: int, placed_over: int) -> None:
    """Raise StateError when the state topic has fewer partitions than the state is placed over."""
    if topic_partitions < placed_over:
        raise StateError(
            f"the state topic {topic!r} has {topic_partitions} partition(s), fewer than "
            f"RELAY_STATE_TOPIC_PARTITIONS={placed_over}, the number the relay places state over: set it to the count "
            f"the topic's state was written with (at most {topic_partitions})"
        )


def check_placement(
    store: StateStore, topic: str, topic_partitions: int, partition: int, integrations: Iterable[str]
) -> None:
    """Raise StateError if a record of one of ``integrations``, read from ``partition``, is not where ``store``
    places that integration's state (the module docstring says why that matters)."""
    for integration in integrations:
        home = store.partition_of(integration)
        if home != partition:
            key = integration.encode()
            fits = [c for c in range(1, topic_partitions + 1) if partition_for_key(key, c) == partition]
            raise StateError(
                f"state of integration {integration[:128]!r} is in partition {partition} of the state topic "
                f"{topic!r}, but RELAY_STATE_TOPIC_PARTITIONS={store.partitions} places it in partition {home}. "
                "The setting must keep the value the state was written with, or records of one integration "
                "would restore in no defined order. Counts up to the topic's that place it where it is: "
                f"{', '.join(map(str, fits)) or 'none'}"
            )

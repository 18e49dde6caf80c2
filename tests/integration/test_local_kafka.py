"""The local broker is real Kafka and transactions work on it (the relay's exactly-once rests on them)."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def create_topic(bootstrap_servers: str, topic: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def read_all(bootstrap_servers: str, topic: str, *, expect: int, isolation_level: str) -> list[bytes]:
    """Read until ``expect`` records arrived, or until the end of the topic once that is reached (30 s bound)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        isolation_level=isolation_level,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(values) < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                values.extend(record.value for record in records if record.value is not None)
    finally:
        await consumer.stop()
    return values


async def test_transactional_producer_commits_and_read_committed_consumer_sees_only_commits(
    bootstrap_servers: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}.txn"
    await create_topic(bootstrap_servers, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, transactional_id=f"{topic_prefix}-txn", acks="all")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(10):
                await producer.send(topic, key=f"k{i}".encode(), value=f"committed-{i}".encode())
        await producer.begin_transaction()
        await producer.send(topic, key=b"x", value=b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, key=b"last", value=b"committed-last")
    finally:
        await producer.stop()

    committed = await read_all(bootstrap_servers, topic, expect=11, isolation_level="read_committed")
    assert sorted(committed) == sorted([f"committed-{i}".encode() for i in range(10)] + [b"committed-last"])

    # A read_uncommitted consumer also sees the aborted record: the broker really wrote it, then aborted it.
    everything = await read_all(bootstrap_servers, topic, expect=12, isolation_level="read_uncommitted")
    assert b"aborted" in everything
    assert len(everything) == 12

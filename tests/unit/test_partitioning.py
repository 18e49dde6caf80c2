"""Keyed messages must land on the partition the Java client's default partitioner would pick: consumers (and any
other producer writing the same topics) rely on one entity's events sharing a partition."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from relay.partitioning import murmur2, murmur2_many, partition_for_key, partitions_for_keys

# Kafka's own test vectors (org.apache.kafka.common.utils.UtilsTest#testMurmur2), as unsigned 32-bit values.
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_matches_the_java_client() -> None:
    for data, expected in JAVA_VECTORS.items():
        assert murmur2(data) == expected & 0xFFFFFFFF, data


@given(st.binary(max_size=80))
def test_murmur2_matches_aiokafka_on_any_bytes(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(
    st.text(min_size=1, max_size=40),
    st.lists(st.text(max_size=30), min_size=1, max_size=20),
)
def test_keys_sharing_a_prefix_hash_as_if_alone(integration: str, entity_ids: list[str]) -> None:
    # The words before the last colon are cached per prefix and length: every key of an integration reuses them,
    # including ids that themselves contain colons, and the cache must never change a result.
    for entity_id in entity_ids:
        key = f"{integration}:{entity_id}".encode()
        assert murmur2(key) == aiokafka_murmur2(key), key
        assert partition_for_key(key, 6) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % 6


@given(st.lists(st.binary(max_size=48), max_size=300))
def test_murmur2_many_equals_murmur2_of_each(keys: list[bytes]) -> None:
    # Mixed lengths, duplicates, empty keys and batches of every size: the lanes must never leak into each other.
    assert murmur2_many(keys) == [aiokafka_murmur2(key) for key in keys]


def test_a_large_batch_of_one_integration() -> None:
    keys = [f"personio:8d1hpmS7b4bR1CYbmpuHB2S4:{n:0{n % 30 + 1}d}".encode() for n in range(2_000)]
    assert partitions_for_keys(keys, 12) == [partition_for_key(key, 12) for key in keys]
    assert murmur2_many(keys) == [aiokafka_murmur2(key) for key in keys]

"""`relay state repartition` without Kafka: the records a copy writes (the latest state of every pair, each on the
partition a relay with the new count reads it from), the comparison that verifies a copy, the report, and the order
of the steps and their refusals, over a hand-written fake of the Kafka steps (:class:`relay.repartition.Steps`)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator

import orjson
import pytest
from aiokafka import TopicPartition

from relay import diff
from relay.config import Config
from relay.errors import StateError
from relay.partitioning import partition_for_key
from relay.repartition import (
    CopyMismatch,
    Difference,
    FleetRunning,
    Offsets,
    RepartitionReport,
    Topics,
    first_difference,
    partition_loads,
    placed_records,
    render_json,
    render_text,
    repartition,
)
from relay.state import Checkpoint, InProgress, StateStore
from relay.state_records import FINGERPRINT_FORMAT, WIDE_FINGERPRINT_FORMAT, StateRecord
from relay.state_show import GroupView, Member
from relay.state_topic import check_placement
from tests.unit.support import config_without_kafka

USERS = "ats/users"
JOBS = "ats/jobs"
INTEGRATIONS = [f"personio:repartition{n}" for n in range(12)]


def fingerprint(content: int, *, deleted: bool = False) -> bytes:
    return diff.make_fingerprint(
        content.to_bytes(8, "little"),
        changed_at_ms=1,
        version=1,
        shape_id=0,
        deleted=deleted,
        field_hashes=[] if deleted else [content, content + 1],
    )


def history(integration: str, resource: str) -> list[tuple[bytes, bytes | None]]:
    """A pair's records as a state topic holds them before compaction: superseded values, tombstones, an old format."""

    def entity(entity_id: str) -> bytes:
        return orjson.dumps(["e", integration, resource, entity_id])

    wide = diff.make_fingerprint(b"\2" * 8, changed_at_ms=1, version=1, shape_id=0, deleted=False)
    wide += (0x1234ABCD).to_bytes(4, "little") + (0xFFFF0001).to_bytes(4, "little")
    checkpoint = orjson.dumps(["c", integration, resource])
    return [
        (orjson.dumps(["s", integration, resource, 0]), orjson.dumps(["a", "b"])),
        (entity("kept"), FINGERPRINT_FORMAT + fingerprint(1)),
        (entity("changed"), FINGERPRINT_FORMAT + fingerprint(2)),
        (entity("changed"), FINGERPRINT_FORMAT + fingerprint(3)),  # the latest value wins
        (entity("deleted"), FINGERPRINT_FORMAT + fingerprint(4, deleted=True)),
        (entity("forgotten"), FINGERPRINT_FORMAT + fingerprint(5)),
        (entity("forgotten"), None),  # a tombstone: not copied
        (entity("old-format"), WIDE_FINGERPRINT_FORMAT + wide),
        (checkpoint, Checkpoint(watermark_ms=5).to_json()),
        (checkpoint, Checkpoint(watermark_ms=9, snapshot_done=True, last_reconcile_ms=7).to_json()),
    ]


def source_store(partitions: int = 2) -> StateStore:
    store = StateStore(partitions)
    for integration in INTEGRATIONS:
        store.restore_records(history(integration, USERS))
    store.restore_records(
        [(orjson.dumps(["c", INTEGRATIONS[0], JOBS]), Checkpoint(watermark_ms=3, snapshot_done=True).to_json())]
    )
    return store


def test_each_integration_is_placed_where_a_relay_with_the_new_count_reads_it() -> None:
    for partitions in (1, 3, 4, 7):
        records = list(placed_records(source_store(), partitions))
        for record in records:
            integration = orjson.loads(record.key)[1]
            assert record.partition == partition_for_key(integration.encode(), partitions)
            assert record.partition == StateStore(partitions).partition_of(integration)
    assert {record.partition for record in placed_records(source_store(), 4)} == {0, 1, 2, 3}


def test_only_the_latest_state_is_copied_and_it_restores_to_the_same_state() -> None:
    source = source_store()
    records = list(placed_records(source, 4))
    keys = [record.key for record in records]
    assert len(keys) == len(set(keys))  # one record per key: superseded values are not copied
    assert orjson.dumps(["e", INTEGRATIONS[0], USERS, "forgotten"]) not in keys  # nor forgotten entities
    # Per pair of USERS: 1 shape, 4 entities, 1 checkpoint; the JOBS pair: its checkpoint.
    assert len(records) == len(INTEGRATIONS) * 6 + 1
    assert all(record.value[:1] == FINGERPRINT_FORMAT for record in records if orjson.loads(record.key)[0] == "e")

    copy = StateStore(4)
    copy.restore_records((record.key, record.value) for record in records)
    assert first_difference(source, copy) is None
    pair = copy.pair(INTEGRATIONS[3], USERS)
    assert pair.checkpoint == Checkpoint(watermark_ms=9, snapshot_done=True, last_reconcile_ms=7)
    assert pair.live_entities == 3
    assert diff.field_hashes(pair.entities["old-format"], pair.shapes) == {"a": 0xABCD, "b": 0x0001}


def test_a_forgotten_pair_is_copied_as_the_default_checkpoint_it_restores_to() -> None:
    source = StateStore(2)
    source.restore_records(history(INTEGRATIONS[0], USERS))
    source.forget(INTEGRATIONS[0], USERS)  # relay state reset: shapes stay, entities and checkpoint go
    records = list(placed_records(source, 3))
    assert [orjson.loads(record.key)[0] for record in records] == ["s", "c"]
    copy = StateStore(3)
    copy.restore_records((record.key, record.value) for record in records)
    assert first_difference(source, copy) is None


def copied(source: StateStore, partitions: int = 4) -> StateStore:
    copy = StateStore(partitions)
    copy.restore_records((record.key, record.value) for record in placed_records(source, partitions))
    return copy


def test_every_way_a_copy_can_differ_names_the_pair() -> None:
    source = source_store()
    pair = (INTEGRATIONS[2], USERS)

    copy = copied(source)
    copy.set_checkpoint(*pair, Checkpoint(watermark_ms=9, snapshot_done=True, last_reconcile_ms=7, in_progress=None))
    assert first_difference(source, copy) is None
    copy.set_checkpoint(*pair, Checkpoint(watermark_ms=8, snapshot_done=True, last_reconcile_ms=7))
    found = first_difference(source, copy)
    assert found is not None
    assert found.pair == pair
    assert found.what.startswith("checkpoint ")
    assert str(found).startswith(f"integration {INTEGRATIONS[2]!r} resource {USERS!r}: checkpoint")

    copy = copied(source)
    in_progress = InProgress("incremental", "cursor", None, 1, 1)
    copy.set_checkpoint(*pair, Checkpoint(9, snapshot_done=True, last_reconcile_ms=7, in_progress=in_progress))
    found = first_difference(source, copy)
    assert found is not None
    assert found.pair == pair
    assert "in_progress=InProgress(" in found.what

    copy = copied(source)
    del copy.pair(*pair).entities["kept"]
    copy.pair(*pair).entities["extra"] = fingerprint(8)
    copy.pair(*pair).entities["changed"] = fingerprint(2)
    assert first_difference(source, copy) == Difference(
        pair,
        "1 entit(ies) missing (first 'kept'); 1 entit(ies) not in the source (first 'extra'); "
        "1 fingerprint(s) differ (first 'changed')",
    )

    copy = copied(source)
    copy.pair(INTEGRATIONS[5], "ats/other")
    assert first_difference(source, copy) == Difference(
        (INTEGRATIONS[5], "ats/other"), "in the copy but not in the source"
    )

    copy = StateStore(4)
    copy.restore_records(
        (record.key, record.value)
        for record in placed_records(source, 4)
        if orjson.loads(record.key)[1:3] != [INTEGRATIONS[7], USERS]
    )
    assert first_difference(source, copy) == Difference((INTEGRATIONS[7], USERS), "missing from the copy")

    copy = copied(source)
    copy.pair(*pair).shapes.add_known(1, ("c",))
    assert first_difference(source, copy) == Difference(pair, "record shapes differ")


def test_the_report_counts_per_partition_and_names_the_settings_to_change() -> None:
    source = source_store()
    written: dict[int, int] = {}
    for record in placed_records(source, 4):
        written[record.partition] = written.get(record.partition, 0) + 1
    loads = partition_loads(source, 4, written)
    assert [load.partition for load in loads] == [0, 1, 2, 3]
    assert sum(len(load.integrations) for load in loads) == len(INTEGRATIONS)
    assert sum(len(load.pairs) for load in loads) == len(INTEGRATIONS) + 1
    assert sum(load.records for load in loads) == len(INTEGRATIONS) * 6 + 1
    for load in loads:
        assert all(partition_for_key(i.encode(), 4) == load.partition for i in load.integrations)

    report = RepartitionReport(
        source_topic="kombo.relay-state",
        source_partitions=2,
        source_records=123,
        target_topic="kombo.relay-state-4",
        partitions=4,
        created=True,
        loads=tuple(loads),
        control_topic="kombo.relay-control",
        control_partitions=2,
    )
    lines = render_text(report)
    assert lines[0] == "read 123 record(s) of kombo.relay-state (2 partition(s))"
    assert lines[1] == (
        f"copied {len(INTEGRATIONS) + 1} pair(s) of {len(INTEGRATIONS)} integration(s) as {len(INTEGRATIONS) * 6 + 1} "
        "record(s) to created kombo.relay-state-4 (4 partition(s)), and verified the copy"
    )
    assert "grew the control topic kombo.relay-control from 2 to 4 partitions" in lines
    assert lines[-2:] == ["  RELAY_STATE_TOPIC=kombo.relay-state-4", "  RELAY_STATE_TOPIC_PARTITIONS=4"]

    shown = render_json(report)
    assert shown["settings"] == {"RELAY_STATE_TOPIC": "kombo.relay-state-4", "RELAY_STATE_TOPIC_PARTITIONS": "4"}
    assert [p["records"] for p in shown["partitions"]] == [load.records for load in loads]
    assert shown["control_topic"] == {"topic": "kombo.relay-control", "partitions_before": 2, "grown_to": 4}
    assert shown["verified"] is True


# --- The steps, over a fake of Kafka ----------------------------------------------------------------------------------


class FakeKafka:
    """The Kafka steps of a repartition (:class:`relay.repartition.Steps`) over topics in memory: the source holds
    ``source``'s records; the target what was written, as ``read_back`` changes it (a broker that lost or moved a
    record); reading a topic places its records as restore() does."""

    def __init__(self, source: list[tuple[bytes, bytes | None]], *, target: int | None = None) -> None:
        self.config = config_without_kafka(RELAY_TOPIC_PREFIX="t", RELAY_STATE_TOPIC_PARTITIONS="2")
        self.target = config_without_kafka(
            RELAY_TOPIC_PREFIX="t", RELAY_STATE_TOPIC="t.state-4", RELAY_STATE_TOPIC_PARTITIONS="4"
        )
        self.source = source
        self.target_partitions = target
        self.control_partitions: int | None = 2
        self.written: list[StateRecord] = []
        self.read_back: Callable[[list[StateRecord]], list[StateRecord]] = list
        self.source_end = 100
        self.steps: list[str] = []

    async def topics(self) -> Topics:
        return Topics(2 if self.source else None, self.target_partitions, self.control_partitions)

    async def check_target_usable(self, partitions: int) -> None:
        self.steps.append(f"check target of {partitions}")

    async def offsets(self, topic: str) -> tuple[Offsets, Offsets]:
        assert topic == self.config.state_topic
        end = {TopicPartition(topic, 0): self.source_end}
        return dict.fromkeys(end, 0), end

    async def read(self, config: Config) -> tuple[StateStore, int]:
        self.steps.append(f"read {config.state_topic}")
        store = StateStore(config.state_topic_partitions)
        if config.state_topic == self.config.state_topic:
            store.restore_records(self.source)
            return store, len(self.source)
        records = self.read_back(self.written)
        for record in records:
            integrations = store.restore_records([(record.key, record.value)])
            check_placement(store, config.state_topic, config.state_topic_partitions, record.partition, integrations)
        return store, len(records)

    async def create_target(self) -> None:
        self.steps.append("create target")
        self.target_partitions = self.target.state_topic_partitions

    async def write(self, records: Iterator[StateRecord]) -> dict[int, int]:
        self.written = list(records)
        self.steps.append(f"write {len(self.written)}")
        written: dict[int, int] = {}
        for record in self.written:
            written[record.partition] = written.get(record.partition, 0) + 1
        return written

    async def grow_control_topic(self) -> None:
        self.steps.append("grow control topic")
        self.control_partitions = self.target.state_topic_partitions


def group(*members: str) -> Callable[[], Awaitable[GroupView]]:
    """The fleet's group as Kafka describes it at each call: at the i-th, one member whose client id is
    ``members[i]``, or none when that is "" or there is no ``members[i]``."""
    calls = iter(range(1000))

    async def describe() -> GroupView:
        call = next(calls)
        alive = members[call] if call < len(members) else ""
        if not alive:
            return GroupView("g", "Empty")
        return GroupView("g", "Stable", (Member("m-1", alive, "/10.0.0.7", frozenset()),))

    return describe


def source_history() -> list[tuple[bytes, bytes | None]]:
    return [record for integration in INTEGRATIONS for record in history(integration, USERS)]


async def test_the_steps_copy_verify_and_grow_the_control_topic() -> None:
    kafka = FakeKafka(source_history())
    report = await repartition(kafka, group())
    assert kafka.steps == [
        "read t.relay-state",
        "create target",
        f"write {len(INTEGRATIONS) * 6}",
        "read t.state-4",
        "grow control topic",
    ]
    assert (report.created, report.pairs, report.records, report.control_grown) == (True, 12, 72, True)
    assert report.source_records == len(source_history())


async def test_an_existing_empty_target_is_checked_and_a_control_topic_large_enough_kept() -> None:
    kafka = FakeKafka(source_history(), target=4)
    kafka.control_partitions = 6
    report = await repartition(kafka, group())
    assert kafka.steps[0] == "check target of 4"
    assert "create target" not in kafka.steps
    assert "grow control topic" not in kafka.steps
    assert (report.created, report.control_grown, report.control_partitions) == (False, False, 6)


async def test_a_live_member_stops_it_before_anything_is_read() -> None:
    kafka = FakeKafka(source_history())
    with pytest.raises(
        FleetRunning, match=re.escape("'g' (RELAY_GROUP_ID) has 1 live member(s): replica-a on /10.0.0.7")
    ):
        await repartition(kafka, group("replica-a"))
    assert kafka.steps == []


async def test_a_member_that_joined_or_a_write_during_the_copy_fails_it() -> None:
    kafka = FakeKafka(source_history())
    with pytest.raises(FleetRunning, match=re.escape("live member(s) during the copy, which may miss what it wrote")):
        await repartition(kafka, group("", "replica-b"))
    assert "grow control topic" not in kafka.steps

    kafka = FakeKafka(source_history())

    async def written_meanwhile() -> GroupView:
        kafka.source_end += 1  # a writer outside the group (nothing of the relay writes so)
        return GroupView("g", "Empty")

    with pytest.raises(FleetRunning, match=re.escape("'t.relay-state' was written to during the copy")):
        await repartition(kafka, written_meanwhile)


async def test_a_copy_that_reads_back_otherwise_fails_naming_the_pair() -> None:
    kafka = FakeKafka(source_history())
    lost = orjson.dumps(["e", INTEGRATIONS[4], USERS, "kept"])
    kafka.read_back = lambda records: [record for record in records if record.key != lost]
    with pytest.raises(CopyMismatch) as failed:
        await repartition(kafka, group())
    assert str(failed.value) == (
        "the copy in 't.state-4' differs from 't.relay-state': "
        f"integration {INTEGRATIONS[4]!r} resource {USERS!r}: 1 entit(ies) missing (first 'kept')"
    )
    assert "grow control topic" not in kafka.steps

    kafka = FakeKafka(source_history())
    kafka.read_back = lambda records: [record._replace(partition=(record.partition + 1) % 4) for record in records]
    with pytest.raises(
        CopyMismatch, match=re.escape("'t.state-4' does not read back as relay run reads state: state of")
    ):
        await repartition(kafka, group())


async def test_no_state_topic_is_a_state_error() -> None:
    with pytest.raises(
        StateError, match=re.escape("'t.relay-state' (RELAY_STATE_TOPIC) does not exist: nothing to copy")
    ):
        await repartition(FakeKafka([]), group())

"""The state topic's records as the relay reads them back: both fingerprint formats, many at once, and the check
that each sits in the partition its integration's state is placed in."""

from __future__ import annotations

import orjson
import pytest

from relay import diff
from relay.errors import StateError
from relay.state import Checkpoint, StateStore
from relay.state_records import FINGERPRINT_FORMAT, WIDE_FINGERPRINT_FORMAT
from relay.state_topic import check_partition_count, check_placement

ACME = "personio:acme"
USERS = "ats/users"


def key(entity_id: str) -> bytes:
    return orjson.dumps(["e", ACME, USERS, entity_id])


def live(content: int, hashes: list[int]) -> bytes:
    return diff.make_fingerprint(
        content.to_bytes(8, "little"), changed_at_ms=1, version=1, shape_id=0, deleted=False, field_hashes=hashes
    )


def test_restore_records_reads_both_formats_and_counts_live_entities() -> None:
    store = StateStore(6)
    wide = diff.make_fingerprint(b"\2" * 8, changed_at_ms=1, version=1, shape_id=0, deleted=False)
    wide += (0x1234ABCD).to_bytes(4, "little") + (0xFFFF0001).to_bytes(4, "little")
    deleted = diff.make_fingerprint(b"\3" * 8, changed_at_ms=1, version=2, deleted=True)
    store.restore_records(
        [
            (orjson.dumps(["s", ACME, USERS, 0]), orjson.dumps(["a", "b"])),
            (key("new"), FINGERPRINT_FORMAT + live(1, [7, 8])),
            (key("old"), WIDE_FINGERPRINT_FORMAT + wide),
            (key("gone"), FINGERPRINT_FORMAT + live(4, [1, 2])),
            (key("gone"), FINGERPRINT_FORMAT + deleted),  # a later record of the same entity wins
            (orjson.dumps(["c", ACME, USERS]), Checkpoint(watermark_ms=5, snapshot_done=True).to_json()),
            (key("tombstoned"), None),
        ]
    )
    pair = store.pair(ACME, USERS)
    assert diff.field_hashes(pair.entities["new"], pair.shapes) == {"a": 7, "b": 8}
    assert diff.field_hashes(pair.entities["old"], pair.shapes) == {"a": 0xABCD, "b": 0x0001}
    assert diff.is_deleted(pair.entities["gone"])
    assert "tombstoned" not in pair.entities
    assert pair.live_entities == 2
    assert pair.checkpoint.watermark_ms == 5


def test_one_by_one_and_many_at_once_restore_the_same() -> None:
    records = [(key(f"u{i}"), FINGERPRINT_FORMAT + live(i, [i, i + 1])) for i in range(50)]
    one, many = StateStore(6), StateStore(6)
    for k, v in records:
        one.restore_record(k, v)
    many.restore_records(records)
    assert one.pair(ACME, USERS).entities == many.pair(ACME, USERS).entities
    assert one.pair(ACME, USERS).live_entities == many.pair(ACME, USERS).live_entities == 50


def test_state_records_carry_the_current_format() -> None:
    store = StateStore(6)
    fingerprint = live(9, [1])
    (record,) = store.records_for(ACME, USERS, delta={"u1": fingerprint}, new_shapes=(), checkpoint=None)
    assert record.value == FINGERPRINT_FORMAT + fingerprint
    assert FINGERPRINT_FORMAT == b"\x02"


GLOBEX = "greenhouse:globex"


def test_restore_records_names_the_integrations_it_read() -> None:
    store = StateStore(6)
    read = store.restore_records(
        [
            (key("u1"), FINGERPRINT_FORMAT + live(1, [1])),
            (orjson.dumps(["c", GLOBEX, USERS]), Checkpoint(watermark_ms=5).to_json()),
            (orjson.dumps(["e", "only:a-tombstone", USERS, "u2"]), None),
        ]
    )
    assert read == {ACME, GLOBEX}


def test_records_in_their_integrations_partition_pass_the_placement_check() -> None:
    store = StateStore(2)
    (record,) = store.records_for(ACME, USERS, delta={"u1": live(1, [1])}, new_shapes=(), checkpoint=None)
    check_placement(store, "relay-state", 2, record.partition, {ACME})


def test_state_placed_by_another_partition_count_is_refused_with_the_counts_that_fit() -> None:
    # ACME's state goes to partition 1 of 2 (murmur2 % 2), and to partition 0 with a count of 1.
    written_with_two = StateStore(2).partition_of(ACME)
    assert written_with_two == 1
    reader = StateStore(1)
    with pytest.raises(StateError) as raised:
        check_placement(reader, "relay-state", 2, written_with_two, {ACME})
    message = str(raised.value)
    assert "'personio:acme' is in partition 1 of the state topic 'relay-state'" in message
    assert "RELAY_STATE_TOPIC_PARTITIONS=1 places it in partition 0" in message
    assert message.endswith("Counts up to the topic's that place it where it is: 2")


def test_a_state_topic_with_fewer_partitions_than_the_setting_is_refused() -> None:
    check_partition_count("relay-state", 4, 4)
    check_partition_count("relay-state", 12, 4)  # more is fine: state is placed over the first four
    with pytest.raises(StateError, match=r"has 2 partition\(s\), fewer than RELAY_STATE_TOPIC_PARTITIONS=4"):
        check_partition_count("relay-state", 2, 4)


def shape(shape_id: int, names: list[str]) -> tuple[bytes, bytes]:
    return orjson.dumps(["s", ACME, USERS, shape_id]), orjson.dumps(names)


def remembered_pair() -> list[tuple[bytes, bytes | None]]:
    return [
        shape(0, ["a", "b"]),
        (key("u1"), FINGERPRINT_FORMAT + live(1, [1, 2])),
        (key("u2"), FINGERPRINT_FORMAT + live(2, [3, 4])),
        (orjson.dumps(["c", ACME, USERS]), Checkpoint(watermark_ms=5, snapshot_done=True).to_json()),
    ]


def test_every_key_of_a_pair_names_its_entities_shapes_and_checkpoint_last() -> None:
    store = StateStore(6)
    store.restore_records(remembered_pair())
    keys = [orjson.loads(k) for k in store.every_key(ACME, USERS)]
    assert keys == [["e", ACME, USERS, "u1"], ["e", ACME, USERS, "u2"], ["s", ACME, USERS, 0], ["c", ACME, USERS]]


@pytest.mark.parametrize("many", [False, True], ids=["one by one", "many at once"])
def test_a_pair_whose_every_key_was_tombstoned_is_forgotten_and_may_start_again_with_other_shapes(many: bool) -> None:
    """A removed integration's state tombstoned, then the integration added again: its new first shape takes id 0 with
    other names, which must not clash with the shape forgotten (a clash is a StateError: the relay would stop)."""
    written = StateStore(6)
    written.restore_records(remembered_pair())
    tombstones: list[tuple[bytes, bytes | None]] = [(k, None) for k in written.every_key(ACME, USERS)]
    again = [shape(0, ["x"]), (key("u9"), FINGERPRINT_FORMAT + live(9, [7]))]
    store = StateStore(6)
    if many:
        store.restore_records([*remembered_pair(), *tombstones, *again])
    else:
        for k, v in [*remembered_pair(), *tombstones, *again]:
            store.restore_record(k, v)
    pair = store.pair(ACME, USERS)
    assert list(pair.entities) == ["u9"]
    assert pair.live_entities == 1
    assert diff.field_hashes(pair.entities["u9"], pair.shapes) == {"x": 7}
    assert pair.checkpoint == Checkpoint()  # no snapshot done: the next poll is one


def test_a_pair_tombstoned_entirely_is_not_held_any_more() -> None:
    store = StateStore(6)
    store.restore_records(remembered_pair())
    partition = store.partition_of(ACME)
    assert store.held([partition]) == {ACME: (USERS,)}
    assert store.held([p for p in range(6) if p != partition]) == {}
    store.restore_records([(k, None) for k in store.every_key(ACME, USERS)])
    assert store.held(range(6)) == {}
    assert list(store.pairs()) == []


def test_a_pair_reset_keeps_its_shapes_and_so_is_still_held() -> None:
    store = StateStore(6)
    store.restore_records(remembered_pair())
    store.restore_records([(k, None) for k in store.tombstone_keys(ACME, USERS)])  # relay state reset
    assert store.held(range(6)) == {ACME: (USERS,)}
    assert len(store.pair(ACME, USERS).shapes) == 1


def test_discard_forgets_a_pair_shapes_included() -> None:
    store = StateStore(6)
    store.restore_records(remembered_pair())
    store.discard(ACME, USERS)
    assert store.held(range(6)) == {}
    assert store.pair(ACME, USERS).is_empty()

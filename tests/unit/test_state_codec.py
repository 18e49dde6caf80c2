"""The state topic's entity records as the relay reads them back: both fingerprint formats, many at once."""

from __future__ import annotations

import orjson

from relay import diff
from relay.state import FINGERPRINT_FORMAT, WIDE_FINGERPRINT_FORMAT, Checkpoint, StateStore

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

"""The packed entity table behaves as the dict it replaces: whatever ids (any string), fingerprint lengths and order of
writes, removals and reads, through its rehashes and compactions."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay import entity_table
from relay.entity_table import EntityTable

# Few distinct ids, so that writes often replace and removals often hit; any string, surrogates and 0xFF included.
IDS = st.one_of(st.sampled_from(["", "a", "ab", "\xff", "\udcff", "é", "u1", "u2"]), st.text(max_size=6))
# Few lengths, so that a replacement is often the same length (written in place) and often not (appended).
FINGERPRINTS = st.integers(min_value=0, max_value=3).flatmap(lambda n: st.binary(min_size=n * 9, max_size=n * 9))


class TableAgainstDict(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = EntityTable()
        self.model: dict[str, bytes] = {}

    @rule(entity_id=IDS, fingerprint=FINGERPRINTS)
    def put(self, entity_id: str, fingerprint: bytes) -> None:
        assert self.table.put(entity_id, fingerprint) == self.model.get(entity_id)
        self.model[entity_id] = fingerprint

    @rule(entity_id=IDS)
    def remove_absent(self, entity_id: str) -> None:
        if entity_id not in self.model:
            with pytest.raises(KeyError):
                del self.table[entity_id]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        entity_id = data.draw(st.sampled_from(sorted(self.model)))
        del self.table[entity_id]
        del self.model[entity_id]

    @rule(entity_id=IDS)
    def read(self, entity_id: str) -> None:
        assert self.table.get(entity_id) == self.model.get(entity_id)
        assert (entity_id in self.table) == (entity_id in self.model)

    @invariant()
    def same_contents(self) -> None:
        assert len(self.table) == len(self.model)
        assert dict(self.table.items()) == self.model
        assert sorted(self.table) == sorted(self.model)


TestTableAgainstDict = TableAgainstDict.TestCase
TestTableAgainstDict.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


class SplitTableAgainstDict(TableAgainstDict):
    """The same, with a table split into 4 shards as soon as its one shard needs more than 8 slots (6 entities):
    the split, each shard's own growth and compaction, and lookups across shards."""

    def __init__(self) -> None:
        self.saved = entity_table._SPLIT_CAPACITY, entity_table._SHARDS
        entity_table._SPLIT_CAPACITY, entity_table._SHARDS = 8, 4
        super().__init__()

    def teardown(self) -> None:
        entity_table._SPLIT_CAPACITY, entity_table._SHARDS = self.saved


TestSplitTableAgainstDict = SplitTableAgainstDict.TestCase
TestSplitTableAgainstDict.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


def test_many_entities_survive_the_split_rehashes_and_compactions() -> None:
    table = EntityTable()
    model: dict[str, bytes] = {}
    for n in range(20_000):  # split into shards at about 5,500, as the relay's own tables are
        model[f"u{n}"] = n.to_bytes(4, "little")
        table[f"u{n}"] = model[f"u{n}"]
    for n in range(20_000):  # another length: appended again, the old records dead until compacted away
        model[f"u{n}"] = n.to_bytes(6, "little")
        table[f"u{n}"] = model[f"u{n}"]
    for n in range(0, 20_000, 7):  # the dead records now over half of each shard's: compacted
        del model[f"u{n}"]
        del table[f"u{n}"]
    assert table == model
    assert all(table[entity_id] == fingerprint for entity_id, fingerprint in model.items())


def test_iteration_of_a_small_table_follows_the_order_entities_were_first_remembered() -> None:
    table = EntityTable({"c": b"1", "a": b"2", "b": b"3"})
    table["c"] = b"9"  # same length: written in place, keeps its place
    assert list(table) == ["c", "a", "b"]
    table["a"] = b"22"  # another length: its new record comes last
    assert list(table.items()) == [("c", b"9"), ("b", b"3"), ("a", b"22")]


def test_other_keys_are_not_found() -> None:
    table = EntityTable({"1": b"x"})
    assert 1 not in table
    assert table.get("2", b"default") == b"default"
    with pytest.raises(KeyError):
        table["2"]

"""The check of ``writers.py`` on made-up ledgers: it passes what the fleet does, and fails each way two replicas could
write one state partition in one generation. (No Kafka: the fault scenarios feed it what the broker holds.)"""

from __future__ import annotations

import math

from tests.faults.writers import Tenure, Written, judge_writers

STATE = "p.relay-state"
EVENTS = "p.ats.users"


def state(offset: int, epoch: int, at: float, producer_id: int = 7, partition: int = 0) -> Written:
    return Written(STATE, partition, offset, producer_id, epoch, int(at * 1000), b"k")


def event(offset: int, epoch: int, at: float, producer_id: int = 7) -> Written:
    return Written(EVENTS, 0, offset, producer_id, epoch, int(at * 1000), b"i:e")


# Replica a owns partition 0 from 10 s to 20 s (handed over), b from 21 s on.
HANDOVER = [Tenure("a", 0, 10.0, 20.0), Tenure("b", 0, 21.0, math.inf)]


def test_one_writer_per_tenure_passes() -> None:
    records = [state(0, 0, 11.0), state(1, 0, 19.9), state(3, 1, 21.5), state(4, 1, 30.0)]
    verdict = judge_writers(records, [event(0, 0, 11.0), event(1, 1, 21.5)], HANDOVER, STATE)
    assert verdict.problems == []
    assert [run.tenure.replica if run.tenure else None for run in verdict.runs] == ["a", "b"]
    assert verdict.events_by == {"a": 1, "b": 1}
    assert verdict.summary() == {"claims": 2, "writers": 2, "double_writes": 0}


def test_a_zombie_writing_after_the_next_claim_is_caught() -> None:
    # a's tenure ends (for writing) where b's claim starts, even though a only noticed at 25 s.
    tenures = [Tenure("a", 0, 10.0, 25.0), Tenure("b", 0, 21.0, math.inf)]
    records = [state(0, 0, 11.0), state(1, 0, 22.0), state(3, 1, 23.0)]
    problems = judge_writers(records, [], tenures, STATE).problems
    assert len(problems) == 1
    assert "fit no single replica's tenure" in problems[0]


def test_interleaved_producer_sessions_are_caught() -> None:
    records = [state(0, 0, 11.0), state(1, 1, 21.5), state(2, 0, 21.6)]
    problems = judge_writers(records, [], HANDOVER, STATE).problems
    assert any("two producer sessions interleave" in p for p in problems)


def test_another_producer_id_on_a_partition_is_caught() -> None:
    records = [state(0, 0, 11.0), state(1, 0, 21.5, producer_id=8)]
    problems = judge_writers(records, [], HANDOVER, STATE).problems
    assert any("written by 2 producer ids" in p for p in problems)


def test_a_second_session_within_a_tenure_needs_its_own_restart() -> None:
    # b's tenure sees a new epoch: a replica that restarted its producer (and so fenced b) wrote it, unless b itself
    # restarted its producer after a Kafka error (it reads its state again first: a reload in its log).
    records = [state(0, 1, 21.5), state(1, 2, 23.0)]
    problems = judge_writers(records, [], HANDOVER, STATE).problems
    assert any("restarted no producer: another writer" in p for p in problems)
    restarted = [HANDOVER[0], Tenure("b", 0, 21.0, math.inf, reloads=(22.5,))]
    assert judge_writers(records, [], restarted, STATE).problems == []


def test_an_event_from_a_session_that_wrote_no_owned_state_is_caught() -> None:
    problems = judge_writers([state(0, 0, 11.0)], [event(0, 5, 11.0)], HANDOVER, STATE).problems
    assert any("wrote no owned state" in p for p in problems)

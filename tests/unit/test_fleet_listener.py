"""The group's decisions as the replica keeps them: a claim runs outside the group's callbacks (the member heartbeats
meanwhile), so a claim that failed must be remembered (to retry, or to stop for), forgotten once the group moved the
partitions, and a claim still reading when the group decides again must end before anything is handed over."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

from aiokafka.structs import TopicPartition

from relay.errors import KafkaUnavailable, StateError
from relay.fleet import Backoff, Ownership, RebalanceListener
from relay.metrics import Metrics


class ScriptedOwnership:
    """Claims that fail with the scripted errors, in order, then succeed."""

    def __init__(self, *errors: BaseException, gate: asyncio.Event | None = None) -> None:
        self.errors = list(errors)
        self.gate = gate
        self.owned: set[int] = set()
        self.settled = False
        self.restoring = False
        self.reading = asyncio.Event()  # a claim is reading (waiting on the gate)
        self.owning = asyncio.Event()  # a claim owns its partitions, and finishes once ``finish`` is set
        self.finish: asyncio.Event | None = None
        self.handed_over: list[set[int]] = []
        self.claims_under_way = 0
        self.overlaps = 0  # handovers that began while a claim was under way
        self.completed = 0  # claims that ran to their end

    async def claim(self, partitions: Iterable[int]) -> None:
        wanted = set(partitions)
        self.claims_under_way += 1
        try:
            await self._claim(wanted)
        finally:
            self.claims_under_way -= 1

    async def _claim(self, wanted: set[int]) -> None:
        self.restoring = True
        try:
            self.reading.set()
            if self.gate is not None:
                await self.gate.wait()
            if self.errors:
                raise self.errors.pop(0)
            self.owned |= wanted
        finally:
            self.restoring = False
        self.owning.set()
        if self.finish is not None:  # what a claim does once it owns: tombstones the removed integrations' state
            await self.finish.wait()
        self.settled = True
        self.completed += 1

    async def hand_over(self, partitions: Iterable[int], grace_seconds: float | None = None) -> None:
        self.overlaps += self.claims_under_way > 0
        gone = set(partitions) & self.owned
        self.handed_over.append(gone)
        self.owned -= gone

    def unsettle(self) -> None:
        self.settled = False


class GroupConsumer:
    """What the listener uses of the group's consumer."""

    def __init__(self) -> None:
        self.paused: list[TopicPartition] = []

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.extend(partitions)


def listener(ownership: ScriptedOwnership) -> RebalanceListener:
    return RebalanceListener(cast(Ownership, ownership), cast(Any, GroupConsumer()), Metrics(["ats/users"]))


def assignment(*partitions: int) -> list[TopicPartition]:
    return [TopicPartition("state", p) for p in partitions]


async def test_the_assignment_callback_returns_before_the_claim_has_read_the_state() -> None:
    # aiokafka heartbeats only once the callback returns: a claim reading a large state inside it got the member
    # evicted. The claim goes on in the background; the replica is not settled until it is done.
    gate = asyncio.Event()
    ownership = ScriptedOwnership(gate=gate)
    seat = listener(ownership)
    await seat.on_partitions_revoked([])
    await seat.on_partitions_assigned(assignment(0, 1))
    await ownership.reading.wait()
    assert ownership.owned == set()
    assert not ownership.settled
    gate.set()
    await ownership.owning.wait()
    await seat.stop_claiming()
    assert ownership.owned == {0, 1}
    assert ownership.settled


async def test_a_revocation_while_the_claim_reads_cancels_it_and_nothing_is_left_owned() -> None:
    ownership = ScriptedOwnership(gate=asyncio.Event())  # a restore that never ends
    seat = listener(ownership)
    await seat.on_partitions_revoked([])
    await seat.on_partitions_assigned(assignment(0, 1))
    await ownership.reading.wait()
    await seat.on_partitions_revoked(assignment(0, 1))
    assert not ownership.restoring
    assert ownership.owned == set()
    assert ownership.overlaps == 0
    assert ownership.handed_over == [set(), set()]
    assert seat.unclaimed == frozenset()  # a cancelled claim is no failure to retry


async def test_a_revocation_once_the_claim_owns_waits_for_it_then_hands_over() -> None:
    # Past its restore a claim polls the pairs and may be tombstoning state: it is let finish, not cut short.
    ownership = ScriptedOwnership()
    ownership.finish = asyncio.Event()
    seat = listener(ownership)
    await seat.on_partitions_revoked([])
    await seat.on_partitions_assigned(assignment(0))
    await ownership.owning.wait()
    revoking = asyncio.create_task(seat.on_partitions_revoked(assignment(0)))
    ownership.finish.set()
    await revoking
    assert ownership.completed == 1  # not cancelled
    assert ownership.overlaps == 0
    assert ownership.handed_over == [set(), {0}]
    assert ownership.owned == set()


async def test_a_failed_claim_is_retried_by_the_seat_for_the_same_decision() -> None:
    ownership = ScriptedOwnership(KafkaUnavailable("down"))
    seat = listener(ownership)
    await seat.on_partitions_revoked([])
    await seat.on_partitions_assigned(assignment(1))
    await seat.attention.wait()
    await seat.stop_claiming()
    assert seat.unclaimed == {1}
    await seat.retry()
    assert seat.unclaimed == frozenset()
    assert ownership.owned == {1}


async def test_a_claim_kafka_did_not_answer_is_kept_for_a_retry_then_cleared() -> None:
    ownership = ScriptedOwnership(KafkaUnavailable("down"))
    seat = listener(ownership)
    await seat.claim(frozenset({0, 1}))
    assert seat.unclaimed == {0, 1}
    assert seat.fatal is None
    await seat.claim(seat.unclaimed)
    assert seat.unclaimed == frozenset()
    assert ownership.owned == {0, 1}


async def test_a_claim_no_retry_mends_is_kept_as_the_reason_to_stop() -> None:
    error = StateError("placed by another partition count")
    seat = listener(ScriptedOwnership(error))
    await seat.claim(frozenset({0}))
    assert seat.fatal is error
    assert seat.unclaimed == frozenset()


async def test_a_failed_claim_of_partitions_the_group_moved_meanwhile_is_not_retried() -> None:
    # Retrying it would fence the producers of the replica the group gave them to.
    gate = asyncio.Event()
    seat = listener(ScriptedOwnership(KafkaUnavailable("down"), gate=gate))
    claiming = asyncio.create_task(seat.claim(frozenset({0})))
    await asyncio.sleep(0)
    await seat.on_partitions_revoked([])  # a new rebalance starts while the claim waits on Kafka
    gate.set()
    await claiming
    assert seat.unclaimed == frozenset()


def test_backoff_is_due_at_once_then_waits_longer_after_each_failure_up_to_its_most() -> None:
    backoff = Backoff(first=1.0, most=4.0)
    assert backoff.due()
    delays = []
    for _ in range(4):
        backoff.failed()
        delays.append(backoff.delay)
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert not backoff.due()
    backoff.reset()
    assert backoff.due()

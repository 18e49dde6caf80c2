"""The group's decisions as the replica keeps them: aiokafka swallows what a rebalance callback raises, so a claim
that failed must be remembered (to retry, or to stop for), and forgotten once the group moved the partitions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

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

    async def claim(self, partitions: Iterable[int]) -> None:
        wanted = set(partitions)
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        self.owned |= wanted

    async def hand_over(self, partitions: Iterable[int], grace_seconds: float | None = None) -> None:
        self.owned -= set(partitions)

    def unsettle(self) -> None:
        self.settled = False


def listener(ownership: ScriptedOwnership) -> RebalanceListener:
    return RebalanceListener(cast(Ownership, ownership), cast(Any, None), Metrics(["ats/users"]))


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

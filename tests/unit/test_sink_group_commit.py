"""Group commit: units that arrive while a transaction is in flight share the next one, in order.

The producer is replaced by a hand-written fake (``FakeTransactions``): these tests are about the sink's queue, which
decides what goes into which transaction and who learns what. That real transactions commit what they are given is
the end-to-end and fault tests' business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from relay.errors import KafkaUnavailable
from relay.metrics import Metrics
from relay.sink import MAX_TRANSACTION_MESSAGES, KafkaSink, OutMessage
from tests.unit.support import config_without_kafka


class FakeTransactions(KafkaSink):
    """A sink whose transactions are recorded, and held open until the test lets them end (or fail)."""

    def __init__(self) -> None:
        config = config_without_kafka()
        super().__init__(config, Metrics(config.resources, registry=CollectorRegistry()))
        self.transactions: list[list[bytes]] = []
        self.release: asyncio.Queue[BaseException | None] = asyncio.Queue()
        self._started = asyncio.Event()

    async def until_started(self, count: int) -> None:
        """Wait until ``count`` transactions have started."""
        async with asyncio.timeout(5):
            while len(self.transactions) < count:
                self._started.clear()
                await self._started.wait()

    async def _producer_or_start(self) -> Any:
        return object()

    async def _transaction(self, producer: Any, messages: Sequence[OutMessage]) -> None:
        self.transactions.append([message.key for message in messages])
        self._started.set()
        failure = await self.release.get()
        if failure is not None:
            raise failure

    async def _discard_producer(self, *, abort: bool, timeout: float = 10.0) -> None:
        pass


def unit(name: str, size: int = 1) -> list[OutMessage]:
    return [OutMessage("events", f"{name}.{i}".encode(), b"{}") for i in range(size)]


async def test_units_arriving_during_a_transaction_share_the_next_one_in_order() -> None:
    sink = FakeTransactions()
    first = asyncio.create_task(sink.commit(unit("a")))
    await sink.until_started(1)
    later = [asyncio.create_task(sink.commit(unit(name))) for name in "bcd"]
    await asyncio.sleep(0)
    sink.release.put_nowait(None)
    await first
    await sink.until_started(2)
    sink.release.put_nowait(None)
    await asyncio.gather(*later)
    assert sink.transactions == [[b"a.0"], [b"b.0", b"c.0", b"d.0"]]


async def test_a_failed_transaction_fails_its_units_and_every_unit_waiting_behind_it() -> None:
    # A pair's next page may be waiting already: if it committed after its predecessor failed, the checkpoint would
    # move past events that never reached Kafka.
    sink = FakeTransactions()
    first = asyncio.create_task(sink.commit(unit("a")))
    await sink.until_started(1)
    waiting = [asyncio.create_task(sink.commit(unit(name))) for name in "bc"]
    await asyncio.sleep(0)
    sink.release.put_nowait(KafkaUnavailable("broker gone"))
    results = await asyncio.gather(first, *waiting, return_exceptions=True)
    assert all(isinstance(result, KafkaUnavailable) for result in results)
    assert sink.transactions == [[b"a.0"]]


async def test_a_unit_cancelled_while_waiting_is_never_committed() -> None:
    sink = FakeTransactions()
    first = asyncio.create_task(sink.commit(unit("a")))
    await sink.until_started(1)
    cancelled = asyncio.create_task(sink.commit(unit("b")))
    kept = asyncio.create_task(sink.commit(unit("c")))
    await asyncio.sleep(0)
    cancelled.cancel()
    sink.release.put_nowait(None)
    await first
    await sink.until_started(2)
    sink.release.put_nowait(None)
    await kept
    assert cancelled.cancelled()
    assert sink.transactions == [[b"a.0"], [b"c.0"]]


async def test_cancelling_the_caller_that_runs_a_transaction_tells_the_others_it_was_abandoned() -> None:
    sink = FakeTransactions()
    leader = asyncio.create_task(sink.commit(unit("a")))
    await sink.until_started(1)
    waiting = asyncio.create_task(sink.commit(unit("b")))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    with pytest.raises(KafkaUnavailable, match="shutting down"):
        await waiting


async def test_a_transaction_takes_waiting_units_up_to_the_message_limit_and_always_one() -> None:
    sink = FakeTransactions()
    first = asyncio.create_task(sink.commit(unit("a")))
    await sink.until_started(1)
    half = MAX_TRANSACTION_MESSAGES // 2
    big = [asyncio.create_task(sink.commit(unit(name, half + 1))) for name in "bc"]
    huge = asyncio.create_task(sink.commit(unit("d", MAX_TRANSACTION_MESSAGES + 1)))
    await asyncio.sleep(0)
    for expected in (2, 3, 4):
        sink.release.put_nowait(None)
        await sink.until_started(expected)
    sink.release.put_nowait(None)
    await asyncio.gather(first, *big, huge)
    assert [len(keys) for keys in sink.transactions] == [1, half + 1, half + 1, MAX_TRANSACTION_MESSAGES + 1]

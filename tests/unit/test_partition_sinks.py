"""PartitionSinks.probe: Kafka's reachability asked through one producer at a time, and through every one that found
it unreachable."""

from __future__ import annotations

from typing import Any

from relay.metrics import Metrics
from relay.partition_sinks import PartitionSinks
from tests.unit.support import config_without_kafka


class FakeSink:
    def __init__(self, reachable: bool = True, answers: bool = True) -> None:
        self.reachable = reachable
        self.answers = answers
        self.probes = 0

    async def probe(self, timeout: float = 5.0) -> bool:
        self.probes += 1
        self.reachable = self.answers
        return self.reachable


def sinks_of(fakes: dict[int, FakeSink]) -> PartitionSinks:
    sinks = PartitionSinks(config_without_kafka(), Metrics())
    sinks._sinks = fakes  # type: ignore[assignment]  # the producers of the owned partitions, faked
    return sinks


async def test_a_probe_asks_through_one_reachable_producer_in_turn() -> None:
    fakes = {p: FakeSink() for p in range(6)}
    sinks = sinks_of(fakes)
    for _ in range(12):
        assert await sinks.probe() is True
    assert [fake.probes for fake in fakes.values()] == [2] * 6  # each in turn, one per probe
    assert sinks.reachable


async def test_a_probe_asks_again_through_every_producer_that_found_kafka_unreachable() -> None:
    fakes: dict[int, Any] = {0: FakeSink(), 1: FakeSink(reachable=False), 2: FakeSink(reachable=False)}
    sinks = sinks_of(fakes)
    assert not sinks.reachable
    assert await sinks.probe() is True
    assert (fakes[0].probes, fakes[1].probes, fakes[2].probes) == (1, 1, 1)
    assert sinks.reachable


async def test_kafka_gone_makes_the_relay_unready_at_the_first_probe() -> None:
    fakes = {p: FakeSink(answers=False) for p in range(3)}
    sinks = sinks_of(fakes)
    assert await sinks.probe() is False
    assert not sinks.reachable
    assert sum(fake.probes for fake in fakes.values()) == 1


async def test_owning_nothing_probes_nothing() -> None:
    assert await sinks_of({}).probe() is True

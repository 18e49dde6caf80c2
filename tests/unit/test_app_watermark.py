"""relay_watermark_timestamp_seconds is the oldest watermark of a resource's pairs, whichever polled last; a resource
only the registry names (an integration's own --resources) gets it, and its other series, too."""

from __future__ import annotations

from relay.app import Relay
from relay.registry import EMPTY, RegistryEntry
from relay.registry import add as add_entry
from relay.state import Checkpoint
from tests.unit.support import config_without_kafka

USERS = "ats/users"


def watermark(relay: Relay) -> float | None:
    return relay.metrics.registry.get_sample_value("relay_watermark_timestamp_seconds", {"resource": USERS})


async def test_the_gauge_is_the_oldest_watermark_of_the_resource_not_the_last_one_set() -> None:
    relay = Relay(config_without_kafka(RELAY_INTEGRATIONS="acme,globex,initech", RELAY_RESOURCES=USERS))
    try:
        assert watermark(relay) == 0.0  # none yet: the alert's "> 0" guard keeps a first snapshot from looking lagged
        relay.store.set_checkpoint("acme", USERS, Checkpoint(watermark_ms=1_700_000_000_000, snapshot_done=True))
        relay.store.set_checkpoint("globex", USERS, Checkpoint(watermark_ms=1_600_000_000_000, snapshot_done=True))
        relay.store.set_checkpoint("acme", USERS, Checkpoint(watermark_ms=1_800_000_000_000, snapshot_done=True))
        # acme's poll finished last; globex, stuck for years, is what the lag alert must see.
        assert watermark(relay) == 1_600_000_000.0
    finally:
        await relay.close()


JOBS = "ats/jobs"


class Record:
    """A registry topic record as the fold reads it."""

    def __init__(self, offset: int, entry: RegistryEntry) -> None:
        self.partition, self.offset, self.key, self.value = 0, offset, entry.key(), entry.encode()


def sample(relay: Relay, name: str, **labels: str) -> float | None:
    return relay.metrics.registry.get_sample_value(name, labels)


async def test_a_resource_only_the_registry_names_gets_its_series_and_its_watermark() -> None:
    relay = Relay(config_without_kafka(RELAY_RESOURCES=USERS))
    try:
        assert sample(relay, "relay_watermark_timestamp_seconds", resource=JOBS) is None
        relay.store.set_checkpoint("globex", JOBS, Checkpoint(watermark_ms=1_700_000_000_000, snapshot_done=True))
        entry = add_entry(EMPTY, "globex", resources=(JOBS,), at="2026-12-01T00:00:00.000Z", by="test")
        assert entry is not None
        await relay.apply_registry(EMPTY.fold([Record(0, entry)])[0])
        # Pre-initialised at 0 like those of RELAY_RESOURCES, and the watermark read from what is remembered.
        assert sample(relay, "relay_polls_total", resource=JOBS, kind="snapshot", outcome="success") == 0.0
        assert sample(relay, "relay_events_published_total", resource=JOBS, type="created") == 0.0
        assert sample(relay, "relay_entities_remembered", resource=JOBS) == 0.0
        assert sample(relay, "relay_watermark_timestamp_seconds", resource=JOBS) == 1_700_000_000.0
        # Counted once, whatever the registry applied next says.
        await relay.apply_registry(EMPTY.fold([Record(0, entry)])[0])
        assert relay.metrics.resources == (USERS, JOBS)
    finally:
        await relay.close()

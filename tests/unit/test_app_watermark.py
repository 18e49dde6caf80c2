"""relay_watermark_timestamp_seconds is the oldest watermark of a resource's pairs, whichever polled last."""

from __future__ import annotations

from relay.app import Relay
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

"""Every response body matches the spec, and every record carries every field of its schema."""

from __future__ import annotations

import re

import pytest
from simkit import ACME, GLOBEX, RESOURCES, Client, Spec

from relay.simulator import Simulator
from relay.simulator.dice import BASE58
from relay.simulator.model import Collection
from relay.simulator.records import RESOURCES as SPECS
from relay.simulator.records import RecordSeed

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
KOMBO_ID = re.compile(f"^[{BASE58.decode()}]{{24}}$")
TIMESTAMP_FIELDS = ("changed_at", "remote_deleted_at", "remote_created_at", "remote_updated_at")


@pytest.mark.parametrize("resource", RESOURCES)
async def test_a_page_of_each_resource_matches_its_schema_with_every_field(
    sim: Simulator, client: Client, resource: str
) -> None:
    sim.add_integration("workday:initech", sizes={resource: 40}, users=40)
    reply = await client.get(resource, {"page_size": "40"}, integration="workday:initech")  # validated by get()
    assert reply.status == 200
    assert len(reply.results) == 40
    for record in reply.results:
        assert KOMBO_ID.match(record["id"]), record["id"]
        assert record["remote_id"] != record["id"]
        for name in TIMESTAMP_FIELDS:
            if record.get(name) is not None:
                assert TIMESTAMP.match(record[name]), (name, record[name])


@pytest.mark.parametrize("resource", RESOURCES)
def test_mutated_records_keep_every_field(sim: Simulator, spec: Spec, resource: str) -> None:
    record = sim.create(ACME, resource)
    sim.update(ACME, resource, record["id"])
    sim.change_nested(ACME, resource, record["id"])
    sim.delete(ACME, resource, record["id"])
    after = sim.get(ACME, resource, record["id"])
    body = {"status": "success", "data": {"next": None, "results": [after]}}
    spec.check(resource, 200, body)
    assert after is not None
    assert TIMESTAMP.match(after["remote_deleted_at"])


def test_users_carry_status_remote_data_and_system_roles(sim: Simulator) -> None:
    users = list(sim.records(ACME, "ats/users"))
    assert {u["status"] for u in users} == {"ACTIVE", "INACTIVE"}
    assert all(isinstance(u["remote_data"], dict) for u in users)
    assert any(u["system_roles"] for u in users)
    assert len({u["email"] for u in users}) == len(users)


@pytest.mark.parametrize("resource", RESOURCES)
def test_seeded_index_keys_agree_with_the_generated_records(resource: str) -> None:
    sim = Simulator(integrations=[ACME], users=30, sizes={resource: 30})
    collection: Collection = sim.collection(ACME, resource)
    spec = SPECS[resource]
    for entry in collection.entries():
        seed = RecordSeed(1, ACME, resource, entry.number, entry.modified_ms, collection.population)
        record = collection.record(entry)
        keys = spec.seed_index_keys(seed)
        indexed = {name: f for name, f in spec.filters.items() if f.indexed}
        assert set(keys) == set(indexed)
        for name, f in indexed.items():
            assert sorted(f.keys(record)) == sorted(keys[name])


def test_same_seed_same_data_other_seed_other_data() -> None:
    def first_users(seed: int) -> list[dict[str, object]]:
        sim = Simulator(integrations=[ACME, GLOBEX], users=5, seed=seed)
        return [{k: v for k, v in u.items() if k != "changed_at"} for u in sim.records(ACME, "ats/users")]

    assert first_users(7) == first_users(7)
    assert first_users(7) != first_users(8)
    ids = [u["id"] for u in first_users(7)]
    assert len(set(ids)) == len(ids)


async def test_error_bodies_match_the_error_envelope(client: Client) -> None:
    for resource in RESOURCES:
        reply = await client.get(resource, api_key="wrong")  # validated against ErrorResponseATS / ...HRIS
        assert reply.status == 401
        assert set(reply.json["error"]) == {"code", "title", "message", "log_url"}

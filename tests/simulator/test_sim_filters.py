"""updated_after (nested-only changes included), include_deleted, hard delete, restore, and the filters."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
from simkit import ACME, USERS, Client

from relay.simulator import ManualClock, Simulator
from relay.simulator.clock import parse_timestamp_ms, to_ms
from relay.timestamps import format_timestamp_ms as iso_ms

Serve = Callable[[Simulator], AbstractAsyncContextManager[Client]]


def _ids(records: list[dict[str, object]]) -> list[object]:
    return [r["id"] for r in records]


async def test_updated_after_is_inclusive_and_sees_nested_only_changes(
    sim: Simulator, clock: ManualClock, client: Client
) -> None:
    ids = [r["id"] for r in sim.records(ACME, USERS)]
    clock.advance(60)
    mark = iso_ms(sim.now_ms())
    before = sim.get(ACME, USERS, ids[5])
    assert before is not None
    sim.change_nested(ACME, USERS, ids[5])  # modified exactly at `mark`
    clock.advance(1)
    sim.update(ACME, USERS, ids[7], {"first_name": "Changed"})
    changed = await client.all_pages(USERS, {"updated_after": mark})
    assert _ids(changed) == [ids[5], ids[7]]
    nested = changed[0]
    assert nested["changed_at"] == before["changed_at"]  # changed_at did not move ...
    assert nested["system_roles"] != before["system_roles"]  # ... yet the record matches updated_after
    assert changed[1]["changed_at"] == iso_ms(sim.now_ms())
    one_ms_later = iso_ms(parse_timestamp_ms(mark) + 1)
    assert _ids(await client.all_pages(USERS, {"updated_after": one_ms_later})) == [ids[7]]


async def test_every_modification_time_is_distinct_even_with_a_frozen_clock(sim: Simulator, client: Client) -> None:
    ids = [r["id"] for r in sim.records(ACME, USERS)]
    for ident in ids[:5]:
        sim.update(ACME, USERS, ident, {"last_name": "Same Instant"})
    stamps = [m.time for m in sim.mutations]
    assert len(set(stamps)) == 5
    assert stamps == sorted(stamps)
    for i, mutation in enumerate(sim.mutations):
        page = await client.all_pages(USERS, {"updated_after": iso_ms(to_ms(mutation.time))})
        assert _ids(page) == ids[i:5]


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        ("2025-03-10", "2025-03-10T00:00:00.000Z"),
        ("2025-03-10T11:00:00", "2025-03-10T11:00:00.000Z"),
        ("2025-03-10T11:00:00Z", "2025-03-10T11:00:00.000Z"),
        ("2025-03-10T11:00:00.5Z", "2025-03-10T11:00:00.500Z"),
        ("2025-03-10T11:00:00.1234Z", "2025-03-10T11:00:00.124Z"),  # a record at .123 is not at or after .1234
    ],
)
def test_updated_after_formats(value: str, expected_ms: str) -> None:
    assert iso_ms(parse_timestamp_ms(value)) == expected_ms


async def test_updated_after_date_only_and_future(sim: Simulator, client: Client) -> None:
    assert len(await client.all_pages(USERS, {"updated_after": "2000-01-01"})) == 60
    assert await client.all_pages(USERS, {"updated_after": "2999-01-01"}) == []


@pytest.mark.parametrize(
    "bad", ["yesterday", "2025-13-01", "2025-02-30", "2025-03-10T25:00:00Z", "2025-03-10 11:00:00", "1741600000"]
)
async def test_bad_updated_after_is_input_invalid(client: Client, bad: str) -> None:
    reply = await client.get(USERS, {"updated_after": bad})
    assert reply.status == 400
    assert reply.code == "PLATFORM.INPUT_INVALID"


async def test_deleted_records_are_hidden_unless_include_deleted(
    sim: Simulator, clock: ManualClock, client: Client
) -> None:
    ident = next(iter(sim.records(ACME, USERS)))["id"]
    clock.advance(5)
    deleted = sim.delete(ACME, USERS, ident)
    assert deleted["remote_deleted_at"] == deleted["changed_at"] == iso_ms(sim.now_ms())
    assert ident not in _ids(await client.all_pages(USERS))
    assert ident not in _ids(await client.all_pages(USERS, {"include_deleted": "false"}))
    everything = await client.all_pages(USERS, {"include_deleted": "true"})
    assert ident in _ids(everything)
    assert len(everything) == 60
    since = await client.all_pages(USERS, {"include_deleted": "true", "updated_after": deleted["changed_at"]})
    assert since == [deleted]


async def test_a_restored_record_comes_back(sim: Simulator, clock: ManualClock, client: Client) -> None:
    ident = next(iter(sim.records(ACME, USERS)))["id"]
    sim.delete(ACME, USERS, ident)
    clock.advance(5)
    restored = sim.restore(ACME, USERS, ident)
    assert restored["remote_deleted_at"] is None
    assert restored["changed_at"] == iso_ms(sim.now_ms())
    assert await client.all_pages(USERS, {"updated_after": restored["changed_at"]}) == [restored]


async def test_a_hard_deleted_record_vanishes_outright(sim: Simulator, client: Client) -> None:
    ids = [r["id"] for r in sim.records(ACME, USERS)]
    sim.hard_delete(ACME, USERS, ids[3])
    sim.delete(ACME, USERS, ids[4])
    sim.hard_delete(ACME, USERS, ids[4])  # a soft-deleted record can vanish too
    everything = await client.all_pages(USERS, {"include_deleted": "true"})
    assert ids[3] not in _ids(everything)
    assert ids[4] not in _ids(everything)
    assert (await client.get(USERS, {"ids": ids[3], "include_deleted": "true"})).status == 404  # unknown now
    assert sim.get(ACME, USERS, ids[3]) is None


async def test_ids_remote_ids_and_emails_or_within_and_across(sim: Simulator, client: Client) -> None:
    users = list(sim.records(ACME, USERS))
    a, b, c = users[1], users[2], users[3]
    assert _ids((await client.get(USERS, {"ids": f"{a['id']},{b['id']}"})).results) == [a["id"], b["id"]]
    remote = await client.get(USERS, {"remote_ids": f"{a['remote_id']},{c['remote_id']}"})
    assert _ids(remote.results) == [a["id"], c["id"]]
    emails = await client.get(USERS, {"emails": f"{b['email'].upper()}, {c['email']}"})  # case-insensitive
    assert _ids(emails.results) == [b["id"], c["id"]]
    both = await client.get(USERS, {"ids": f"{a['id']},{b['id']}", "emails": f"{b['email']},{c['email']}"})
    assert _ids(both.results) == [b["id"]]  # AND across parameters
    unknown = await client.get(USERS, {"ids": f"{a['id']},222k7eCGyUdgt2JWZDNnkDs3"})
    assert unknown.failure == (404, "PLATFORM.INPUT_INVALID")  # unknown, even next to a known one
    assert unknown.json["error"]["message"] == "No ats/users with the ID 222k7eCGyUdgt2JWZDNnkDs3."
    assert (await client.get(USERS, {"ids": "not-an-id"})).failure == (400, "PLATFORM.INPUT_INVALID")
    assert len((await client.get(USERS, {"ids": "", "page_size": "250"})).results) == 60  # blank: no filter
    deleted = users[5]
    sim.delete(ACME, USERS, deleted["id"])
    hidden = await client.get(USERS, {"ids": deleted["id"]})
    assert (hidden.status, hidden.results) == (200, [])  # known but soft-deleted: hidden, not unknown


async def test_filters_follow_updates_and_deletes(sim: Simulator, client: Client) -> None:
    user = next(iter(sim.records(ACME, USERS)))
    sim.update(ACME, USERS, user["id"], {"email": "renamed@example.com"})
    assert (await client.get(USERS, {"emails": user["email"]})).results == []
    assert _ids((await client.get(USERS, {"emails": "Renamed@Example.com"})).results) == [user["id"]]
    sim.delete(ACME, USERS, user["id"])
    assert (await client.get(USERS, {"emails": "renamed@example.com"})).results == []
    deleted = await client.get(USERS, {"emails": "renamed@example.com", "include_deleted": "true"})
    assert _ids(deleted.results) == [user["id"]]


async def test_unknown_repeated_or_invalid_parameters_are_input_invalid(client: Client) -> None:
    for params in (
        {"updatedAfter": "2024-01-01"},
        {"include_deleted": "yes"},
        {"ignore_unsupported_filters": "1"},
        [("ids", "a"), ("ids", "b")],
    ):
        reply = await client.get(USERS, params)
        assert reply.failure == (400, "PLATFORM.INPUT_INVALID"), params
    assert (await client.get(USERS, {"ignore_unsupported_filters": "true"})).status == 200


@pytest.fixture
def world() -> Simulator:
    return Simulator(
        api_key="test-key",
        integrations=[ACME],
        users=10,
        sizes={"ats/candidates": 30, "ats/jobs": 30, "hris/employees": 30},
        clock=ManualClock(),
    )


async def test_resource_specific_filters(world: Simulator, serve: Serve) -> None:
    jobs = list(world.records(ACME, "ats/jobs"))
    word = jobs[0]["name"].split()[0]
    candidates = list(world.records(ACME, "ats/candidates"))
    employees = list(world.records(ACME, "hris/employees"))
    world_checks = [
        ("ats/jobs", {"statuses": "OPEN,DRAFT"}, [j for j in jobs if j["status"] in ("OPEN", "DRAFT")]),
        ("ats/jobs", {"status": "CLOSED"}, [j for j in jobs if j["status"] == "CLOSED"]),
        ("ats/jobs", {"job_codes": jobs[2]["job_code"]}, [jobs[2]]),
        ("ats/jobs", {"visibilities": "PUBLIC"}, [j for j in jobs if j["visibility"] == "PUBLIC"]),
        ("ats/jobs", {"employment_types": "FULL_TIME"}, [j for j in jobs if j["employment_type"] == "FULL_TIME"]),
        ("ats/jobs", {"name_contains": word.lower()}, [j for j in jobs if word in j["name"]]),
        (
            "ats/jobs",
            {"remote_created_after": jobs[0]["remote_created_at"]},
            [j for j in jobs if j["remote_created_at"] >= jobs[0]["remote_created_at"]],
        ),
        ("ats/candidates", {"email": candidates[4]["email_addresses"][0]["email_address"].upper()}, [candidates[4]]),
        ("ats/candidates", {"first_name": candidates[1]["first_name"].lower()},
         [c for c in candidates if c["first_name"] == candidates[1]["first_name"]]),
        ("ats/candidates", {"job_ids": candidates[0]["applications"][0]["job"]["id"]},
         [c for c in candidates if any(a["job"]["id"] == candidates[0]["applications"][0]["job"]["id"]
                                       for a in c["applications"])]),
        ("hris/employees", {"work_emails": employees[3]["work_email"]}, [employees[3]]),
        ("hris/employees", {"personal_emails": employees[5]["personal_email"]}, [employees[5]]),
        ("hris/employees", {"employment_statuses": "ACTIVE,LEAVE"},
         [e for e in employees if e["employment_status"] in ("ACTIVE", "LEAVE")]),
        ("hris/employees", {"legal_entity_ids": employees[0]["legal_entity_id"]},
         [e for e in employees if e["legal_entity_id"] == employees[0]["legal_entity_id"]]),
        ("hris/employees", {"custom_fields": '{"shirt_size": "M"}'},
         [e for e in employees if e["custom_fields"]["shirt_size"] == "M"]),
    ]  # fmt: skip
    async with serve(world) as world_client:
        for resource, params, expected in world_checks:
            got = await world_client.all_pages(resource, {**params, "page_size": "7"})
            assert _ids(got) == _ids(expected), (resource, params)
            assert expected, (resource, params)
        for resource, params in (
            ("ats/jobs", {"statuses": "OPEN,GONE"}),
            ("hris/employees", {"employment_status": "RETIRED"}),
            ("hris/employees", {"custom_fields": "{not json"}),
            ("ats/jobs", {"remote_created_after": "soon"}),
        ):
            reply = await world_client.get(resource, params)
            assert reply.failure == (400, "PLATFORM.INPUT_INVALID"), params

"""Pagination: complete and duplicate-free, opaque cursors that carry no filters, page_size bounds."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simkit import ACME, GLOBEX, USERS, Client

from relay.simulator import ManualClock, Simulator
from relay.simulator.cursor import CursorCodec, InvalidCursor
from relay.simulator.listing import parse_query, run_query


@pytest.mark.parametrize("page_size", ["1", "7", "250"])
async def test_pages_cover_every_record_exactly_once(sim: Simulator, client: Client, page_size: str) -> None:
    records = await client.all_pages(USERS, {"page_size": page_size})
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 60
    assert set(ids) == {r["id"] for r in sim.records(ACME, USERS)}


async def test_default_page_size_is_100_and_250_is_the_maximum(sim: Simulator, client: Client) -> None:
    sim.seed(ACME, USERS, 240)
    assert len((await client.get(USERS)).results) == 100
    assert len((await client.get(USERS, {"page_size": "250"})).results) == 250
    last = await client.get(USERS, {"page_size": "300"}, check=False)
    assert last.status == 400


@pytest.mark.parametrize("bad", ["0", "251", "-1", "1.5", "ten", "", " 5", "٣"])
async def test_page_size_out_of_bounds_is_input_invalid(client: Client, bad: str) -> None:
    reply = await client.get(USERS, {"page_size": bad})
    assert reply.status == 400
    assert reply.code == "PLATFORM.INPUT_INVALID"


async def test_the_last_page_has_no_next_and_results_follow_modification_order(client: Client) -> None:
    first = await client.get(USERS, {"page_size": "59"})
    assert first.next is not None
    second = await client.get(USERS, {"page_size": "59", "cursor": first.next})
    assert len(second.results) == 1
    assert second.next is None
    stamps = [r["changed_at"] for r in first.results + second.results]
    assert stamps == sorted(stamps)


async def test_a_cursor_carries_no_filters(sim: Simulator, client: Client) -> None:
    """The cursor is a position only: a client that drops the filters on page 2 gets unfiltered records."""
    ids = [r["id"] for r in sim.records(ACME, USERS)]
    wanted = ",".join(ids[:4])
    first = await client.get(USERS, {"ids": wanted, "page_size": "2"})
    assert [r["id"] for r in first.results] == ids[:2]
    assert first.next is not None
    with_filters = await client.get(USERS, {"ids": wanted, "page_size": "2", "cursor": first.next})
    assert [r["id"] for r in with_filters.results] == ids[2:4]
    without = await client.get(USERS, {"page_size": "2", "cursor": first.next})
    assert [r["id"] for r in without.results] == ids[2:4]  # the same position ...
    without = await client.get(USERS, {"page_size": "5", "cursor": first.next})
    assert [r["id"] for r in without.results] == ids[2:7]  # ... but nothing filters what follows it
    decoded = base64.urlsafe_b64decode(first.next + "=" * (-len(first.next) % 4))
    assert set(orjson.loads(decoded)) == {"v", "p", "m"}


def _tampered(cursor: str) -> str:
    payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    payload["p"] += 1
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


async def test_invalid_cursors_are_input_invalid(client: Client) -> None:
    good = (await client.get(USERS, {"page_size": "1"})).next
    assert good is not None
    other_integration = (await client.get(USERS, {"page_size": "1"}, integration=GLOBEX)).next
    assert other_integration is not None
    for bad in ["garbage", "eyJ2IjoxfQ", good[:-3], _tampered(good), other_integration, "%%%", "e30"]:
        reply = await client.get(USERS, {"cursor": bad})
        assert reply.status == 400, bad
        assert reply.code == "PLATFORM.INPUT_INVALID"
    other_resource = await client.get("ats/jobs", {"cursor": good})
    assert other_resource.status == 400


async def test_records_changed_while_paging_are_not_lost(sim: Simulator, client: Client) -> None:
    ids = [r["id"] for r in sim.records(ACME, USERS)]
    first = await client.get(USERS, {"page_size": "20"})
    sim.update(ACME, USERS, ids[40], {"first_name": "Moved"})  # not served yet: moves behind the cursor
    sim.update(ACME, USERS, ids[0], {"first_name": "Again"})  # served already: served again at the end
    rest: list[dict[str, object]] = []
    cursor = first.next
    while cursor:
        page = await client.get(USERS, {"page_size": "20", "cursor": cursor})
        rest += page.results
        cursor = page.next
    seen = [r["id"] for r in first.results + rest]
    assert set(seen) == set(ids)
    assert seen[-2:] == [ids[40], ids[0]]


def test_cursor_codec_round_trip_and_rejection() -> None:
    codec = CursorCodec(b"secret")
    token = codec.encode("a|ats/users", 12345)
    assert codec.decode("a|ats/users", token) == 12345
    with pytest.raises(InvalidCursor):
        codec.decode("b|ats/users", token)
    with pytest.raises(InvalidCursor):
        CursorCodec(b"other").decode("a|ats/users", token)


@settings(max_examples=40, deadline=None)
@given(
    operations=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10_000)), max_size=60),
    page_size=st.integers(1, 30),
    include_deleted=st.booleans(),
)
def test_paging_after_any_mutations_returns_exactly_the_visible_records(
    operations: list[tuple[int, int]], page_size: int, include_deleted: bool
) -> None:
    """Whatever mutations happened before, paging (nothing changing meanwhile) yields each visible record once."""
    sim = Simulator(integrations=[ACME], users=25, clock=ManualClock())
    for kind, pick in operations:
        entries = list(sim.collection(ACME, USERS).entries())
        entry = entries[pick % len(entries)] if entries else None
        if kind == 0 or entry is None:
            sim.create(ACME, USERS)
        elif kind == 1:
            sim.update(ACME, USERS, entry.id)
        elif kind == 2:
            sim.change_nested(ACME, USERS, entry.id)
        elif kind == 3 and not entry.deleted:
            sim.delete(ACME, USERS, entry.id)
        elif kind == 4 and entry.deleted:
            sim.restore(ACME, USERS, entry.id)
        elif kind == 5:
            sim.hard_delete(ACME, USERS, entry.id)
    collection = sim.collection(ACME, USERS)
    codec = CursorCodec(b"k")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = [("page_size", str(page_size)), ("include_deleted", str(include_deleted).lower())]
        query = parse_query(collection, params + ([("cursor", cursor)] if cursor else []), codec)
        page, cursor = run_query(collection, query, codec)
        seen += [r["id"] for r in page]
        if cursor is None:
            break
    expected = [r["id"] for r in sim.records(ACME, USERS, include_deleted=include_deleted)]
    assert seen == expected

"""A poll's place under RELAY_MAX_CONCURRENT_POLLS, lent to other polls while it only waits."""

from __future__ import annotations

import asyncio

import pytest

from relay.slots import Slot, current_slot, sleep_without_slot
from tests.unit.support import quiescent


async def hold(
    slot: Slot, body: asyncio.Event, done: list[str], name: str, entered: asyncio.Event | None = None
) -> None:
    async with slot.held():
        current_slot.set(slot)
        if entered is not None:
            entered.set()
        await body.wait()
        done.append(name)


async def wait_on(event: asyncio.Event) -> None:
    """A sleep that lasts until ``event`` is set (the seconds asked for are ignored)."""
    await event.wait()


async def test_a_poll_that_waits_lends_its_place_and_takes_it_back_after() -> None:
    places = asyncio.Semaphore(1)
    first, second = Slot(places), Slot(places)
    waited, second_body = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def first_poll() -> None:
        async with first.held():
            current_slot.set(first)
            await sleep_without_slot(lambda _: wait_on(waited), 30)
            order.append("first resumed")

    polling = asyncio.create_task(first_poll())
    await quiescent()
    second_in = asyncio.Event()
    other = asyncio.create_task(hold(second, second_body, order, "second", second_in))
    await quiescent()
    assert second_in.is_set()  # the second poll got the place the first lent while it waits
    waited.set()  # the first is done waiting, but the place is the second's now: it waits its turn
    await quiescent()
    assert order == []
    second_body.set()
    await asyncio.wait_for(asyncio.gather(polling, other), 10)
    assert order == ["second", "first resumed"]
    assert not places.locked()  # every place given back


async def test_two_tasks_of_one_poll_waiting_at_once_lend_one_place_and_take_one_back() -> None:
    places = asyncio.Semaphore(2)
    slot = Slot(places)
    a, b = asyncio.Event(), asyncio.Event()
    async with slot.held():
        current_slot.set(slot)
        waits = [
            asyncio.create_task(sleep_without_slot(lambda _: wait_on(a), 1)),
            asyncio.create_task(sleep_without_slot(lambda _: wait_on(b), 1)),
        ]
        await quiescent()
        assert places._value == 2  # lent once, not twice
        a.set()
        await quiescent()
        assert places._value == 2  # one task still waits: the place stays lent
        b.set()
        await asyncio.gather(*waits)
        assert places._value == 1  # taken back once
    assert places._value == 2


@pytest.mark.parametrize("cancel_while", ["waiting", "taking_back"])
async def test_a_poll_cancelled_around_a_wait_gives_back_exactly_its_place(cancel_while: str) -> None:
    places = asyncio.Semaphore(1)
    slot, blocker = Slot(places), Slot(places)
    never, released = asyncio.Event(), asyncio.Event()

    async def poll() -> None:
        async with slot.held():
            current_slot.set(slot)
            await sleep_without_slot(lambda _: wait_on(never if cancel_while == "waiting" else released), 1)

    polling = asyncio.create_task(poll())
    await quiescent()
    holding = asyncio.create_task(hold(blocker, asyncio.Event(), [], "blocker"))  # takes the lent place
    await quiescent()
    if cancel_while == "taking_back":
        released.set()  # the wait ends, and the poll queues for its place behind the blocker
        await quiescent()
    polling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await polling
    holding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holding
    assert places._value == 1  # no place lost, none made up


async def test_outside_a_poll_a_wait_is_a_plain_sleep() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    await sleep_without_slot(sleep, 2.5)
    assert slept == [2.5]

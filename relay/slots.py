"""A poll's place under ``RELAY_MAX_CONCURRENT_POLLS``, and lending it back while the poll only waits.

Rule: the one count of polls at once lives here, with the one exception to it: a poll that sleeps because the source
asked it to wait (a rate limit, a back-off before a retry) holds no place meanwhile, so that one integration's wait
never keeps another from polling. The scheduler takes a :class:`Slot` for each poll and makes it the current one of
the pair's task; the source client, shared by every pair, lends the current slot back around its sleeps
(:func:`sleep_without_slot`), without knowing the scheduler.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar


class Slot:
    """One poll's place, taken from ``places``. A poll may have several tasks (a page fetched ahead while another is
    diffed): the place is given back when the first of them starts to wait and taken again when the last one is
    done waiting. Released or not, a place is given back to ``places`` once, by :meth:`held`'s end."""

    __slots__ = ("_ended", "_held", "_places", "_retaking", "_waiting")

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self._held = False
        self._ended = False  # the poll is over: a task of it that is still waiting must not take a place
        self._waiting = 0  # tasks of the poll sleeping without the place
        # Made by the first wait only: most polls never lend their place, and every poll of a fleet makes a slot.
        self._retaking: asyncio.Lock | None = None

    def held(self) -> Slot:
        """Hold the place for the whole poll (less its waits): ``async with slot.held():``. The slot is its own
        context manager, not a generator's (:func:`contextlib.asynccontextmanager`), since every poll takes one."""
        return self

    async def __aenter__(self) -> None:
        await self._places.acquire()
        self._held = True

    async def __aexit__(self, *exc_info: object) -> None:
        self._ended = True
        if self._held:
            self._held = False
            self._places.release()

    @asynccontextmanager
    async def lent(self) -> AsyncIterator[None]:
        """Give the place back while the caller waits, and take it again (in turn with other polls) afterwards."""
        self._waiting += 1
        if self._held and self._waiting == 1:
            self._held = False
            self._places.release()
        try:
            yield
        except BaseException:  # cancelled: the poll is ending, and needs no place to end
            self._waiting -= 1
            raise
        self._waiting -= 1
        if self._waiting == 0:
            await self._retake()

    async def _retake(self) -> None:
        if self._retaking is None:
            self._retaking = asyncio.Lock()
        async with self._retaking:  # two tasks of the poll done waiting take one place, not two
            if not self._held and not self._ended and self._waiting == 0:
                await self._places.acquire()
                self._held = True


current_slot: ContextVar[Slot | None] = ContextVar("current_slot", default=None)


async def sleep_without_slot(sleep: Callable[[float], Awaitable[None]], seconds: float) -> None:
    """``sleep(seconds)``, lending the current poll's place meanwhile (when the caller runs inside a poll)."""
    slot = current_slot.get()
    if slot is None:
        await sleep(seconds)
        return
    async with slot.lent():
        await sleep(seconds)

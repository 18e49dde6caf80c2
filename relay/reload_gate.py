"""The gate that keeps polls out while the state is read back from the state topic.

Rule: after a commit whose outcome is unknown, memory may be behind Kafka (the transaction may have committed and only
its answer been lost), so no poll may start from memory until every poll in flight has ended and the state was read
back. That rule, and only that, lives here: :class:`ReloadGate` wraps the operation that polls a pair and adds the
rule to it, leaving the operation and its caller (the scheduler) unaware of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

from relay.errors import KafkaUnavailable

StateReload = Callable[[], Awaitable[None]]
PollPair = Callable[..., Awaitable[object]]  # (integration, resource, published, kind=None)


class ReloadGate:
    """``poll`` with the reload rule: callable like it, and the scheduler calls it instead."""

    def __init__(
        self,
        poll: PollPair,
        reload_state: StateReload,
        reset: Callable[[str, str], Awaitable[object]] | None = None,
    ) -> None:
        self._poll = poll
        self._reset = reset
        self._reload_state = reload_state
        self._state_suspect = False
        self._active_polls = 0
        self._draining = 0  # polls waiting for the polls in flight to end, to read the state back
        self._gate = asyncio.Condition()

    async def __call__(
        self, integration: str, resource: str, published: Callable[[int], None], /, *kind: str
    ) -> object:
        """Poll the pair (as an operator's command asks, given its ``kind``; ``"reset"`` forgets the pair: see
        :meth:`relay.pipeline.Pipeline.reset`); return what the operation returned."""
        await self._enter()
        try:
            if not kind:
                return await self._poll(integration, resource, published)
            if kind[0] == "reset" and self._reset is not None:
                return await self._reset(integration, resource)
            return await self._poll(integration, resource, published, kind[0])
        except KafkaUnavailable:
            self._state_suspect = True  # the commit may have happened: read the state back before the next poll
            raise
        finally:
            await self._leave()

    async def _enter(self) -> None:
        if not self._state_suspect and not self._gate.locked():
            self._active_polls += 1  # no reload pending or running: nothing to wait for, so no lock to take
            return
        async with self._gate:
            if self._state_suspect:
                self._draining += 1
                try:
                    await self._gate.wait_for(lambda: self._active_polls == 0)
                finally:
                    self._draining -= 1
                await self._read_back()
                self._state_suspect = False
            self._active_polls += 1

    async def _read_back(self) -> None:
        try:
            await self._reload_state()
        except (OSError, KafkaError) as error:  # Kafka is still away: the next poll tries again
            raise KafkaUnavailable(str(error)) from error

    async def _leave(self) -> None:
        self._active_polls -= 1
        if self._draining:  # a poll waits for the last one in flight to end (even once the state was read back)
            async with self._gate:
                self._gate.notify_all()

"""A steady churn of random mutations: what makes the simulator feel like a live ATS/HRIS.

``sim.start_churn(rate=5.0)`` runs :meth:`Simulator.random_mutation` ``rate`` times per second on average, as a task
of the running event loop, until ``await churn.stop()``. The mix of kinds is ``model.CHURN_WEIGHTS`` (creates,
own-field updates, nested-only changes, soft deletes, restores, hard deletes). The choices come from the simulator's
seed, so two runs with the same seed make the same sequence of changes (their timing depends on the loop).

Pacing is by count, not by sleeping ``1/rate`` per mutation: each tick performs however many mutations are due
since the churn started, so high rates are met with few wake-ups, and a slow tick does not lower the rate.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from relay.tasks import cancel_and_wait

TICK_SECONDS = 0.05
MAX_BEHIND = 1000  # mutations; a churn further behind than this (the loop was blocked) skips ahead instead


class Mutator(Protocol):
    """What a churn drives: the :class:`~relay.simulator.model.Simulator`, which imports this module."""

    def random_mutation(self) -> object | None: ...


class Churn:
    def __init__(self, sim: Mutator, rate: float) -> None:
        if rate < 0:
            raise ValueError("the churn rate must not be negative")
        self._sim = sim
        self._rate = rate
        self._task: asyncio.Task[None] | None = None
        self._restart_pacing = True
        self.performed = 0

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        if value < 0:
            raise ValueError("the churn rate must not be negative")
        self._rate = value
        self._restart_pacing = True

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="relay-simulator-churn")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def step(self) -> None:
        """One random mutation, now."""
        if self._sim.random_mutation() is not None:
            self.performed += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started, done = loop.time(), 0
        while True:
            if self._restart_pacing:
                started, done, self._restart_pacing = loop.time(), 0, False
            due = int((loop.time() - started) * self._rate) - done
            if due > MAX_BEHIND:
                done += due - MAX_BEHIND
                due = MAX_BEHIND
            for _ in range(due):
                self.step()
            done += due
            wait = TICK_SECONDS if self._rate <= 0 else min(TICK_SECONDS, 1.0 / self._rate)
            await asyncio.sleep(wait)

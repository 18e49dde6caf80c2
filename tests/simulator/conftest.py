"""Fixtures for the simulator's tests: a real server on 127.0.0.1, a client, the spec; helpers are in simkit.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import aiohttp
import pytest
from simkit import ACME, API_KEY, GLOBEX, SPEC_PATH, START, Client, Spec

from relay.simulator import ManualClock, Simulator, SimulatorServer


@pytest.fixture(scope="session")
def spec() -> Spec:
    return Spec(SPEC_PATH)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def sim(clock: ManualClock) -> Simulator:
    return Simulator(api_key=API_KEY, integrations=[ACME, GLOBEX], users=60, seed=3, clock=clock)


@pytest.fixture
async def server(sim: Simulator) -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as running:
        yield running


@pytest.fixture
async def client(server: SimulatorServer, spec: Spec) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        yield Client(session, server, spec)


@pytest.fixture
def serve(spec: Spec) -> Callable[[Simulator], AbstractAsyncContextManager[Client]]:
    """``async with serve(other_sim) as client:`` for tests that need a simulator other than the fixture's."""

    @contextlib.asynccontextmanager
    async def serving(other: Simulator) -> AsyncIterator[Client]:
        async with SimulatorServer(other) as running, aiohttp.ClientSession() as session:
            yield Client(session, running, spec)

    return serving


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    """``await eventually(condition, timeout=5)``: poll a condition with a deadline instead of sleeping blindly."""

    async def wait(condition: Callable[[], bool], timeout: float = 5.0, message: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{message} not met within {timeout}s")
            await asyncio.sleep(0.01)

    return wait

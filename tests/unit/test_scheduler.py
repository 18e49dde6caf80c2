"""How the scheduler's pairs wait between polls: the wake-up a trigger or a stop cuts short, the grid that scheduled
polls start on, and the reload gate's pause of every poll while the state is read back after a failed commit.

The scheduler and the gate here are real; only the poll operation is scripted (no source, no Kafka).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from relay.config import Config, load_config
from relay.errors import AuthenticationError, KafkaUnavailable, StateError
from relay.metrics import Metrics
from relay.pipeline import CommitsInFlight
from relay.reload_gate import ReloadGate
from relay.scheduler import BY_REGISTRY, Alarms, Scheduler, Wakeup, nearest_on_grid
from relay.slots import sleep_without_slot
from tests.unit.support import quiescent, wait_until

ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
USERS = "ats/users"
EMPLOYEES = "hris/employees"


def config(**env: str) -> Config:
    environ = {
        "RELAY_API_KEY": "k",
        "RELAY_INTEGRATIONS": f"{ACME},{GLOBEX}",
        "RELAY_RESOURCES": f"{USERS},{EMPLOYEES}",
        "RELAY_POLL_INTERVAL_SECONDS": "600",
        "RELAY_POLL_JITTER_FRACTION": "0",
    }
    environ.update({f"RELAY_{name.upper()}": value for name, value in env.items()})
    return load_config(None, environ)


def far_future() -> float:
    return asyncio.get_running_loop().time() + 3600


# --- Wakeup ----------------------------------------------------------------------------------------------------------


async def test_setting_the_flag_ends_a_sleep_early() -> None:
    wakeup = Wakeup()
    sleeping = asyncio.create_task(wakeup.sleep_until(far_future()))
    await quiescent()
    assert not sleeping.done()
    wakeup.set()
    await quiescent()
    assert sleeping.done()
    assert wakeup.is_set()  # the poll that follows clears it


async def test_a_flag_set_before_the_sleep_makes_it_return_at_once() -> None:
    wakeup = Wakeup()
    wakeup.set()
    sleeping = asyncio.create_task(wakeup.sleep_until(far_future()))
    await asyncio.sleep(0)
    assert sleeping.done()


async def test_waking_ends_a_sleep_without_setting_the_flag() -> None:
    wakeup = Wakeup()
    sleeping = asyncio.create_task(wakeup.sleep_until(far_future()))
    await quiescent()
    wakeup.wake()
    await quiescent()
    assert sleeping.done()
    assert not wakeup.is_set()


async def test_a_sleep_lasts_until_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.05
    await asyncio.wait_for(Wakeup().sleep_until(deadline), timeout=10)
    assert loop.time() >= deadline


async def test_a_cleared_flag_lets_the_next_sleep_last() -> None:
    wakeup = Wakeup()
    wakeup.set()
    await wakeup.sleep_until(far_future())
    wakeup.clear()
    sleeping = asyncio.create_task(wakeup.sleep_until(far_future()))
    await quiescent()
    assert not sleeping.done()
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping
    wakeup.set()  # nobody sleeps any more: nothing to wake, no error
    assert wakeup.is_set()


async def test_sleeps_until_one_deadline_share_one_timer_and_end_together() -> None:
    loop = asyncio.get_running_loop()
    alarms = Alarms()
    deadline = loop.time() + 0.05
    timers_before = len(loop._scheduled)  # type: ignore[attr-defined]  # the loop's heap of timers
    wakeups = [Wakeup() for _ in range(10)]
    sleeping = [asyncio.create_task(w.sleep_until(deadline, alarms)) for w in wakeups]
    await quiescent()
    assert len(loop._scheduled) == timers_before + 1  # type: ignore[attr-defined]
    wakeups[0].set()  # one ends early; the timer stays for the others
    await quiescent()
    assert sleeping[0].done()
    assert not any(task.done() for task in sleeping[1:])
    await asyncio.wait_for(asyncio.gather(*sleeping), timeout=10)
    assert loop.time() >= deadline


async def test_a_sleep_cancelled_before_its_shared_deadline_leaves_the_others_sleeping() -> None:
    loop = asyncio.get_running_loop()
    alarms = Alarms()
    deadline = loop.time() + 0.05
    first, second = Wakeup(), Wakeup()
    cancelled = asyncio.create_task(first.sleep_until(deadline, alarms))
    kept = asyncio.create_task(second.sleep_until(deadline, alarms))
    await quiescent()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.wait_for(kept, timeout=10)
    assert loop.time() >= deadline


@pytest.mark.parametrize("now", [0.0, 12.34, 98_765.4321])
def test_a_scheduled_poll_starts_on_the_nearest_step_of_the_grid(now: float) -> None:
    step = 0.5
    for delay in (0.001, 5.0, 9.95, 10.26):
        start = nearest_on_grid(now + delay, step)
        assert abs(start - (now + delay)) <= step / 2 + 1e-9  # at most half a step early or late


def test_the_grid_leaves_the_mean_interval_as_it_is() -> None:
    step, rng = 0.5, random.Random(7)
    times = [rng.uniform(0, 1000) for _ in range(10_000)]
    shift = sum(nearest_on_grid(t, step) - t for t in times) / len(times)
    assert abs(shift) < step / 50  # rounding up would add half a step to every interval


@pytest.mark.parametrize("now", [0.0, 12.34, 98_765.4321])
def test_polls_due_within_one_step_start_at_the_very_same_time(now: float) -> None:
    step = 0.5
    boundary = nearest_on_grid(now + 10, step)
    due = (boundary - 0.24, boundary - 0.05, boundary + 0.001, boundary + 0.24)
    # The same float, not merely close ones: their timers then fire in the same turn of the event loop.
    assert {nearest_on_grid(when, step) for when in due} == {boundary}


# --- The scheduler ---------------------------------------------------------------------------------------------------


class ScriptedPoller(Scheduler):
    """A real Scheduler, behind the real ReloadGate, whose poll operation runs a script: no source, no Kafka."""

    def __init__(self, cfg: Config, commits: CommitsInFlight | None = None) -> None:
        gate = ReloadGate(self._scripted_poll, self._reload)
        super().__init__(cfg, gate, Metrics(cfg.resources), rng=random.Random(7), commits=commits)
        self.polls: dict[tuple[str, str], int] = {}
        self.cancelled: list[tuple[str, str]] = []  # the pairs whose poll was cancelled
        self.in_flight = 0
        self.failures: dict[tuple[str, str], BaseException] = {}  # raised by the pair's next poll
        self.holds: dict[tuple[str, str], asyncio.Event] = {}  # the pair's polls wait for this
        self.source_waits: dict[tuple[str, str], asyncio.Event] = {}  # ... as for a rate limit the source set
        self.reloads: list[int] = []  # polls in flight at each state reload

    async def _scripted_poll(
        self, integration: str, resource: str, published: Callable[[int], None], *kind: str
    ) -> None:
        pair = (integration, resource)
        self.polls[pair] = self.polls.get(pair, 0) + 1
        self.in_flight += 1
        try:
            if pair in self.holds:
                await self.holds[pair].wait()
            if pair in self.source_waits:
                await sleep_without_slot(lambda _: self.source_waits[pair].wait(), 60)
            if pair in self.failures:
                raise self.failures.pop(pair)
        except asyncio.CancelledError:
            self.cancelled.append(pair)
            raise
        finally:
            self.in_flight -= 1

    async def _reload(self) -> None:
        self.reloads.append(self.in_flight)
        await asyncio.sleep(0)  # a real reload reads Kafka: polls must not slip in meanwhile

    def polled(self, integration: str, resource: str) -> int:
        return self.polls.get((integration, resource), 0)


async def start(poller: ScriptedPoller, grace_seconds: float = 600) -> asyncio.Task[None]:
    """Run the poller until every pair made its first (immediate) poll and went to sleep for its 600 s."""
    runner = asyncio.create_task(poller.run(grace_seconds=grace_seconds))
    await wait_until(lambda: sum(poller.polls.values()) == len(poller.status), "the first polls")
    await quiescent()
    return runner


async def test_stop_wakes_every_sleeping_pair_at_once() -> None:
    poller = ScriptedPoller(config())
    runner = await start(poller, grace_seconds=600)
    assert all(status.next_poll_at is not None for status in poller.status.values())
    poller.stop()
    # Pairs left asleep would hold run() for the 600 s grace; woken, they end within a few turns of the loop.
    await asyncio.wait_for(runner, timeout=10)
    assert all(count == 1 for count in poller.polls.values())


async def test_a_fatal_error_in_one_pair_wakes_every_other() -> None:
    poller = ScriptedPoller(config())
    runner = await start(poller, grace_seconds=600)
    poller.failures[(ACME, USERS)] = AuthenticationError("refused", code="PLATFORM.AUTHENTICATION_INVALID")
    poller.trigger(ACME, USERS)
    await asyncio.wait_for(runner, timeout=10)
    assert isinstance(poller.fatal, AuthenticationError)
    assert poller.polled(GLOBEX, EMPLOYEES) == 1


async def test_a_trigger_wakes_only_its_pair() -> None:
    poller = ScriptedPoller(config())
    runner = await start(poller)
    try:
        poller.trigger(GLOBEX, USERS)
        await wait_until(lambda: poller.polled(GLOBEX, USERS) == 2, "the triggered poll")
        await quiescent()
        assert sum(poller.polls.values()) == len(poller.status) + 1
    finally:
        poller.stop()
        await runner


async def test_after_a_failed_commit_polls_wait_until_the_state_is_read_back() -> None:
    poller = ScriptedPoller(config())
    runner = await start(poller, grace_seconds=1)  # a pair stuck at the gate is cancelled, and the test fails
    try:
        held = poller.holds[(GLOBEX, EMPLOYEES)] = asyncio.Event()
        poller.failures[(ACME, USERS)] = KafkaUnavailable("the commit's outcome is unknown")
        poller.trigger(GLOBEX, EMPLOYEES)  # in flight, and held there
        poller.trigger(ACME, USERS)  # fails: memory may now be behind Kafka
        await wait_until(lambda: poller.polled(ACME, USERS) == 2, "the failing poll")
        # The failed pair retries within a second, and waits: a poll is still in flight, so no reload yet.
        await wait_until(lambda: poller.status[(ACME, USERS)].polling, "the retry to wait for the reload")
        poller.trigger(ACME, EMPLOYEES)  # another pair: it waits for the reload too
        await wait_until(lambda: poller.status[(ACME, EMPLOYEES)].polling, "the second pair to wait")
        await quiescent()
        assert poller.reloads == []
        assert poller.polled(ACME, USERS) == 2
        assert poller.polled(ACME, EMPLOYEES) == 1
        retry_held = poller.holds[(ACME, USERS)] = asyncio.Event()
        held.set()
        await wait_until(lambda: poller.polled(ACME, USERS) == 3, "the retry after the reload")
        # The second pair is not forgotten while the retry is in flight: it polls once that ends.
        retry_held.set()
        await wait_until(lambda: poller.polled(ACME, EMPLOYEES) == 2, "the second pair after the reload")
        assert poller.reloads  # the state was read back, and never while a poll was in flight
        assert all(in_flight == 0 for in_flight in poller.reloads)
    finally:
        poller.stop()
        await runner


async def test_an_unreadable_state_stops_the_poller() -> None:
    # Reading the state back after a failed commit can meet records this version cannot read: nothing can go on.
    poller = ScriptedPoller(config())
    runner = await start(poller)
    poller.failures[(ACME, USERS)] = StateError("unknown record shape 7")
    poller.trigger(ACME, USERS)
    await asyncio.wait_for(runner, 10)
    assert isinstance(poller.fatal, StateError)


async def test_an_unexpected_error_backs_its_pair_off_shows_on_status_and_leaves_the_others_alone() -> None:
    # An API key with a trailing newline made aiohttp raise ValueError on every request: the pair's task died, with
    # no log line and a healthy /status. Every error gets a verdict now; this one is internal_error.
    poller = ScriptedPoller(config(api_key="the-api-key"))
    runner = await start(poller)
    try:
        poller.failures[(ACME, USERS)] = ValueError("Forbidden control character in 'Bearer the-api-key\\n'")
        poller.trigger(ACME, USERS)
        await wait_until(lambda: poller.status[(ACME, USERS)].consecutive_failures == 1, "the failed poll")
        status = poller.status[(ACME, USERS)]
        assert not status.healthy
        assert status.last_error_code == "ValueError"
        assert status.last_error_message == "ValueError: Forbidden control character in 'Bearer **********\\n'"
        assert status.next_poll_at is not None  # backed off, not ended: the loop sleeps until its next poll
        poller.trigger(ACME, USERS)  # a trigger cuts the back-off short: the loop is alive
        await wait_until(lambda: poller.polled(ACME, USERS) == 3, "the pair's next poll")
        await wait_until(lambda: poller.status[(ACME, USERS)].healthy, "the pair to recover")
        poller.trigger(GLOBEX, USERS)  # another pair never noticed
        await wait_until(lambda: poller.polled(GLOBEX, USERS) == 2, "another pair's poll")
        assert poller.status[(GLOBEX, USERS)].healthy
        assert poller.fatal is None
    finally:
        poller.stop()
        await runner


async def test_a_pair_waiting_on_the_source_does_not_hold_the_only_poll_slot() -> None:
    poller = ScriptedPoller(config(max_concurrent_polls="1"))
    runner = await start(poller)
    try:
        waiting = poller.source_waits[(ACME, USERS)] = asyncio.Event()  # say, Retry-After: 60
        poller.trigger(ACME, USERS)
        await wait_until(lambda: poller.polled(ACME, USERS) == 2, "the rate-limited poll")
        poller.trigger(GLOBEX, EMPLOYEES)
        await wait_until(lambda: poller.polled(GLOBEX, EMPLOYEES) == 2, "another integration's poll, meanwhile")
        await wait_until(lambda: not poller.status[(GLOBEX, EMPLOYEES)].polling, "it to finish")
        assert poller.status[(ACME, USERS)].polling  # still waiting, without the slot
        waiting.set()
        await wait_until(lambda: not poller.status[(ACME, USERS)].polling, "the waiting poll to finish")
    finally:
        poller.stop()
        await runner


# --- Stops and handovers: the grace is for pages in flight to Kafka ---------------------------------------------------


async def stalled(poller: ScriptedPoller, pair: tuple[str, str]) -> None:
    """Make ``pair`` poll now, and its poll wait for ever (as on a source that does not answer)."""
    poller.holds[pair] = asyncio.Event()
    poller.trigger(*pair)
    await wait_until(lambda: poller.status[pair].polling, "the stalled poll")


async def test_a_stop_cancels_at_once_a_poll_with_no_page_in_flight_to_kafka() -> None:
    poller = ScriptedPoller(config(), CommitsInFlight())
    runner = await start(poller, grace_seconds=600)
    await stalled(poller, (ACME, USERS))
    poller.stop()
    await asyncio.wait_for(runner, timeout=10)  # not the 600 s grace
    assert poller.cancelled == [(ACME, USERS)]


async def test_a_handover_gives_a_poll_the_grace_while_its_page_commits_and_cancels_it_once_that_ended() -> None:
    commits = CommitsInFlight()
    poller = ScriptedPoller(config(), commits)
    runner = await start(poller, grace_seconds=600)
    try:
        committing, waiting = (ACME, USERS), (ACME, EMPLOYEES)
        await stalled(poller, committing)
        await stalled(poller, waiting)
        commits.began(committing)  # a page of its poll is being committed
        disowning = asyncio.create_task(poller.disown([committing, waiting], 600))
        await wait_until(lambda: poller.cancelled == [waiting], "the poll with nothing in flight to be cancelled")
        await quiescent()
        assert not disowning.done()  # the page in flight has the grace
        commits.ended(committing)  # committed; and the poll, told to stop, would wait on the source again
        await asyncio.wait_for(disowning, timeout=10)
        assert poller.cancelled == [waiting, committing]
        assert poller.resources_of(ACME) == ()
    finally:
        poller.stop()
        await runner


async def test_a_command_whose_poll_waits_on_the_source_is_told_of_the_cancellation_as_after_the_grace() -> None:
    # relay.commands leaves a command so cancelled to the partition's next owner, as it always did after the grace.
    poller = ScriptedPoller(config(), CommitsInFlight())
    runner = await start(poller, grace_seconds=600)
    try:
        outcomes: list[BaseException | None] = []
        poller.holds[(ACME, USERS)] = asyncio.Event()
        poller.command(ACME, USERS, "resnapshot", lambda resource, error, result: outcomes.append(error))
        await wait_until(lambda: poller.status[(ACME, USERS)].polling, "the command's poll")
        await asyncio.wait_for(poller.disown([(ACME, USERS)], 600), timeout=10)
        assert len(outcomes) == 1
        assert isinstance(outcomes[0], asyncio.CancelledError)
    finally:
        poller.stop()
        await runner


async def test_without_knowing_the_commits_every_poll_gets_the_grace() -> None:
    poller = ScriptedPoller(config())
    runner = await start(poller, grace_seconds=600)
    await stalled(poller, (ACME, USERS))
    disowning = asyncio.create_task(poller.disown([(ACME, USERS)], 0.2))
    await quiescent()
    assert not disowning.done()
    await asyncio.wait_for(disowning, timeout=10)  # then it is cancelled, as it always was
    assert poller.cancelled == [(ACME, USERS)]
    poller.stop()
    await runner


# --- Pairs of the registry: each integration its own resources, pauses by whoever paused -------------------------


async def test_each_integration_has_the_resources_it_was_given() -> None:
    poller = ScriptedPoller(config())
    await poller.disown([(GLOBEX, USERS), (GLOBEX, EMPLOYEES)], 0)
    poller.own([(GLOBEX, EMPLOYEES), ("bamboohr:initech", "hris/teams")])
    assert poller.resources_of(ACME) == (USERS, EMPLOYEES)
    assert poller.resources_of(GLOBEX) == (EMPLOYEES,)
    assert poller.resources_of("bamboohr:initech") == ("hris/teams",)
    assert poller.resources_of("workday:unknown") == ()
    await poller.disown([(ACME, USERS), (ACME, EMPLOYEES)], 0)
    assert poller.resources_of(ACME) == ()
    assert not poller.pause(ACME)


async def test_a_pause_of_the_registry_and_one_of_a_webhook_are_lifted_each_by_its_own_resume() -> None:
    poller = ScriptedPoller(config())
    runner = await start(poller)
    try:
        assert poller.pause(ACME, by=BY_REGISTRY)
        assert poller.pause(ACME)  # a webhook's (INACTIVE)
        assert poller.resume(ACME)  # the webhook's ACTIVE does not undo the operator's pause
        assert poller.is_paused(ACME)
        poller.trigger(ACME, USERS)
        await quiescent()
        assert poller.polled(ACME, USERS) == 1
        assert poller.resume(ACME, by=BY_REGISTRY)  # nobody holds it now: polled at once
        assert not poller.is_paused(ACME)
        await wait_until(lambda: poller.polled(ACME, USERS) == 2 and poller.polled(ACME, EMPLOYEES) == 2, "resume")
    finally:
        poller.stop()
        await runner


async def test_pairs_owned_paused_wait_for_the_registry_to_resume_them() -> None:
    poller = ScriptedPoller(config(integrations=ACME))
    runner = await start(poller)
    try:
        poller.own([(GLOBEX, USERS)], paused={GLOBEX})
        assert poller.is_paused(GLOBEX)
        assert poller.status[(GLOBEX, USERS)].paused_by == {BY_REGISTRY}
        poller.trigger(GLOBEX, USERS)
        await quiescent()
        assert poller.polled(GLOBEX, USERS) == 0
        poller.resume(GLOBEX, by=BY_REGISTRY)
        await wait_until(lambda: poller.polled(GLOBEX, USERS) == 1, "the resumed pair's poll")
    finally:
        poller.stop()
        await runner

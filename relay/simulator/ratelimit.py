"""The request budget: ``limit`` requests per ``window`` seconds per API key, in fixed windows.

A key's window opens with its first request and closes ``window`` seconds later; the next request after that opens
a new one. Every API response carries the budget in the IETF draft's headers (as Kombo sends them):

* ``ratelimit-limit``: the budget of a window;
* ``ratelimit-remaining``: what is left of it after this request;
* ``ratelimit-reset``: whole seconds until the window closes (at least 1).

A request over budget gets 429 ``PLATFORM.RATE_LIMIT_EXCEEDED``, plus ``Retry-After`` (the same seconds as
``ratelimit-reset``) when ``retry_after`` is on; it is off to test clients that must cope without. Refused requests
do not count. Time is the simulator's clock, so a :class:`~relay.simulator.clock.ManualClock` can end a window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self, *, retry_after: bool) -> dict[str, str]:
        headers = {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": str(self.remaining),
            "ratelimit-reset": str(self.reset_seconds),
        }
        if retry_after and not self.allowed:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


class RateLimiter:
    def __init__(self, limit: int, window: float, now_ms: Callable[[], int], *, retry_after: bool = True) -> None:
        self._now_ms = now_ms
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (window start ms, requests counted)
        self.limit = limit
        self.window = window
        self.retry_after = retry_after
        self.configure(limit=limit, window=window)

    def configure(
        self, *, limit: int | None = None, window: float | None = None, retry_after: bool | None = None
    ) -> None:
        """Change the budget; every key starts a fresh window."""
        if limit is not None:
            if limit < 1:
                raise ValueError("the rate limit must be at least 1 request")
            self.limit = limit
        if window is not None:
            if window <= 0:
                raise ValueError("the rate limit window must be positive")
            self.window = window
        if retry_after is not None:
            self.retry_after = retry_after
        self.reset()

    def reset(self) -> None:
        self._windows.clear()

    def _current(self, key: str) -> tuple[int, int, int]:
        """(window start, requests counted, now) for ``key``, opening a new window when the old one is over."""
        now = self._now_ms()
        start, used = self._windows.get(key, (now, 0))
        if now >= start + self.window * 1000:
            start, used = now, 0
        return start, used, now

    def _budget(self, allowed: bool, start: int, used: int, now: int) -> Budget:
        reset_ms = start + self.window * 1000 - now
        reset_seconds = max(1, -int(-reset_ms // 1000))  # ceiling
        return Budget(allowed, self.limit, max(0, self.limit - used), reset_seconds)

    def take(self, key: str) -> Budget:
        """Count one request for ``key`` if the budget allows it."""
        start, used, now = self._current(key)
        if used >= self.limit:
            self._windows[key] = (start, used)
            return self._budget(False, start, used, now)
        self._windows[key] = (start, used + 1)
        return self._budget(True, start, used + 1, now)

    def peek(self, key: str) -> Budget:
        """The budget as it stands, counting nothing (for responses to requests that were not authenticated)."""
        start, used, now = self._current(key)
        return self._budget(used < self.limit, start, used, now)

"""Injected failures: what a client of Kombo must survive.

``sim.faults.inject(FaultKind.HTTP_503, count=3)`` makes the next three API requests fail;
``inject(FaultKind.LATENCY, fraction=0.1, latency=2.0)`` slows down one request in ten (at random, from the
simulator's seed) until cleared. ``count`` and ``fraction`` combine ("each request with probability ``fraction``, at
most ``count`` times"); with neither, ``count`` is 1. ``integration`` restricts a fault to requests whose
``X-Integration-Id`` is that integration. A fault is used up when it is chosen for a request, whatever happens to
the request afterwards. When several faults match, the one injected first applies. Faults touch only the ``/v1``
API, never the ``/_sim/`` control API.

=================  ==========================================================================================
kind               the response
=================  ==========================================================================================
``HTTP_400``       400 ``PLATFORM.INPUT_INVALID``
``HTTP_401``       401 ``PLATFORM.AUTHENTICATION_INVALID``
``HTTP_404``       404 ``PLATFORM.INTEGRATION_NOT_FOUND``
``HTTP_409``       409 ``INTEGRATION.SETUP_SYNC_PENDING``
``HTTP_429``       429 ``PLATFORM.RATE_LIMIT_EXCEEDED`` (with ``Retry-After`` if the rate limit is so configured)
``HTTP_503``       503 ``REMOTE.SERVICE_UNAVAILABLE``
``LATENCY``        the normal response, ``latency`` seconds late
``STALL``          nothing, ever: the request hangs until the client gives up (or the server stops)
``MALFORMED_JSON`` the normal status and headers, but a body that is not valid JSON
``TRUNCATED_JSON`` the normal status, but only the first half of the JSON body
``HTML_502``       502 with an HTML page from a "load balancer" (no Kombo headers)
=================  ==========================================================================================
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    HTTP_400 = "http_400"
    HTTP_401 = "http_401"
    HTTP_404 = "http_404"
    HTTP_409 = "http_409"
    HTTP_429 = "http_429"
    HTTP_503 = "http_503"
    LATENCY = "latency"
    STALL = "stall"
    MALFORMED_JSON = "malformed_json"
    TRUNCATED_JSON = "truncated_json"
    HTML_502 = "html_502"


ERROR_FAULTS: dict[FaultKind, tuple[int, str]] = {
    FaultKind.HTTP_400: (400, "PLATFORM.INPUT_INVALID"),
    FaultKind.HTTP_401: (401, "PLATFORM.AUTHENTICATION_INVALID"),
    FaultKind.HTTP_404: (404, "PLATFORM.INTEGRATION_NOT_FOUND"),
    FaultKind.HTTP_409: (409, "INTEGRATION.SETUP_SYNC_PENDING"),
    FaultKind.HTTP_429: (429, "PLATFORM.RATE_LIMIT_EXCEEDED"),
    FaultKind.HTTP_503: (503, "REMOTE.SERVICE_UNAVAILABLE"),
}
"""Faults answered with Kombo's error envelope: HTTP status and ``error.code``."""

BODY_FAULTS = frozenset({FaultKind.MALFORMED_JSON, FaultKind.TRUNCATED_JSON})


@dataclass
class Fault:
    """One injected fault; ``remaining`` is None for a fault that lasts until cleared."""

    id: int
    kind: FaultKind
    remaining: int | None
    fraction: float | None
    integration: str | None
    latency: float
    applied: int = field(default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "remaining": self.remaining,
            "fraction": self.fraction,
            "integration": self.integration,
            "latency": self.latency,
            "applied": self.applied,
        }


class FaultInjector:
    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(f"faults:{seed}")
        self._ids = itertools.count(1)
        self.active: list[Fault] = []

    def inject(
        self,
        kind: FaultKind | str,
        *,
        count: int | None = None,
        fraction: float | None = None,
        integration: str | None = None,
        latency: float = 1.0,
    ) -> Fault:
        """Add a fault (see the module's docstring); returns it, so it can be :meth:`remove`-d."""
        kind = FaultKind(kind)
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError("fraction must be in (0, 1]")
        if latency < 0:
            raise ValueError("latency must not be negative")
        if count is None and fraction is None:
            count = 1
        fault = Fault(next(self._ids), kind, count, fraction, integration, latency)
        self.active.append(fault)
        return fault

    def remove(self, fault_id: int) -> bool:
        before = len(self.active)
        self.active = [f for f in self.active if f.id != fault_id]
        return len(self.active) != before

    def clear(self) -> None:
        self.active.clear()

    def pick(self, integration: str | None) -> Fault | None:
        """The fault for a request to ``integration`` (None when there is none), used up by being picked."""
        for fault in self.active:
            if fault.integration is not None and fault.integration != integration:
                continue
            if fault.fraction is not None and self._rng.random() >= fault.fraction:
                continue
            fault.applied += 1
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self.active.remove(fault)
            return fault
        return None

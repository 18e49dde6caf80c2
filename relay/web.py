"""The relay's HTTP server: ``/metrics``, ``/livez``, ``/readyz``, ``/status``, when a webhook secret is configured
``POST /webhooks/kombo`` (``relay/webhooks.py``), and the routes it is given besides (the admin API's under
``/admin``, ``relay/admin.py``).

* ``/livez`` answers 200 while the event loop is alive and not stuck: a heartbeat task ticks every second, and a
  heartbeat older than ``stuck_after`` seconds fails the probe, so Kubernetes restarts a wedged process.
* ``/readyz`` answers 200 once the state is restored, while Kafka is reachable and the relay is not fenced.
* ``/status`` is JSON detail per integration and resource (the metrics carry no integration label by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.metrics import Metrics

StatusProvider = Callable[[], dict[str, Any]]
ReadinessProvider = Callable[[], tuple[bool, dict[str, bool]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Heartbeat:
    """Ticks on the event loop; if the loop is blocked, the tick gets old."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat(), name="heartbeat")

    async def _beat(self) -> None:
        while True:
            self.last = time.monotonic()
            await asyncio.sleep(self.interval)

    def age(self) -> float:
        return time.monotonic() - self.last

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def build_app(
    metrics: Metrics,
    readiness: ReadinessProvider,
    status: StatusProvider,
    heartbeat: Heartbeat,
    *,
    stuck_after: float = 30.0,
    webhook: tuple[str, Handler] | None = None,
    routes: Iterable[web.RouteDef] = (),
) -> web.Application:
    async def get_metrics(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(request: web.Request) -> web.Response:
        age = heartbeat.age()
        if age > stuck_after:
            return _json({"live": False, "reason": f"event loop heartbeat is {age:.0f}s old"}, status=503)
        return _json({"live": True})

    async def readyz(request: web.Request) -> web.Response:
        ready, checks = readiness()
        return _json({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def get_status(request: web.Request) -> web.Response:
        return _json(status())

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", get_status)
    if webhook is not None:
        path, handler = webhook
        app.router.add_post(path, handler)
    app.router.add_routes(routes)
    return app


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload, option=orjson.OPT_INDENT_2), status=status, content_type="application/json"
    )

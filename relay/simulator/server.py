"""The simulator's HTTP server: the ``/v1`` API (``api.py``) and the ``/_sim/`` control API (``control.py``).

::

    sim = Simulator(api_key="k", integrations=["personio:acme"], users=100)
    async with SimulatorServer(sim, host="127.0.0.1", port=0) as server:
        server.url          # "http://127.0.0.1:54321/v1": the base URL a Kombo client is configured with
        server.control_url  # "http://127.0.0.1:54321/_sim"

``port=0`` picks a free port. Stopping the server also stops the simulator's churn and releases stalled requests.

With ``webhook_url`` and ``webhook_secret`` the server also runs a :class:`~relay.simulator.webhooks.WebhookSender`
(``server.webhooks``): signed ``data-changed`` webhooks to that URL after the simulator's mutations.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from relay.netaddr import bound_port
from relay.simulator.api import Api, Interactions, error_response
from relay.simulator.clock import http_date
from relay.simulator.control import Control
from relay.simulator.model import Simulator
from relay.simulator.service import Service
from relay.simulator.webhooks import WebhookSender

SHUTDOWN_TIMEOUT_SECONDS = 2.0


def make_app(sim: Simulator, closing: asyncio.Event | None = None) -> web.Application:
    """The aiohttp application; ``closing`` is set when the server stops (it ends stalled requests)."""
    closing = closing or asyncio.Event()
    interactions = Interactions()

    @web.middleware
    async def date_and_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:  # the router's 404 and 405: in the shape of the API that was asked
            if request.path.startswith("/_sim"):
                response = web.json_response({"error": exc.reason}, status=exc.status)
            else:
                response = error_response(exc.status, None, f"{exc.reason}: {request.method} {request.path}")
        # Always the simulator's clock, which a test may have frozen (aiohttp would add the machine's time).
        response.headers["Date"] = http_date(sim.now())
        return response

    app = web.Application(middlewares=[date_and_errors])
    app.add_routes(Api(sim, closing, interactions).routes())
    app.add_routes(Control(sim, interactions).routes())
    return app


class SimulatorServer(Service):
    def __init__(
        self,
        sim: Simulator,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_batch_seconds: float = 1.0,
    ) -> None:
        if (webhook_url is None) != (webhook_secret is None):
            raise ValueError("webhook_url and webhook_secret go together")
        self.sim = sim
        self.host = host
        self.port = port
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.webhooks: WebhookSender | None = None
        if webhook_url is not None and webhook_secret is not None:
            self.webhooks = WebhookSender(sim, webhook_url, webhook_secret, batch_seconds=webhook_batch_seconds)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The API's base URL, like Kombo's ``https://api.kombo.dev/v1``."""
        return f"{self.base_url}/v1"

    @property
    def control_url(self) -> str:
        return f"{self.base_url}/_sim"

    async def start(self) -> None:
        self._closing.clear()
        runner = web.AppRunner(
            make_app(self.sim, self._closing), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = bound_port(runner)
        self.port = self.port if port is None else port
        if self.webhooks is not None:
            await self.webhooks.start()

    async def stop(self) -> None:
        await self.sim.stop_churn()
        if self.webhooks is not None:
            await self.webhooks.stop()
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

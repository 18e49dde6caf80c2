"""The ``/v1`` API: Kombo's list endpoints, with its authentication, errors, rate limit and injected faults.

A request goes through these steps, in this order (the first that answers wins):

1. an injected fault, if one is due (``faults.py``): ``HTML_502`` and ``STALL`` answer (or never answer) here,
   ``LATENCY`` waits and goes on, the others take effect below;
2. ``Authorization: Bearer <api key>``: 401 ``PLATFORM.AUTHENTICATION_INVALID``;
3. the rate limit of that key: 429 ``PLATFORM.RATE_LIMIT_EXCEEDED`` (``ratelimit.py``);
4. an injected error fault: its status and code;
5. ``X-Integration-Id``: missing is 400 ``PLATFORM.INPUT_INVALID``; unknown (or removed) is 404
   ``PLATFORM.INTEGRATION_NOT_FOUND``; setup pending is 409 ``INTEGRATION.SETUP_SYNC_PENDING``; inactive is 403
   ``INTEGRATION.INACTIVE`` (the spec gives no status for it; the code is what clients should act on);
6. the query parameters (``listing.py``): 400 ``PLATFORM.INPUT_INVALID``;
7. the page: 200 ``{"status": "success", "data": {"next": ..., "results": [...]}}``, serialised with orjson; an
   injected body fault then mangles the body (of whatever response this request got).

Errors use the spec's envelope ``{"status": "error", "error": {"code", "title", "message", "log_url"}}``; the
``log_url`` points at ``/_sim/interactions/<n>``, which shows what the simulator saw of that request. Every
response has the ``ratelimit-*`` headers except the load balancer's 502 page, and every response has a ``Date``
(from the simulator's clock; added by the server's middleware).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from relay.simulator.cursor import CursorCodec
from relay.simulator.faults import BODY_FAULTS, ERROR_FAULTS, Fault, FaultKind
from relay.simulator.listing import InputInvalid, parse_query, run_query
from relay.simulator.model import IntegrationState, Simulator
from relay.simulator.ratelimit import Budget
from relay.simulator.records import RESOURCES
from relay.timestamps import format_timestamp_ms

ERROR_TITLES: dict[str | None, str] = {
    "PLATFORM.AUTHENTICATION_INVALID": "The API key is invalid.",
    "PLATFORM.RATE_LIMIT_EXCEEDED": "You have exceeded the rate limit.",
    "PLATFORM.INTEGRATION_NOT_FOUND": "The integration could not be found.",
    "PLATFORM.INPUT_INVALID": "The request is invalid.",
    "INTEGRATION.SETUP_SYNC_PENDING": "The initial sync of this integration is still running.",
    "INTEGRATION.INACTIVE": "This integration is inactive.",
    "REMOTE.SERVICE_UNAVAILABLE": "The integrated system is unavailable.",
    None: "Not found.",
}
STATE_ERRORS: dict[IntegrationState, tuple[int, str, str]] = {
    IntegrationState.SETUP_PENDING: (
        409,
        "INTEGRATION.SETUP_SYNC_PENDING",
        "The initial sync after connecting this integration has not finished yet; try again later.",
    ),
    IntegrationState.INACTIVE: (403, "INTEGRATION.INACTIVE", "This integration was deactivated."),
}
LOAD_BALANCER_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
STALL_POLL_SECONDS = 0.05


class Interactions:
    """The last requests the API answered, for the ``log_url`` of its errors."""

    def __init__(self, keep: int = 1000) -> None:
        self._ids = itertools.count(1)
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep)

    def open(self, request: web.Request, sim: Simulator) -> dict[str, Any]:
        interaction: dict[str, Any] = {
            "id": next(self._ids),
            "time": format_timestamp_ms(sim.now_ms()),
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "integration": request.headers.get("X-Integration-Id"),
            "status": None,
            "code": None,
            "fault": None,
        }
        self._recent.append(interaction)
        return interaction

    def get(self, interaction_id: int) -> dict[str, Any] | None:
        return next((i for i in self._recent if i["id"] == interaction_id), None)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return list(self._recent)[-limit:] if limit > 0 else []


class Api:
    def __init__(self, sim: Simulator, closing: asyncio.Event, interactions: Interactions) -> None:
        self.sim = sim
        self.closing = closing
        self.interactions = interactions
        # Cursors are keyed by the seed, so a restarted simulator with the same seed accepts its predecessor's.
        self.cursors = CursorCodec(f"relay-simulator-cursor:{sim.seed_value}".encode())

    def routes(self) -> list[web.RouteDef]:
        return [web.get(f"/v1/{name}", self._handler(name)) for name in RESOURCES]

    def _handler(self, resource: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.list_records(request, resource)

        return handle

    async def list_records(self, request: web.Request, resource: str) -> web.StreamResponse:
        interaction = self.interactions.open(request, self.sim)
        integration = request.headers.get("X-Integration-Id")
        fault = self.sim.faults.pick(integration)
        if fault is not None:
            interaction["fault"] = fault.kind.value
            if fault.kind is FaultKind.HTML_502:
                interaction["status"] = 502
                return web.Response(status=502, body=LOAD_BALANCER_502, content_type="text/html")
            if fault.kind is FaultKind.STALL:
                return await self._stall(request)
            if fault.kind is FaultKind.LATENCY:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), fault.latency)
        response = self._answer(request, resource, integration, fault, interaction)
        if fault is not None and fault.kind in BODY_FAULTS:
            response = _mangle(response, fault.kind)
        interaction["status"] = response.status
        return response

    def _answer(
        self,
        request: web.Request,
        resource: str,
        integration: str | None,
        fault: Fault | None,
        interaction: dict[str, Any],
    ) -> web.Response:
        def error(status: int, code: str, message: str, budget: Budget, *, retry_after: bool = False) -> web.Response:
            interaction["code"] = code
            headers = budget.headers(retry_after=False)
            if retry_after and self.sim.rate_limiter.retry_after:
                headers["Retry-After"] = str(budget.reset_seconds)
            log_url = f"{request.url.origin()}/_sim/interactions/{interaction['id']}"
            return _json(status, _envelope(code, message, log_url), headers)

        limiter = self.sim.rate_limiter
        key = _bearer_token(request)
        if key != self.sim.api_key:
            message = (
                "Missing Authorization header."
                if key is None
                else "The API key in the Authorization header is invalid."
            )
            return error(401, "PLATFORM.AUTHENTICATION_INVALID", message, limiter.peek(key or ""))
        budget = limiter.take(key)
        if not budget.allowed:
            message = f"The limit of {budget.limit} requests per {limiter.window:g} s is spent; see ratelimit-reset."
            return error(429, "PLATFORM.RATE_LIMIT_EXCEEDED", message, budget, retry_after=True)
        if fault is not None and fault.kind in ERROR_FAULTS:
            status, code = ERROR_FAULTS[fault.kind]
            return error(status, code, f"Injected fault {fault.kind.value}.", budget, retry_after=status == 429)
        if not integration:
            return error(400, "PLATFORM.INPUT_INVALID", "The X-Integration-Id header is required.", budget)
        state = self.sim.integration_state(integration)
        if state is None:
            return error(404, "PLATFORM.INTEGRATION_NOT_FOUND", f"No integration with the ID {integration}.", budget)
        if state in STATE_ERRORS:
            status, code, message = STATE_ERRORS[state]
            return error(status, code, message, budget)
        collection = self.sim.collection(integration, resource)
        try:
            query = parse_query(collection, request.query.items(), self.cursors)
        except InputInvalid as exc:
            return error(400, "PLATFORM.INPUT_INVALID", str(exc), budget)
        unknown = sorted(i for i in query.ids or () if i not in collection.by_id)
        if unknown:
            # Kombo answers a lookup of ids it does not know with a 404. Its error enum has no not-found code for
            # records (and the spec's schema refuses a null code), so the code is the input one.
            return error(404, "PLATFORM.INPUT_INVALID", f"No {resource} with the ID {unknown[0]}.", budget)
        results, next_cursor = run_query(collection, query, self.cursors)
        return _json(
            200,
            {"status": "success", "data": {"next": next_cursor, "results": results}},
            budget.headers(retry_after=False),
        )

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        """Answer nothing until the client hangs up or the server stops; then there is no one to answer."""
        while not self.closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), STALL_POLL_SECONDS)
        return web.Response(status=503, body=b"", content_type="text/plain")


def _bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _envelope(code: str | None, message: str, log_url: str | None) -> dict[str, Any]:
    return {
        "status": "error",
        "error": {"code": code, "title": ERROR_TITLES.get(code), "message": message, "log_url": log_url},
    }


def _json(status: int, payload: Any, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)


def error_response(status: int, code: str | None, message: str) -> web.Response:
    """An error in Kombo's envelope for requests that never reached an endpoint (unknown path, wrong method)."""
    return _json(status, _envelope(code, message, None), {})


def _mangle(response: web.Response, kind: FaultKind) -> web.Response:
    body = bytes(response.body) if isinstance(response.body, bytes | bytearray) else b""
    # Truncated: a proxy cut the body short. Malformed: a trailing comma, which looks like JSON and is not.
    mangled = body[: len(body) // 2] if kind is FaultKind.TRUNCATED_JSON else body[:-1] + b",}"
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return web.Response(status=response.status, body=mangled, content_type="application/json", headers=headers)

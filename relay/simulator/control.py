"""The control API under ``/_sim/``: the Python API of :class:`~relay.simulator.model.Simulator` over JSON/HTTP.

No authentication (it is a local development tool). Bodies are JSON; errors are ``{"error": "..."}`` with 400
(bad request), 404 (no such integration, resource or record) or 409 (the mutation does not apply: restoring a live
record, deleting a deleted one). ``RESOURCE`` is a path such as ``ats/users``; ``INTEGRATION`` may contain ``:``.

======  =============================================  ===============================================================
method  path                                           does
======  =============================================  ===============================================================
GET     /_sim/                                         this list
GET     /_sim/state                                    integrations, record counts, churn, faults, rate limit
POST    /_sim/integrations                             ``{"id", "users"?, "sizes"?, "state"?}``: add one
PUT     /_sim/integrations/INTEGRATION/state           ``{"state": "active|setup_pending|inactive"}``
DELETE  /_sim/integrations/INTEGRATION                 remove it (then the API answers 404)
POST    /_sim/records/INTEGRATION/RESOURCE             create; body: fields to set (optional)
POST    /_sim/records/INTEGRATION/RESOURCE/seed        ``{"count": N}``: create N records
GET     /_sim/records/INTEGRATION/RESOURCE/ID          the record now (also when soft-deleted)
PATCH   /_sim/records/INTEGRATION/RESOURCE/ID          update own fields (body; empty: random ones)
POST    /_sim/records/INTEGRATION/RESOURCE/ID/nested   nested-only change (``{"value": [...]}`` optional)
POST    /_sim/records/INTEGRATION/RESOURCE/ID/delete   soft delete
POST    /_sim/records/INTEGRATION/RESOURCE/ID/restore  restore
DELETE  /_sim/records/INTEGRATION/RESOURCE/ID          hard delete
GET     /_sim/mutations?since=N&limit=M                the mutation log after seq N (limit ≤ 10000)
GET     /_sim/churn                                    ``{"rate", "running", "performed"}``
PUT     /_sim/churn                                    ``{"rate": R}``: start or re-rate; 0 stops
DELETE  /_sim/churn                                    stop
POST    /_sim/churn/step                               ``{"count": N}``: N random mutations, now
GET     /_sim/faults                                   the active faults
POST    /_sim/faults                                   ``{"kind", "count"?, "fraction"?, "integration"?, "latency"?}``
DELETE  /_sim/faults                                   clear all faults
DELETE  /_sim/faults/ID                                remove one fault
GET     /_sim/rate-limit                               ``{"limit", "window", "retry_after"}``
PUT     /_sim/rate-limit                               change any of them (starts fresh windows)
GET     /_sim/interactions?limit=N                     the last API requests (``log_url`` targets)
GET     /_sim/interactions/ID                          one of them
======  =============================================  ===============================================================
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from relay.simulator.api import Interactions
from relay.simulator.errors import InvalidMutation, NotFound, SimulatorError
from relay.simulator.model import Simulator
from relay.simulator.records import RESOURCES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_MUTATIONS_PAGE = 10_000


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SimulatorError(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise SimulatorError("the body must be a JSON object")
    return body


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SimulatorError(f"{name} must be an integer") from None


def _guarded(handler: Handler) -> Handler:
    """Turn the simulator's exceptions into JSON errors with the matching status."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except NotFound as exc:
            return _json({"error": str(exc)}, 404)
        except InvalidMutation as exc:
            return _json({"error": str(exc)}, 409)
        except (SimulatorError, ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, 400)

    return guarded


class Control:
    def __init__(self, sim: Simulator, interactions: Interactions) -> None:
        self.sim = sim
        self.interactions = interactions

    def routes(self) -> list[web.RouteDef]:
        record = "/_sim/records/{integration}/{category}/{name}"
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/_sim/", self.index),
            ("GET", "/_sim/state", self.state),
            ("POST", "/_sim/integrations", self.add_integration),
            ("PUT", "/_sim/integrations/{integration}/state", self.set_state),
            ("DELETE", "/_sim/integrations/{integration}", self.remove_integration),
            ("POST", record, self.create),
            ("POST", record + "/seed", self.seed),
            ("GET", record + "/{id}", self.get_record),
            ("PATCH", record + "/{id}", self.update),
            ("POST", record + "/{id}/nested", self.change_nested),
            ("POST", record + "/{id}/delete", self.delete),
            ("POST", record + "/{id}/restore", self.restore),
            ("DELETE", record + "/{id}", self.hard_delete),
            ("GET", "/_sim/mutations", self.mutations),
            ("GET", "/_sim/churn", self.churn),
            ("PUT", "/_sim/churn", self.set_churn),
            ("DELETE", "/_sim/churn", self.stop_churn),
            ("POST", "/_sim/churn/step", self.churn_step),
            ("GET", "/_sim/faults", self.faults),
            ("POST", "/_sim/faults", self.inject_fault),
            ("DELETE", "/_sim/faults", self.clear_faults),
            ("DELETE", "/_sim/faults/{id}", self.remove_fault),
            ("GET", "/_sim/rate-limit", self.rate_limit),
            ("PUT", "/_sim/rate-limit", self.set_rate_limit),
            ("GET", "/_sim/interactions", self.recent_interactions),
            ("GET", "/_sim/interactions/{id}", self.interaction),
        ]
        return [web.route(method, path, _guarded(handler)) for method, path, handler in table]

    # -- overview --------------------------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        """The endpoint table of this module's docstring, as JSON."""
        table = (__doc__ or "").split("\n======")[2]  # the frame, the header row, the frame, then the rows
        rows = [line.split(None, 2) for line in table.splitlines()[1:] if line.strip() and not line.startswith("=")]
        return _json({"endpoints": [{"method": m, "path": p, "does": d} for m, p, d in rows]})

    async def state(self, request: web.Request) -> web.StreamResponse:
        integrations = {
            name: {
                "state": self.sim.integration_state(name),
                "records": {r: self.sim.count(name, r, include_deleted=True) for r in RESOURCES},
                "deleted": {
                    r: self.sim.count(name, r, include_deleted=True) - self.sim.count(name, r) for r in RESOURCES
                },
            }
            for name in self.sim.integrations
        }
        return _json(
            {
                "integrations": integrations,
                "resources": list(RESOURCES),
                "mutations": len(self.sim.mutations),
                "churn": self._churn_json(),
                "faults": [f.to_json() for f in self.sim.faults.active],
                "rate_limit": self._rate_limit_json(),
                "now": self.sim.now().isoformat(),
            }
        )

    # -- integrations ----------------------------------------------------------------------------------------------

    async def add_integration(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        integration = body.get("id")
        if not isinstance(integration, str) or not integration:
            raise SimulatorError('"id" (the integration id) is required')
        self.sim.add_integration(
            integration,
            users=None if body.get("users") is None else int(body["users"]),
            sizes={str(k): int(v) for k, v in (body.get("sizes") or {}).items()},
            state=str(body.get("state", "active")),
        )
        return _json({"id": integration, "state": self.sim.integration_state(integration)}, 201)

    async def set_state(self, request: web.Request) -> web.StreamResponse:
        integration = request.match_info["integration"]
        self.sim.set_integration_state(integration, str((await _body(request)).get("state")))
        return _json({"id": integration, "state": self.sim.integration_state(integration)})

    async def remove_integration(self, request: web.Request) -> web.StreamResponse:
        integration = request.match_info["integration"]
        self.sim.remove_integration(integration)
        return _json({"id": integration, "removed": True})

    # -- records ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _where(request: web.Request) -> tuple[str, str]:
        info = request.match_info
        return info["integration"], f"{info['category']}/{info['name']}"

    async def create(self, request: web.Request) -> web.StreamResponse:
        integration, resource = self._where(request)
        return _json(self.sim.create(integration, resource, await _body(request)), 201)

    async def seed(self, request: web.Request) -> web.StreamResponse:
        integration, resource = self._where(request)
        count = int((await _body(request)).get("count", 1))
        if not 0 <= count <= 1_000_000:
            raise SimulatorError("count must be from 0 to 1000000")
        return _json({"ids": self.sim.seed(integration, resource, count)}, 201)

    async def get_record(self, request: web.Request) -> web.StreamResponse:
        integration, resource = self._where(request)
        record = self.sim.get(integration, resource, request.match_info["id"])
        if record is None:
            raise NotFound(f"no record {request.match_info['id']}")
        return _json(record)

    async def update(self, request: web.Request) -> web.StreamResponse:
        integration, resource = self._where(request)
        fields = await _body(request)
        return _json(self.sim.update(integration, resource, request.match_info["id"], fields or None))

    async def change_nested(self, request: web.Request) -> web.StreamResponse:
        integration, resource = self._where(request)
        value = (await _body(request)).get("value")
        return _json(self.sim.change_nested(integration, resource, request.match_info["id"], value))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        integration, resource = self._where(request)
        return _json(self.sim.delete(integration, resource, request.match_info["id"]))

    async def restore(self, request: web.Request) -> web.StreamResponse:
        integration, resource = self._where(request)
        return _json(self.sim.restore(integration, resource, request.match_info["id"]))

    async def hard_delete(self, request: web.Request) -> web.StreamResponse:
        integration, resource = self._where(request)
        self.sim.hard_delete(integration, resource, request.match_info["id"])
        return _json({"id": request.match_info["id"], "hard_deleted": True})

    # -- the mutation log ------------------------------------------------------------------------------------------

    async def mutations(self, request: web.Request) -> web.StreamResponse:
        since = _int(request.query.get("since"), "since", 0)
        limit = _int(request.query.get("limit"), "limit", 1000)
        if not 1 <= limit <= MAX_MUTATIONS_PAGE:
            raise SimulatorError(f"limit must be from 1 to {MAX_MUTATIONS_PAGE}")
        page = self.sim.mutations_since(since, limit)
        return _json(
            {
                "mutations": [m.to_json() for m in page],
                "next_since": page[-1].seq if page else max(since, 0),
                "last_seq": len(self.sim.mutations),
            }
        )

    # -- churn -----------------------------------------------------------------------------------------------------

    def _churn_json(self) -> dict[str, Any]:
        churn = self.sim.churn
        return {
            "rate": churn.rate if churn and churn.running else 0.0,
            "running": bool(churn and churn.running),
            "performed": churn.performed if churn else 0,
        }

    async def churn(self, request: web.Request) -> web.StreamResponse:
        return _json(self._churn_json())

    async def set_churn(self, request: web.Request) -> web.StreamResponse:
        rate = float((await _body(request)).get("rate", 0.0))
        if rate < 0:
            raise SimulatorError("rate must not be negative")
        if rate == 0:
            await self.sim.stop_churn()
        else:
            self.sim.start_churn(rate)
        return _json(self._churn_json())

    async def stop_churn(self, request: web.Request) -> web.StreamResponse:
        await self.sim.stop_churn()
        return _json(self._churn_json())

    async def churn_step(self, request: web.Request) -> web.StreamResponse:
        count = int((await _body(request)).get("count", 1))
        if not 0 <= count <= 100_000:
            raise SimulatorError("count must be from 0 to 100000")
        done = [m for m in (self.sim.random_mutation() for _ in range(count)) if m is not None]
        return _json({"mutations": [m.to_json() for m in done]})

    # -- faults ----------------------------------------------------------------------------------------------------

    async def faults(self, request: web.Request) -> web.StreamResponse:
        return _json({"faults": [f.to_json() for f in self.sim.faults.active]})

    async def inject_fault(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        fault = self.sim.faults.inject(
            str(body.get("kind")),
            count=None if body.get("count") is None else int(body["count"]),
            fraction=None if body.get("fraction") is None else float(body["fraction"]),
            integration=body.get("integration"),
            latency=float(body.get("latency", 1.0)),
        )
        return _json(fault.to_json(), 201)

    async def clear_faults(self, request: web.Request) -> web.StreamResponse:
        self.sim.faults.clear()
        return _json({"faults": []})

    async def remove_fault(self, request: web.Request) -> web.StreamResponse:
        fault_id = _int(request.match_info["id"], "id", 0)
        if not self.sim.faults.remove(fault_id):
            raise NotFound(f"no active fault {fault_id}")
        return _json({"id": fault_id, "removed": True})

    # -- rate limit ------------------------------------------------------------------------------------------------

    def _rate_limit_json(self) -> dict[str, Any]:
        limiter = self.sim.rate_limiter
        return {"limit": limiter.limit, "window": limiter.window, "retry_after": limiter.retry_after}

    async def rate_limit(self, request: web.Request) -> web.StreamResponse:
        return _json(self._rate_limit_json())

    async def set_rate_limit(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        self.sim.rate_limiter.configure(
            limit=None if body.get("limit") is None else int(body["limit"]),
            window=None if body.get("window") is None else float(body["window"]),
            retry_after=None if body.get("retry_after") is None else bool(body["retry_after"]),
        )
        return _json(self._rate_limit_json())

    # -- interactions ----------------------------------------------------------------------------------------------

    async def recent_interactions(self, request: web.Request) -> web.StreamResponse:
        return _json({"interactions": self.interactions.recent(_int(request.query.get("limit"), "limit", 100))})

    async def interaction(self, request: web.Request) -> web.StreamResponse:
        found = self.interactions.get(_int(request.match_info["id"], "id", 0))
        if found is None:
            raise NotFound("no such interaction among the last 1000 requests")
        return _json(found)

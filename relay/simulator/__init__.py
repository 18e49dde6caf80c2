"""The Kombo simulator: a local stand-in for Kombo's unified API, faithful to ``../shared/kombo-openapi.json``.

Used by ``make run``, the tests and the benchmarks, and by anyone trying the relay or testing a consumer of its
events. Run it with ``relay simulate`` (see ``cli.py``), or in-process::

    from relay.simulator import Simulator, SimulatorServer, FaultKind

    acme = "personio:acme"
    sim = Simulator(api_key="k", integrations=[acme], users=100, seed=1)
    async with SimulatorServer(sim, port=0) as server:       # server.url == "http://127.0.0.1:PORT/v1"
        user = sim.create(acme, "ats/users")
        sim.update(acme, "ats/users", user["id"], {"first_name": "X"})   # changed_at moves
        sim.change_nested(acme, "ats/users", user["id"])              # changed_at stays; updated_after matches
        sim.delete(...); sim.restore(...); sim.hard_delete(...)
        sim.faults.inject(FaultKind.HTTP_503, count=3)
        sim.set_integration_state("personio:acme", "setup_pending")
        sim.mutations   # [Mutation(seq, time, integration, resource, id, kind, record), ...]

Modules, one concept each:

* ``model``: the ``Simulator``: integrations, seeding, queries, the Python API (pure: no I/O, no asyncio);
* ``store``, ``mutations``, ``errors``: how one resource's records are kept; what each mutation does, and the log;
  the exceptions;
* ``records``: what the records of each resource look like (generators faithful to the schemas);
* ``filters``, ``listing``, ``cursor``: the list endpoints' query parameters, pages and cursors;
* ``clock``, ``dice``: injectable time and Kombo's timestamp formats; deterministic ids and draws from the seed;
* ``faults``, ``ratelimit``, ``churn``: injected failures, the request budget, the steady stream of changes;
* ``api``, ``control``, ``server``: the ``/v1`` API, the ``/_sim/`` control API and the aiohttp server;
* ``webhooks``: signed Kombo ``data-changed`` webhooks after mutations (``--webhook-url``), batched per second;
* ``service``: the start/stop lifecycle (``async with``) of the server and the webhook sender;
* ``cli``: ``relay simulate``.
"""

from relay.simulator.clock import Clock, ManualClock
from relay.simulator.errors import InvalidMutation, NotFound, SimulatorError
from relay.simulator.faults import Fault, FaultKind
from relay.simulator.model import IntegrationState, Simulator
from relay.simulator.mutations import Mutation, MutationKind
from relay.simulator.records import RESOURCES
from relay.simulator.server import SimulatorServer
from relay.simulator.webhooks import WebhookSender

__all__ = [
    "RESOURCES",
    "Clock",
    "Fault",
    "FaultKind",
    "IntegrationState",
    "InvalidMutation",
    "ManualClock",
    "Mutation",
    "MutationKind",
    "NotFound",
    "Simulator",
    "SimulatorError",
    "SimulatorServer",
    "WebhookSender",
]

"""Webhooks out: after its mutations the simulator sends signed Kombo ``data-changed`` webhooks, as Kombo does.

::

    sender = WebhookSender(sim, "http://127.0.0.1:8080/webhooks/kombo", secret="s3cret")
    async with sender:          # or SimulatorServer(sim, webhook_url=..., webhook_secret=...), or
        sim.update(...)         # relay simulate --webhook-url URL --webhook-secret S
        # soon after: POST URL {"id": ..., "type": "data-changed", "data": {"integration_id": ...,
        #              "changed_models": [{"name": "ats_users"}], ...}} with X-Kombo-Signature

The payloads have the shapes of the spec's ``webhooks`` (``../shared/kombo-openapi.json``); ``X-Kombo-Signature``
is the HMAC-SHA256 of the body under the secret, base64url without padding.

Batching, per integration and category (ATS, HRIS): at most one ``data-changed`` every ``batch_seconds`` (default
1), naming each changed model once. The first change after a quiet period goes out at the next tick (50 ms); the
changes made while a batch period runs go together when it ends. A delivery that fails (connection refused, a
non-2xx answer) is retried a few times with backoff, like Kombo retries, then counted in ``failed``.

The other payloads (``sync_finished``, ``integration_state_changed``, ``integration_deleted``) are built by the
functions below and sent with :meth:`WebhookSender.send`, for tests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from relay.simulator.model import Simulator
from relay.simulator.service import Service
from relay.tasks import cancel_and_wait

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Kombo-Signature"
TICK_SECONDS = 0.05
RETRY_DELAYS = (0.5, 1.0, 2.0)  # seconds before each retry of a failed delivery
DELIVERIES_KEPT = 1000
_ID_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # base58, like Kombo's ids


# --- Payloads (pure) ----------------------------------------------------------------------------------------------


def sign(body: bytes, secret: str) -> str:
    """``X-Kombo-Signature``: HMAC-SHA256 of the raw body under the secret, base64url without padding."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def model_name(resource: str) -> str:
    """Kombo's model name of a list endpoint: ``ats/users`` -> ``ats_users``, ``ats/application-stages`` ->
    ``ats_application_stages``."""
    return resource.replace("/", "_").replace("-", "_")


def category(resource: str) -> str:
    """``ats/users`` -> ``ATS``, ``hris/employees`` -> ``HRIS``."""
    return resource.split("/", 1)[0].upper()


def webhook_id(rng: random.Random | None = None) -> str:
    """A fresh id in Kombo's style (24 base58 characters)."""
    draw = rng or random.SystemRandom()
    return "".join(draw.choice(_ID_ALPHABET) for _ in range(24))


def _tool(integration: str) -> str:
    return integration.split(":", 1)[0]


def _end_user() -> dict[str, Any]:
    return {"organization_name": "Simulated, Inc.", "creator_email": "admin@example.com", "origin_id": "1"}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def data_changed(
    integration: str, models: Iterable[str], *, ident: str | None = None, cat: str = "ATS"
) -> dict[str, Any]:
    return {
        "id": ident or webhook_id(),
        "type": "data-changed",
        "data": {
            "integration_id": integration,
            "integration_tool": _tool(integration),
            "integration_category": cat,
            "changed_models": [{"name": name} for name in dict.fromkeys(models)],
        },
    }


def sync_finished(integration: str, *, ident: str | None = None, state: str = "SUCCEEDED") -> dict[str, Any]:
    now = _now_iso()
    return {
        "id": ident or webhook_id(),
        "type": "sync-finished",
        "data": {
            "sync_id": webhook_id(),
            "sync_state": state,
            "sync_started_at": now,
            "sync_ended_at": now,
            "sync_duration_seconds": 0,
            "integration_id": integration,
            "integration_tool": _tool(integration),
            "integration_category": "ATS",
            "end_user": _end_user(),
            "log_url": "https://app.kombo.dev/simulated/logs",
        },
    }


def integration_state_changed(integration: str, state: str, *, ident: str | None = None) -> dict[str, Any]:
    """``state`` is one of ACTIVE, INVALID, INACTIVE."""
    return {
        "id": ident or webhook_id(),
        "type": "integration-state-changed",
        "data": {
            "integration_tool": _tool(integration),
            "integration_id": integration,
            "integration_category": "ATS",
            "end_user": _end_user(),
            "qa_status": "PASSED",
            "setup_status": "COMPLETED",
            "state": state,
            "updated_at": _now_iso(),
        },
    }


def integration_deleted(integration: str, *, ident: str | None = None) -> dict[str, Any]:
    return {
        "id": ident or webhook_id(),
        "type": "integration-deleted",
        "data": {
            "id": integration,
            "tool": _tool(integration),
            "category": "ATS",
            "end_user": _end_user(),
            "deleted_at": _now_iso(),
        },
    }


def signed(payload: dict[str, Any], secret: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a delivery of ``payload``."""
    body = orjson.dumps(payload)
    return body, {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, secret)}


# --- The sender -----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Delivery:
    """One webhook sent (or given up on): ``status`` is the last HTTP status, None if no answer came."""

    id: str
    type: str
    integration: str | None
    models: tuple[str, ...]
    queued_at: float  # time.monotonic() when the batch was closed
    status: int | None = None
    error: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookSender(Service):
    """Watches the simulator's mutation log and posts batched, signed ``data-changed`` webhooks to ``url``."""

    def __init__(
        self,
        sim: Simulator,
        url: str,
        secret: str,
        *,
        batch_seconds: float = 1.0,
        tick_seconds: float = TICK_SECONDS,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        timeout_seconds: float = 5.0,
    ) -> None:
        if not secret:
            raise ValueError("a webhook secret is required")
        if batch_seconds < 0:
            raise ValueError("batch_seconds must not be negative")
        self.sim = sim
        self.url = url
        self._secret = secret
        self.batch_seconds = batch_seconds
        self._tick = tick_seconds
        self._retry_delays = tuple(retry_delays)
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.deliveries: deque[Delivery] = deque(maxlen=DELIVERIES_KEPT)
        self.sent = 0  # delivered (a 2xx answer)
        self.failed = 0  # given up on after the retries
        self._seen = 0  # mutations already batched
        self.pending: dict[tuple[str, str], dict[str, None]] = {}  # (integration, category) -> models waiting
        self._last_sent: dict[tuple[str, str], float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[Delivery]] = set()

    def __repr__(self) -> str:  # never the secret
        return f"WebhookSender(url={self.url!r}, batch_seconds={self.batch_seconds})"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._seen = len(self.sim.mutations)  # what happened before the start is not announced
        self._task = asyncio.get_running_loop().create_task(self._run(), name="relay-simulator-webhooks")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        for sending in list(self._sending):
            sending.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- batching ----------------------------------------------------------------------------------------------------

    def collect(self) -> None:
        """Add the mutations logged since the last call to the pending batches."""
        mutations = self.sim.mutations
        for mutation in mutations[self._seen :]:
            key = (mutation.integration, category(mutation.resource))
            self.pending.setdefault(key, {})[model_name(mutation.resource)] = None
        self._seen = len(mutations)

    def due(self, now: float) -> list[tuple[str, str, tuple[str, ...]]]:
        """The batches whose period is over, removed from the pending ones: (integration, category, models)."""
        ready = [key for key in self.pending if now - self._last_sent.get(key, -1e18) >= self.batch_seconds]
        batches = []
        for key in ready:
            self._last_sent[key] = now
            batches.append((key[0], key[1], tuple(self.pending.pop(key))))
        return batches

    async def _run(self) -> None:
        while True:
            self.collect()
            for integration, cat, models in self.due(time.monotonic()):
                payload = data_changed(integration, models, cat=cat)
                self._spawn(payload, integration, models)
            await asyncio.sleep(self._tick)

    def _spawn(self, payload: dict[str, Any], integration: str | None, models: tuple[str, ...]) -> None:
        task = asyncio.get_running_loop().create_task(self.send(payload, integration=integration, models=models))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    # -- delivery ------------------------------------------------------------------------------------------------------

    async def send(
        self, payload: dict[str, Any], *, integration: str | None = None, models: tuple[str, ...] = ()
    ) -> Delivery:
        """Sign and post ``payload`` now, retrying a failed delivery; returns how it went."""
        delivery = Delivery(str(payload.get("id")), str(payload.get("type")), integration, models, time.monotonic())
        self.deliveries.append(delivery)
        body, headers = signed(payload, self._secret)
        for attempt, delay in enumerate((0.0, *self._retry_delays)):
            if delay:
                await asyncio.sleep(delay)
            delivery.attempts = attempt + 1
            try:
                delivery.status, delivery.error = await self._post(body, headers), None
            except (aiohttp.ClientError, TimeoutError) as error:
                delivery.status, delivery.error = None, type(error).__name__
            if delivery.ok:
                self.sent += 1
                return delivery
        self.failed += 1
        log.warning(
            "webhook delivery failed",
            extra={"url": self.url, "webhook_id": delivery.id, "status": delivery.status, "error": delivery.error},
        )
        return delivery

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        if self._session is None:
            raise RuntimeError("the webhook sender is not started")
        async with self._session.post(self.url, data=body, headers=headers) as response:
            await response.read()
            return response.status

"""Kombo webhooks in: a signed ``data-changed`` webhook makes the relay poll the changed resources at once.

Kombo's ``data-changed`` webhook names only the models that changed ("ats_users changed for integration X"); the
relay turns it into an immediate poll of the matching (integration, resource) pairs, whose diff then publishes the
precise per-record events. Periodic polling stays on as the safety net for webhooks that never arrive.

The parts, pure (no I/O) unless said otherwise:

* :func:`sign` / :func:`verify_signature`: ``X-Kombo-Signature`` is the HMAC-SHA256 of the raw body under the
  webhook secret, base64url without padding, compared in constant time.
* :func:`parse_webhook`: the body, checked against the shapes of ``../shared/kombo-openapi.json`` (``webhooks``).
* :class:`ModelMap`: Kombo model names (``ats_users``, ``hris_join_employees_teams``) to the list endpoints whose
  records they change (:data:`DEFAULT_MODEL_MAP`, overridable with ``RELAY_KOMBO_WEBHOOK_MODEL_MAP``).
* :class:`DedupWindow`: a webhook ``id`` seen within the window is acted on once.
* :class:`WebhookReceiver`: body and signature in, a :class:`Reply` out, acting on a :class:`PollTarget` (the
  scheduler): trigger polls, pause or resume an integration. It never waits for a poll.
* :func:`make_handler`: the aiohttp handler around it (reads at most the body limit, counts, logs).

Answers: 200 when handled (acted on, duplicate, or nothing to do), 202 for an integration this relay does not poll,
400 for malformed JSON or an unknown shape, 401 (empty body) for a missing or wrong signature, 413 for a body over
the limit, 408 for a body not read whole within 10 seconds, 503 (with Retry-After) beyond 64 webhooks being handled
or when the action could not be forwarded to the replica owning the integration (:mod:`relay.control`), and 503
(with Retry-After) while the relay has not read the registry of integrations yet (:attr:`WebhookReceiver.accepting`).
The signature is checked before the body is parsed, so nothing unsigned is ever interpreted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
import orjson
from aiohttp import web

from relay.config import Config, Secret
from relay.metrics import Metrics
from relay.webhook_labels import HANDLED_TYPES, WEBHOOK_OUTCOMES, WEBHOOK_TYPES

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Kombo-Signature"

# Kombo sends these too (see the spec's ``webhooks``); the relay has nothing to do for them and says so with a 200,
# so that Kombo does not retry them.
OTHER_KOMBO_TYPES: Final = (
    "connection-flow-failed",
    "assessment:order-received",
    "inline-assessment:order-received",
    "ai-apply-application-status-updated",
    "ai-apply-job-posting-status-updated",
)
# The labels of relay_webhooks_received_total, and what each means, are in relay.webhook_labels.
PAUSING_STATES: Final = ("INACTIVE", "INVALID")
# A client that sends the headers and then drips the body would otherwise hold a handler for ever. Kombo sends a
# webhook's body at once; ten seconds is ample for any real one (at most RELAY_KOMBO_WEBHOOK_MAX_BODY_BYTES).
BODY_READ_TIMEOUT_SECONDS: Final = 10.0
# Handling a webhook never waits for a poll, so only slow bodies keep handlers busy; 64 at once is far more than
# Kombo's deliveries need, and bounds what slow or hostile clients can hold. Beyond it: 503, Kombo retries later.
MAX_WEBHOOKS_IN_FLIGHT: Final = 64
RETRY_AFTER_SECONDS: Final = 1
_EMPTY_BODY_STATUSES: Final = (401, 408, 413, 503)  # no detail for a caller who may not even be Kombo
MAX_ID_LENGTH: Final = 256
# An integration webhook (RELAY_FOLLOW_INTEGRATIONS) is answered once the registry acknowledged its record (acks=all:
# milliseconds), or with a 503 after this long, so that Kombo retries it.
REGISTRY_WRITE_TIMEOUT_SECONDS: Final = 5.0


# --- Signatures ---------------------------------------------------------------------------------------------------


def sign(body: bytes, secret: str) -> str:
    """The ``X-Kombo-Signature`` of ``body``: HMAC-SHA256 under ``secret``, base64url without padding."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify_signature(body: bytes, signature: str | None, secret: str) -> bool:
    """Whether ``signature`` (the header's value, or None when missing) signs ``body``; in constant time."""
    if not signature:
        return False
    given = signature.strip().rstrip("=").encode("ascii", errors="replace")
    return hmac.compare_digest(sign(body, secret).encode("ascii"), given)


# --- Payloads -----------------------------------------------------------------------------------------------------


class InvalidWebhook(ValueError):
    """The body is not a webhook the relay understands (400). The message names the problem, never the body."""


@dataclass(frozen=True, slots=True)
class DataChanged:
    id: str
    integration_id: str
    models: tuple[str, ...]
    type: str = "data-changed"


@dataclass(frozen=True, slots=True)
class SyncFinished:
    id: str
    integration_id: str
    sync_state: str
    type: str = "sync-finished"


@dataclass(frozen=True, slots=True)
class IntegrationStateChanged:
    id: str
    integration_id: str
    state: str
    updated_at: str | None = None  # Kombo's time of the change (data.updated_at), as sent
    type: str = "integration-state-changed"


@dataclass(frozen=True, slots=True)
class IntegrationDeleted:
    id: str
    integration_id: str
    deleted_at: str | None = None  # Kombo's time of the deletion (data.deleted_at), as sent
    type: str = "integration-deleted"


@dataclass(frozen=True, slots=True)
class IntegrationCreated:
    """Acted on only with RELAY_FOLLOW_INTEGRATIONS (relay.registry_webhooks); answered and ignored otherwise."""

    id: str
    integration_id: str  # data.id; empty when the body has none (then nothing is done)
    category: str  # data.category: ATS, HRIS, ASSESSMENT, LMS
    type: str = "integration-created"


@dataclass(frozen=True, slots=True)
class OtherWebhook:
    """A type Kombo documents but the relay has nothing to do for."""

    id: str
    type: str


IntegrationWebhook = IntegrationCreated | IntegrationDeleted | IntegrationStateChanged
Webhook = DataChanged | SyncFinished | IntegrationStateChanged | IntegrationDeleted | IntegrationCreated | OtherWebhook


def type_label(raw_type: object) -> str:
    """The metric label for a webhook's ``type``: bounded, whatever the body says."""
    if raw_type in HANDLED_TYPES:
        return str(raw_type)
    return "other" if raw_type in OTHER_KOMBO_TYPES else "unknown"


def parse_webhook(body: bytes) -> Webhook:
    """The webhook in ``body``; raises :class:`InvalidWebhook` for malformed JSON or a shape the spec does not have.

    Fields the relay does not use are not checked, so that Kombo adding one does not turn webhooks into 400s.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidWebhook("the body is not JSON") from None
    if not isinstance(document, dict):
        raise InvalidWebhook("the body must be a JSON object")
    ident = _text(document, "id", "id")
    if len(ident) > MAX_ID_LENGTH:
        raise InvalidWebhook(f"id is longer than {MAX_ID_LENGTH} characters")
    kind = _text(document, "type", "type")
    data = document.get("data")
    if not isinstance(data, dict):
        raise InvalidWebhook("data must be an object")
    if kind == "data-changed":
        return DataChanged(ident, _text(data, "integration_id", "data.integration_id"), _changed_models(data))
    if kind == "sync-finished":
        state = data.get("sync_state")
        return SyncFinished(
            ident,
            _text(data, "integration_id", "data.integration_id"),
            state if isinstance(state, str) else "",
        )
    if kind == "integration-state-changed":
        return IntegrationStateChanged(
            ident,
            _text(data, "integration_id", "data.integration_id"),
            _text(data, "state", "data.state"),
            _optional_text(data, "updated_at"),
        )
    if kind == "integration-deleted":
        return IntegrationDeleted(ident, _text(data, "id", "data.id"), _optional_text(data, "deleted_at"))
    if kind == "integration-created":
        return IntegrationCreated(ident, _optional_text(data, "id") or "", _optional_text(data, "category") or "")
    if kind in OTHER_KOMBO_TYPES:
        return OtherWebhook(ident, kind)
    raise InvalidWebhook("unknown webhook type")


def _text(obj: Mapping[str, Any], key: str, name: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidWebhook(f"{name} must be a non-empty string")
    return value


def _optional_text(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _changed_models(data: Mapping[str, Any]) -> tuple[str, ...]:
    models = data.get("changed_models")
    if not isinstance(models, list):
        raise InvalidWebhook("data.changed_models must be a list")
    names: list[str] = []
    for model in models:
        if not isinstance(model, dict):
            raise InvalidWebhook("each of data.changed_models must be an object")
        names.append(_text(model, "name", "data.changed_models[].name"))
    return tuple(dict.fromkeys(names))


# --- Models to resources ------------------------------------------------------------------------------------------

# Each Kombo model (the names of the spec's data-changed ``changed_models``) with the list endpoints whose records
# change when it does: its own endpoint first, then those that embed it (GET /ats/jobs embeds stages, screening
# questions, postings and the hiring team; /ats/candidates embeds applications and tags; /hris/employees embeds
# employments, teams, groups, legal entity, work location and balances; ...). Join models ("connections") change
# only the records that embed the connection. Kombo's incremental filter matches nested changes, so a poll of the
# embedding endpoint finds them. A model missing here maps by rule to its own endpoint (ats_foo_bars ->
# ats/foo-bars), a join model missing here to nothing. RELAY_KOMBO_WEBHOOK_MODEL_MAP replaces entries.
DEFAULT_MODEL_MAP: Final[Mapping[str, tuple[str, ...]]] = {
    # ATS
    "ats_users": ("ats/users", "ats/jobs"),
    "ats_jobs": ("ats/jobs", "ats/applications", "ats/candidates"),
    "ats_job_postings": ("ats/jobs",),
    "ats_candidates": ("ats/candidates", "ats/applications"),
    "ats_application_stages": ("ats/application-stages", "ats/jobs", "ats/applications", "ats/candidates"),
    "ats_applications": ("ats/applications", "ats/candidates"),
    "ats_screening_questions": ("ats/jobs",),
    "ats_tags": ("ats/tags", "ats/candidates", "ats/applications"),
    "ats_interviews": ("ats/interviews", "ats/applications"),
    "ats_offers": ("ats/offers", "ats/applications"),
    "ats_rejection_reasons": ("ats/rejection-reasons",),
    "ats_roles": ("ats/roles",),
    "ats_join_candidates_tags": ("ats/candidates", "ats/applications"),
    "ats_join_jobs_application_stages": ("ats/jobs",),
    "ats_join_jobs_screening_questions": ("ats/jobs",),
    "ats_join_user_job_role_assignments": ("ats/jobs",),
    "ats_join_jobs_users": ("ats/jobs",),
    "ats_join_users_roles": ("ats/users",),
    "ats_join_interviews_users": ("ats/interviews",),
    # HRIS
    "hris_employees": ("hris/employees",),
    "hris_legal_entities": ("hris/legal-entities", "hris/employees", "hris/staffing-entities"),
    "hris_locations": ("hris/locations", "hris/employees", "hris/staffing-entities"),
    "hris_absence_types": ("hris/absence-types",),
    "hris_absences": ("hris/absences",),
    "hris_employments": ("hris/employments", "hris/employees"),
    "hris_teams": ("hris/teams", "hris/groups", "hris/employees"),
    "hris_time_off_balances": ("hris/time-off-balances", "hris/employees"),
    "hris_timesheets": ("hris/timesheets",),
    "hris_employee_document_categories": ("hris/employee-document-categories",),
    "hris_performance_reviews": ("hris/performance-reviews",),
    "hris_performance_review_cycles": ("hris/performance-review-cycles",),
    "hris_staffing_entities": ("hris/staffing-entities",),
    "hris_join_employees_teams": ("hris/employees",),
    "hris_join_staffing_entities_locations": ("hris/staffing-entities",),
    "hris_join_staffing_entities_legal_entities": ("hris/staffing-entities",),
    "hris_join_staffing_entities_groups": ("hris/staffing-entities",),
    # LMS
    "lms_users": ("lms/users", "lms/course-progressions"),
    "lms_course_providers": ("lms/courses",),
    "lms_skills": ("lms/skills", "lms/courses"),
    "lms_courses": ("lms/courses", "lms/course-progressions"),
    "lms_course_revisions": ("lms/courses", "lms/course-progressions"),
    "lms_course_progressions": ("lms/course-progressions",),
    "lms_join_revisions_skills": ("lms/courses",),
}


def own_resource(model: str) -> str | None:
    """The list endpoint of a model by Kombo's naming rule: ``ats_application_stages`` -> ``ats/application-stages``;
    None for a join model (``*_join_*``) or a name without a category."""
    category, _, name = model.partition("_")
    if not name or name.startswith("join_"):
        return None
    return f"{category}/{name.replace('_', '-')}"


def _same_resource_key(resource: str) -> str:
    # Kombo's paths use hyphens (ats/application-stages); an operator may write underscores. Both mean the same.
    return resource.replace("-", "_")


class ModelMap:
    """Which configured resources a set of changed models affects."""

    def __init__(self, overrides: Iterable[tuple[str, tuple[str, ...]]] = ()) -> None:
        self._map: dict[str, tuple[str, ...]] = {**DEFAULT_MODEL_MAP, **dict(overrides)}

    def resources_for(self, model: str) -> tuple[str, ...]:
        """The endpoints a change of ``model`` affects (configured or not)."""
        if model in self._map:
            return self._map[model]
        own = own_resource(model)
        return (own,) if own else ()

    def affected(self, models: Iterable[str], configured: Iterable[str]) -> tuple[str, ...]:
        """The ``configured`` resources any of ``models`` affects, in configured order."""
        wanted = {_same_resource_key(r) for model in models for r in self.resources_for(model)}
        return tuple(r for r in configured if _same_resource_key(r) in wanted)


# --- Deduplication ------------------------------------------------------------------------------------------------


class DedupWindow:
    """Remembers webhook ids for ``seconds`` (0: remembers nothing), at most ``max_entries`` of them (the oldest go
    first), so a redelivered webhook is acted on once and memory stays bounded."""

    def __init__(
        self, seconds: float, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> when first seen; oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, ident: str) -> bool:
        """True if ``ident`` was seen within the window; otherwise remember it and return False."""
        if self.seconds <= 0:
            return False
        now = self._clock()
        horizon = now - self.seconds
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at > horizon and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if ident in self._seen:
            return True
        self._seen[ident] = now
        return False

    def forget(self, ident: str) -> None:
        """Forget ``ident``, so that its redelivery is acted on: acting on it failed."""
        self._seen.pop(ident, None)


# --- Acting on webhooks -------------------------------------------------------------------------------------------


class PollTarget(Protocol):
    """What the receiver acts on: :class:`relay.scheduler.Scheduler`, or a fake in tests."""

    def resources_of(self, integration: str) -> tuple[str, ...]:
        """The resources polled for ``integration``; empty when it is not configured."""
        ...

    def trigger(self, integration: str, resource: str, *, received_at: float | None = None) -> bool: ...

    def is_paused(self, integration: str) -> bool: ...

    def pause(self, integration: str) -> bool: ...

    def resume(self, integration: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    secret: Secret
    path: str
    max_body_bytes: int
    model_map: ModelMap
    dedup_seconds: float
    follow_integration_state: bool
    follow_integrations: bool = False

    @classmethod
    def from_config(cls, config: Config) -> WebhookSettings | None:
        """The settings, or None when no secret is configured (the endpoint is off)."""
        if config.kombo_webhook_secret is None:
            return None
        return cls(
            secret=config.kombo_webhook_secret,
            path=config.kombo_webhook_path,
            max_body_bytes=config.kombo_webhook_max_body_bytes,
            model_map=ModelMap(config.kombo_webhook_model_map or ()),
            dedup_seconds=config.kombo_webhook_dedup_seconds,
            follow_integration_state=config.follow_integration_state,
            follow_integrations=config.follow_integrations,
        )


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    outcome: str
    type: str = "unknown"
    detail: str | None = None
    webhook_id: str | None = None
    integration: str | None = None
    polls: tuple[str, ...] = field(default=())
    follow: IntegrationWebhook | None = None  # for the registry (RELAY_FOLLOW_INTEGRATIONS): make_handler applies it

    def body(self) -> bytes:
        if self.status in _EMPTY_BODY_STATUSES:
            return b""  # no detail for a caller who may not even be Kombo
        if self.status == 400:
            return orjson.dumps({"error": self.detail or "invalid webhook"})
        return orjson.dumps({"outcome": self.outcome})

    def __post_init__(self) -> None:
        assert self.type in WEBHOOK_TYPES, self.type
        assert self.outcome in WEBHOOK_OUTCOMES, self.outcome


class IntegrationFollower(Protocol):
    """What applies Kombo's integration webhooks to the registry (:class:`relay.registry_webhooks.RegistryFollower`):
    returns the answer's status and outcome; raises when the registry could not be written."""

    async def apply(self, webhook: IntegrationWebhook) -> tuple[int, str]: ...


class WebhookReceiver:
    """Verifies, parses, de-duplicates and acts on one webhook at a time. No I/O and no waiting: acting is setting
    flags on the scheduler, whose loops do the polling. With RELAY_FOLLOW_INTEGRATIONS, an integration webhook is
    handed back in :attr:`Reply.follow`, for :func:`make_handler` to apply to the registry through
    :attr:`integrations`."""

    def __init__(
        self, settings: WebhookSettings, target: PollTarget, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.target = target
        self.integrations: IntegrationFollower | None = None  # set by the relay when settings.follow_integrations
        self.dedup = DedupWindow(settings.dedup_seconds, clock=clock)
        # False while the relay has not read the registry of integrations: any answer given then would be a guess
        # (202 unknown_integration for a seeded integration, an integration webhook judged against an empty
        # registry), and Kombo does not retry a 2xx. A 503 makes it retry once the relay knows.
        self.accepting = True
        self._clock = clock

    def too_large(self) -> Reply:
        return Reply(413, "too_large")

    def receive(self, body: bytes, signature: str | None, *, received_at: float | None = None) -> Reply:
        received_at = self._clock() if received_at is None else received_at
        if len(body) > self.settings.max_body_bytes:
            return self.too_large()
        if not verify_signature(body, signature, self.settings.secret.reveal()):
            return Reply(401, "unauthorized")
        try:
            webhook = parse_webhook(body)
        except InvalidWebhook as error:
            return Reply(400, "invalid", type_label(_peek_type(body)), detail=str(error))
        integration = None if isinstance(webhook, OtherWebhook) else webhook.integration_id
        reply = self._act(webhook, received_at) if self.accepting else Reply(503, "starting")
        return Reply(
            reply.status,
            reply.outcome,
            type_label(webhook.type),
            webhook_id=webhook.id,
            integration=integration,
            polls=reply.polls,
            follow=reply.follow,
        )

    def _act(self, webhook: Webhook, received_at: float) -> Reply:
        if isinstance(webhook, OtherWebhook):
            return Reply(200, "ignored")
        if isinstance(webhook, IntegrationWebhook) and self.settings.follow_integrations:
            if self.dedup.seen(webhook.id):
                return Reply(200, "duplicate")
            return Reply(200, "accepted", follow=webhook)  # applied to the registry by make_handler
        if isinstance(webhook, IntegrationCreated):
            return Reply(200, "ignored")
        resources = self.target.resources_of(webhook.integration_id)
        if not resources:
            return Reply(202, "unknown_integration")
        if self.dedup.seen(webhook.id):
            return Reply(200, "duplicate")
        if isinstance(webhook, IntegrationStateChanged | IntegrationDeleted):
            return self._follow_state(webhook)
        if self.target.is_paused(webhook.integration_id):
            return Reply(200, "paused")
        if isinstance(webhook, DataChanged):
            resources = self.settings.model_map.affected(webhook.models, resources)
        triggered = tuple(
            r for r in resources if self.target.trigger(webhook.integration_id, r, received_at=received_at)
        )
        return Reply(200, "accepted" if triggered else "ignored", polls=triggered)

    def _follow_state(self, webhook: IntegrationStateChanged | IntegrationDeleted) -> Reply:
        if not self.settings.follow_integration_state:
            return Reply(200, "ignored")
        if isinstance(webhook, IntegrationDeleted) or webhook.state.upper() in PAUSING_STATES:
            self.target.pause(webhook.integration_id)
        elif webhook.state.upper() == "ACTIVE":
            self.target.resume(webhook.integration_id)
        else:
            return Reply(200, "ignored")
        return Reply(200, "accepted")


def _peek_type(body: bytes) -> object:
    """The ``type`` of a body that failed validation, for the metric label only (signed, so safe to look at)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document.get("type") if isinstance(document, dict) else None


# --- HTTP -----------------------------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes (without reading the rest)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def make_handler(
    receiver: WebhookReceiver,
    metrics: Metrics,
    *,
    body_timeout: float = BODY_READ_TIMEOUT_SECONDS,
    max_in_flight: int = MAX_WEBHOOKS_IN_FLIGHT,
    registry_timeout: float = REGISTRY_WRITE_TIMEOUT_SECONDS,
) -> Handler:
    """The aiohttp handler of ``POST {RELAY_KOMBO_WEBHOOK_PATH}``. It answers without waiting for any poll; when the
    target has an ``async def flush(webhook_id)`` (it forwards the actions to another replica), after it returned.

    A body not read whole within ``body_timeout`` seconds gets 408; beyond ``max_in_flight`` webhooks being handled
    at once (a handler is only busy reading a body: acting never waits), a webhook gets 503 at once, with Retry-After.
    """
    in_flight = 0
    # A target that acts elsewhere (relay.control.ForwardingTarget) collects what the receiver asks of it; the answer
    # waits until flush() says it was done, and is 503 (Kombo retries) when it could not be. Looked up per webhook: a
    # replica that joins a fleet gives the receiver such a target after the endpoint is up.

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight
        received_at = time.monotonic()
        if in_flight >= max_in_flight:
            return _answer(metrics, Reply(503, "busy"), request, received_at)
        in_flight += 1
        try:
            async with asyncio.timeout(body_timeout):
                body = await read_limited(request, receiver.settings.max_body_bytes)
        except TimeoutError:
            return _answer(metrics, Reply(408, "timeout"), request, received_at)
        except (aiohttp.ClientError, OSError, ValueError) as error:  # a broken chunked body, a client gone
            return _answer(metrics, Reply(400, "invalid", detail=f"unreadable body: {error}"), request, received_at)
        finally:
            in_flight -= 1
        if body is None:
            reply = receiver.too_large()
        else:
            reply = receiver.receive(body, request.headers.get(SIGNATURE_HEADER), received_at=received_at)
            flush: Callable[[str | None], Awaitable[None]] | None = getattr(receiver.target, "flush", None)
            if reply.follow is not None:
                reply = await _followed(reply, reply.follow)
            elif flush is not None:
                reply = await _flushed(flush, reply)
        return _answer(metrics, reply, request, received_at)

    async def _followed(reply: Reply, webhook: IntegrationWebhook) -> Reply:
        follower = receiver.integrations
        if follower is None:  # not wired (a relay that follows no registry): nothing to do
            return Reply(200, "ignored", reply.type, webhook_id=reply.webhook_id, integration=reply.integration)
        try:
            async with asyncio.timeout(registry_timeout):
                status, outcome = await follower.apply(webhook)
        except Exception as error:  # not written, whatever the reason (a timeout too): Kombo retries a 503
            receiver.dedup.forget(webhook.id)  # so that Kombo's retry is acted on
            detail = f"the registry was not written: {type(error).__name__}: {error}"
            return Reply(503, "unavailable", reply.type, detail, reply.webhook_id, reply.integration)
        return Reply(status, outcome, reply.type, webhook_id=reply.webhook_id, integration=reply.integration)

    async def _flushed(flush: Callable[[str | None], Awaitable[None]], reply: Reply) -> Reply:
        # Right after receive(), with no await in between: what the target collected is this webhook's.
        try:
            await flush(reply.webhook_id)
        except Exception as error:  # not forwarded, whatever the reason: Kombo retries a 503
            if reply.webhook_id is not None:
                receiver.dedup.forget(reply.webhook_id)  # so that Kombo's retry is acted on
            return Reply(503, "unavailable", reply.type, str(error), reply.webhook_id, reply.integration)
        return reply

    return handle


def _answer(metrics: Metrics, reply: Reply, request: web.Request, received_at: float) -> web.Response:
    """The HTTP answer of ``reply``, counted and logged."""
    metrics.webhooks_received.labels(reply.type, reply.outcome).inc()
    _log(reply, request, time.monotonic() - received_at)
    response = web.Response(status=reply.status, body=reply.body())
    if reply.status not in _EMPTY_BODY_STATUSES:
        response.content_type = "application/json"
    if reply.status in (408, 413, 503):
        response.force_close()  # the rest of the body was not read; the connection cannot be reused
    if reply.status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _log(reply: Reply, request: web.Request, seconds: float) -> None:
    extra: dict[str, object] = {
        "type": reply.type,
        "outcome": reply.outcome,
        "status": reply.status,
        "webhook_id": reply.webhook_id,
        "integration": reply.integration,
        "seconds": round(seconds, 4),
    }
    if reply.polls:
        extra["resources"] = list(reply.polls)
    if reply.status >= 400:
        extra["remote"] = request.remote
        if reply.detail:
            extra["error"] = reply.detail
        log.warning("webhook rejected", extra=extra)
    elif reply.outcome in ("accepted", "unknown_integration"):
        log.info("webhook received", extra=extra)
    else:
        log.debug("webhook received", extra=extra)

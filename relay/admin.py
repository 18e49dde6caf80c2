"""The admin HTTP API: the operations of ``relay integrations``, ``relay resnapshot``, ``relay reconcile`` and ``relay
state reset`` as HTTP requests on the relay's port (RELAY_HTTP_PORT), for teams that operate through a UI.

  GET  /admin/integrations                     relay integrations list
  POST /admin/integrations/{id}                relay integrations add ID    {"category", "resources", "by", ...}
  POST /admin/integrations/{id}/remove         relay integrations remove ID {"by", ...}
  POST /admin/integrations/{id}/pause          relay integrations pause ID  {"by", ...}
  POST /admin/integrations/{id}/resume         relay integrations resume ID {"by", ...}
  POST /admin/integrations/{id}/resnapshot     relay resnapshot ID          {"resource", "wait", "timeout"}
  POST /admin/integrations/{id}/reconcile      relay reconcile ID           {"resource", "wait", "timeout"}
  POST /admin/integrations/{id}/reset          relay state reset ID --yes   {"resource", "wait", "timeout", "yes"}

The registry's edits take ``"wait"`` and ``"timeout"`` too (``...``): like the CLI without --no-wait, they wait (30
s by default) for the owner's acknowledgement that it applied the change. Every body field is optional (reset's
``"yes": true`` excepted, as ``--yes``), and so is the body. The API is off unless RELAY_ADMIN_TOKEN (or
RELAY_ADMIN_TOKEN_FILE) is set; off, every path under /admin answers 404. On, each request must carry
``Authorization: Bearer <token>``, compared in constant time; without it, or with another token, it gets 401 with
``WWW-Authenticate``. The token is never logged.

What belongs here: the routes, the bearer check, the bound on requests in flight (MAX_IN_FLIGHT), the parsing of
request bodies (untrusted: at most MAX_BODY_BYTES, JSON objects of known fields and types, each problem named), the
mapping of outcomes to HTTP statuses and the requests' log lines and metric. The conversations with Kafka, and their
wording, are the CLIs' (:mod:`relay.registry_cli`, :mod:`relay.commands_cli`): an operation says over HTTP what its
command prints.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from relay import commands_cli, registry_cli
from relay.config import Config
from relay.errors import (
    KafkaAuthenticationFailed,
    KafkaAuthorizationFailed,
    KafkaTimedOut,
    KafkaUnavailable,
    UnknownIntegration,
)
from relay.metrics import Metrics
from relay.registry import CATEGORIES, Category, check_integration_id, check_resources
from relay.registry_topic import DEFAULT_TIMEOUT_SECONDS
from relay.secret import Secret
from relay.webhooks import read_limited

log = logging.getLogger(__name__)

PREFIX: Final = "/admin"
MAX_BODY_BYTES: Final = 64 * 1024  # a request names one integration: far below this
BODY_READ_TIMEOUT_SECONDS: Final = 10.0
MAX_TIMEOUT_SECONDS: Final = 300.0  # a request's own "timeout": longer would outlive most proxies anyway
# Each request opens Kafka clients of its own and a command may hold them for its whole timeout: a UI polling in a loop
# must not pile them up on the relay (nor on the brokers). Beyond this many at once, 503 with Retry-After.
MAX_IN_FLIGHT: Final = 16
RETRY_AFTER_SECONDS: Final = 1
REALM: Final = 'Bearer realm="relay admin"'
REGISTRY_EDITS: Final = ("remove", "pause", "resume")
COMMANDS: Final = commands_cli.KINDS  # resnapshot, reconcile, reset

# The outcome of a request: its label in relay_admin_requests_total, and its HTTP status.
STATUSES: Final[Mapping[str, int]] = {
    "done": 200,
    "sent": 202,  # "wait": false: Kafka has the command
    "no_ack": 202,  # sent, but no owner acknowledged it within the timeout: it may still run
    "invalid": 400,
    "unauthorized": 401,
    "unknown_integration": 404,
    "too_large": 413,
    "failed": 500,  # the owner acknowledged that the command failed
    "kafka_refused": 502,  # Kafka's ACLs refuse the relay's principal, or Kafka refused its credentials
    "kafka_unavailable": 503,
    "busy": 503,  # MAX_IN_FLIGHT requests in progress
    "kafka_timeout": 504,
}
# What a failure of an operation is, by exception, most specific first (KafkaTimedOut is a KafkaUnavailable,
# UnknownIntegration no ValueError): as the CLIs' exit codes 9, 2, 6, 7 and 8.
FAILURES: Final[tuple[tuple[type[Exception], str], ...]] = (
    (UnknownIntegration, "unknown_integration"),
    (ValueError, "invalid"),
    (KafkaAuthorizationFailed, "kafka_refused"),
    (KafkaAuthenticationFailed, "kafka_refused"),
    (KafkaTimedOut, "kafka_timeout"),
    (KafkaUnavailable, "kafka_unavailable"),
)
_FAILURE_TYPES: Final = tuple(failure for failure, _ in FAILURES)


class BodyTooLarge(Exception):
    """A request body above MAX_BODY_BYTES."""


def outcome_of(error: Exception) -> str:
    """The outcome of an operation that failed with ``error``, one of FAILURES."""
    return next(outcome for failure, outcome in FAILURES if isinstance(error, failure))


# --- Bodies -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddRequest:
    category: Category | None
    resources: tuple[str, ...] | None
    by: str | None
    wait: bool = True  # for the owner's acknowledgement, as the CLI without --no-wait
    timeout: float = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True)
class EditRequest:
    by: str | None
    wait: bool = True
    timeout: float = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True)
class CommandRequest:
    resource: str | None
    wait: bool
    timeout: float
    yes: bool


def parse_add(body: bytes) -> AddRequest:
    """The body of an add; raises ValueError naming the field at fault."""
    document = _object(body, ("category", "resources", "by", "wait", "timeout"))
    category = _optional(document, "category", str)
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"field 'category' must be one of {', '.join(CATEGORIES)} or null, got {category!r}")
    resources = _optional(document, "resources", list)
    if resources is not None:
        if not all(isinstance(resource, str) for resource in resources):
            raise ValueError('field \'resources\' must be a list of strings, like ["ats/users", "ats/jobs"]')
        try:
            check_resources(category, tuple(resources))
        except ValueError as problem:
            raise ValueError(f"field 'resources': {problem}") from None
    return AddRequest(
        category,  # one of CATEGORIES: checked above
        None if resources is None else tuple(resources),
        _optional(document, "by", str),
        *_waiting(document, DEFAULT_TIMEOUT_SECONDS),
    )


def parse_edit(body: bytes) -> EditRequest:
    """The body of a remove, pause or resume; raises ValueError naming the field at fault."""
    document = _object(body, ("by", "wait", "timeout"))
    return EditRequest(_optional(document, "by", str), *_waiting(document, DEFAULT_TIMEOUT_SECONDS))


def parse_command(body: bytes, kind: str) -> CommandRequest:
    """The body of a resnapshot, reconcile or reset; raises ValueError naming the field at fault."""
    fields = ("resource", "wait", "timeout", "yes") if kind == "reset" else ("resource", "wait", "timeout")
    document = _object(body, fields)
    wait, timeout = _waiting(document, commands_cli.DEFAULT_WAIT_SECONDS)
    return CommandRequest(_optional(document, "resource", str), wait, timeout, _optional(document, "yes", bool) is True)


def _waiting(document: Mapping[str, object], default_timeout: float) -> tuple[bool, float]:
    """The ``wait`` (default true) and ``timeout`` fields: whether, and how long, to wait for the owner's ack."""
    timeout = _optional(document, "timeout", (int, float))
    if isinstance(timeout, bool) or (timeout is not None and not 0 < timeout <= MAX_TIMEOUT_SECONDS):
        raise ValueError(f"field 'timeout' must be a number of seconds > 0 and <= {MAX_TIMEOUT_SECONDS:g}")
    wait = _optional(document, "wait", bool)
    return True if wait is None else wait, default_timeout if timeout is None else float(timeout)


def _object(body: bytes, fields: tuple[str, ...]) -> dict[str, object]:
    """``body`` as a JSON object of only ``fields`` (an empty body is an empty object)."""
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"the body must be a JSON object, not {_json_type(document)}")
    if unknown := sorted(set(document) - set(fields)):
        known = f"the fields are {', '.join(fields)}" if fields else "it takes none"
        raise ValueError(f"unknown field {unknown[0]!r}; {known}")
    return document


def _optional(document: Mapping[str, object], name: str, kind: type | tuple[type, ...]) -> Any:
    """The field ``name`` of ``document``, None when absent or null; raises ValueError when it is not a ``kind``."""
    value = document.get(name)
    if value is not None and not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(dict.fromkeys(_JSON_TYPES.get(each, each.__name__) for each in kinds))
        raise ValueError(f"field {name!r} must be {expected}, not {_json_type(value)}")
    return value


_JSON_TYPES: Final[Mapping[type, str]] = {
    str: "a string",
    bool: "true or false",
    int: "a number",
    float: "a number",
    list: "a list",
    dict: "an object",
}


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "true or false"
    return _JSON_TYPES.get(type(value), "null")


# --- Authentication ---------------------------------------------------------------------------------------------------


def bearer_matches(authorization: str | None, token: Secret) -> bool:
    """Whether the Authorization header carries ``token`` as a bearer token. Constant time in the token's content:
    a guess learns nothing from how long the answer took."""
    scheme, _, credentials = (authorization or "").partition(" ")
    supplied = credentials.strip() if scheme.lower() == "bearer" else ""
    return hmac.compare_digest(supplied.encode(), token.reveal().encode())


# --- Answers ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What an operation ends with: its outcome (the status follows), and the JSON document of the response."""

    outcome: str
    document: dict[str, Any]

    @property
    def status(self) -> int:
        return STATUSES[self.outcome]


def failure(operation: str, integration: str | None, error: Exception | str, outcome: str) -> Answer:
    return Answer(
        outcome, {"operation": operation, "outcome": outcome, "integration": integration, "error": str(error)}
    )


# An operation: given its name (one of ADMIN_OPERATIONS), the request and its body, what to answer.
Operation = Callable[[str, web.Request, bytes], Awaitable[Answer]]


class AdminApi:
    """The handlers of the admin API, for one relay's configuration."""

    def __init__(self, config: Config, metrics: Metrics, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        assert config.admin_token is not None, "the admin API is on only with a token"
        self._config = config
        self._token = config.admin_token
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self.in_flight = 0  # requests past the bearer check, not answered yet
        metrics.initialise_admin()

    def routes(self) -> list[web.RouteDef]:
        integration = f"{PREFIX}/integrations/{{integration}}"
        routes = [
            web.get(f"{PREFIX}/integrations", self._handler("list", self._list)),
            web.post(integration, self._handler("add", self._add)),
        ]
        routes += [web.post(f"{integration}/{edit}", self._handler(edit, self._edit)) for edit in REGISTRY_EDITS]
        routes += [web.post(f"{integration}/{kind}", self._handler(kind, self._command)) for kind in COMMANDS]
        return routes

    def _handler(self, operation: str, run: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            started = time.monotonic()
            integration = request.match_info.get("integration")
            if not bearer_matches(request.headers.get("Authorization"), self._token):
                why = "a bearer token is required" if "Authorization" not in request.headers else "wrong token"
                answer = failure(operation, integration, f"unauthorized: {why}", "unauthorized")
                challenge = REALM if "Authorization" not in request.headers else f'{REALM}, error="invalid_token"'
                return self._respond(request, operation, answer, started, {"WWW-Authenticate": challenge})
            if self.in_flight >= self._max_in_flight:
                why = f"busy: {self.in_flight} admin requests are in progress; try again"
                answer = failure(operation, integration, why, "busy")
                return self._respond(request, operation, answer, started, {"Retry-After": str(RETRY_AFTER_SECONDS)})
            self.in_flight += 1
            try:
                body = await _read_body(request)
                answer = await run(operation, request, body)
            except BodyTooLarge as error:
                answer = failure(operation, integration, error, "too_large")
            except _FAILURE_TYPES as error:
                answer = failure(operation, integration, error, outcome_of(error))
            finally:
                self.in_flight -= 1
            return self._respond(request, operation, answer, started)

        return handle

    def _respond(
        self,
        request: web.Request,
        operation: str,
        answer: Answer,
        started: float,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        self._metrics.admin_requests.labels(operation, answer.outcome).inc()
        extra = {
            "operation": operation,
            "integration": answer.document.get("integration"),
            "outcome": answer.outcome,
            "status": answer.status,
            "remote": request.remote,
            "seconds": round(time.monotonic() - started, 4),
        }
        if "error" in answer.document:
            extra["error"] = answer.document["error"]
        level = logging.WARNING if answer.status in (401, 500, 502, 503, 504) else logging.INFO
        log.log(level, "admin request", extra=extra)
        body = orjson.dumps(answer.document, option=orjson.OPT_INDENT_2)
        return web.Response(body=body, status=answer.status, content_type="application/json", headers=headers)

    # --- The operations ---------------------------------------------------------------------------------------------

    async def _list(self, operation: str, request: web.Request, body: bytes) -> Answer:
        _object(body, ())  # nothing to give, but say so when something is
        registry = await registry_cli.read_registry(self._config, timeout=DEFAULT_TIMEOUT_SECONDS)
        integrations = registry_cli.list_document(self._config, registry)
        return Answer("done", {"operation": "list", "outcome": "done", "integrations": integrations})

    async def _add(self, operation: str, request: web.Request, body: bytes) -> Answer:
        integration = _integration(request)
        asked = parse_add(body)
        edit = registry_cli.make_edit(
            "add",
            integration,
            by=_by(asked.by, request),
            category=asked.category,
            resources=asked.resources,
        )
        return await self._registry_edit("add", integration, edit, wait=asked.wait, timeout=asked.timeout)

    async def _edit(self, action: str, request: web.Request, body: bytes) -> Answer:
        integration = _integration(request)
        asked = parse_edit(body)
        edit = registry_cli.make_edit(action, integration, by=_by(asked.by, request))
        return await self._registry_edit(action, integration, edit, wait=asked.wait, timeout=asked.timeout)

    async def _registry_edit(
        self, action: str, integration: str, edit: registry_cli.EditOf, *, wait: bool, timeout: float
    ) -> Answer:
        done = await registry_cli.edit_registry(self._config, action, integration, edit, timeout=timeout, wait=wait)
        message = done.text(self._config)
        if done.written is not None and done.waited and done.ack is None:  # written; its owner did not say so
            outcome, message = "no_ack", f"{message}; {registry_cli.no_ack_text(self._config, done, timeout)}"
        else:
            outcome = "done"
            if done.ack is not None:
                message = f"{message}; the owner acknowledged it: {done.ack.message or done.ack.outcome}"
        return Answer(outcome, {"operation": action, "outcome": outcome, "message": message, **done.document()})

    async def _command(self, kind: str, request: web.Request, body: bytes) -> Answer:
        integration = _integration(request)
        asked = parse_command(body, kind)
        if kind == "reset" and not asked.yes:
            why = commands_cli.reset_unconfirmed_text(integration, asked.resource, 'Send {"yes": true}')
            return failure(kind, integration, why, "invalid")
        sent = await commands_cli.send_command(
            self._config, kind, integration, asked.resource, timeout=asked.timeout, wait=asked.wait
        )
        if not asked.wait:
            outcome, message = "sent", commands_cli.sent_text(self._config, sent)
        elif sent.ack is None:
            outcome, message = "no_ack", commands_cli.no_ack_text(sent.command, asked.timeout)
        elif sent.ack.outcome == "ok":
            outcome, message = "done", commands_cli.done_text(sent.command, sent.ack)
        else:
            outcome, message = "failed", commands_cli.failed_text(sent.ack)
        reply = commands_cli.document(sent.command, sent.ack)
        document = {"operation": kind, "outcome": outcome, "message": message, **reply}
        return Answer(outcome, document)


async def _read_body(request: web.Request) -> bytes:
    """The request's body; raises BodyTooLarge beyond MAX_BODY_BYTES (not reading the rest), ValueError when it does
    not arrive within BODY_READ_TIMEOUT_SECONDS."""
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_SECONDS):
            body = await read_limited(request, MAX_BODY_BYTES)
    except TimeoutError:
        raise ValueError(f"the body did not arrive within {BODY_READ_TIMEOUT_SECONDS:g} s") from None
    if body is None:
        raise BodyTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    return body


def _integration(request: web.Request) -> str:
    integration = request.match_info["integration"]
    check_integration_id(integration)
    return integration


def _by(given: str | None, request: web.Request) -> str:
    """Who the registry records as making a change: as given, or the API and the client's address."""
    return given if given is not None else f"admin API ({request.remote or 'unknown'})"


# --- Routes -----------------------------------------------------------------------------------------------------------


async def _off(request: web.Request) -> web.Response:
    document = {"error": "not found: the admin API is off (set RELAY_ADMIN_TOKEN or RELAY_ADMIN_TOKEN_FILE)"}
    return web.Response(body=orjson.dumps(document), status=404, content_type="application/json")


def admin_routes(config: Config, metrics: Metrics) -> list[web.RouteDef]:
    """The routes of the admin API when RELAY_ADMIN_TOKEN is set; else a 404 for every path under /admin."""
    if config.admin_token is None:
        return [web.route("*", PREFIX, _off), web.route("*", f"{PREFIX}/{{path:.*}}", _off)]
    return AdminApi(config, metrics).routes()

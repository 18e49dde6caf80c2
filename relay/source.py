"""The source client: one page of a Kombo-style list endpoint per call, with Kombo's error handling.

One pooled aiohttp session serves every integration. Each request sends ``Authorization: Bearer``,
``X-Integration-Id``, ``page_size``, ``include_deleted=true`` and, when given, ``updated_after`` and ``cursor``;
Kombo's cursors do not carry the filters, so the filters go with every page.

Errors are classified by the envelope's ``error.code``, as Kombo advises, and only then by HTTP status:

* rate limits (``PLATFORM.RATE_LIMIT_EXCEEDED``, ``REMOTE.RATE_LIMIT_EXCEEDED``,
  ``PLATFORM.CONCURRENCY_LIMIT_EXCEEDED``, or a bare 429), ``REMOTE.SERVICE_UNAVAILABLE``, unknown 5xx, timeouts,
  connection errors and malformed bodies are retried here with exponential backoff and full jitter, at most
  ``RELAY_SOURCE_MAX_RETRIES`` times, honouring ``Retry-After`` or ``ratelimit-reset``;
* ``INTEGRATION.*`` and ``PLATFORM.INTEGRATION_NOT_FOUND`` raise :class:`~relay.errors.IntegrationError`: the caller
  backs off that integration and leaves the others alone;
* ``PLATFORM.INPUT_INVALID`` on a request that carried a cursor raises :class:`~relay.errors.CursorRejected`;
* ``PLATFORM.AUTHENTICATION_INVALID`` / ``PLATFORM.IP_NOT_WHITELISTED`` raise
  :class:`~relay.errors.AuthenticationError`.

Before the budget runs out the client slows down: when ``ratelimit-remaining`` falls to
``RELAY_SOURCE_RATELIMIT_MIN_REMAINING`` it spreads the remaining requests over the time until ``ratelimit-reset``.
The budget is kept per integration, from that integration's latest response, so one integration's answer never makes
another wait; and every wait (a budget running low, ``Retry-After``, a back-off) lends the poll's place under
``RELAY_MAX_CONCURRENT_POLLS`` to other polls meanwhile (:mod:`relay.slots`).

A wait taken from a header is never longer than ``RELAY_SOURCE_BACKOFF_MAX_SECONDS`` (one absurd header must not
stall a poll for ever). ``Retry-After`` is seconds or an HTTP date (one in
the past is 0); ``ratelimit-reset`` is seconds, or above 10**9 a time in seconds since the epoch. A value that is no
wait (negative, ``nan``, ``inf``, not a number) is ignored: the next header, else the exponential backoff, decides.

A page is validated before anyone sees it: the success envelope, no more records than ``page_size``, and for every
record an ``id`` (a non-empty string) and a parseable ``changed_at``/``remote_deleted_at``. A bad page raises
:class:`~relay.errors.InvalidPage` naming the integration, the page and the record, so nothing from it is published
or checkpointed.

A broken or hostile source cannot make the client hang, run out of memory or flood the metrics:

* a response larger than ``RELAY_SOURCE_MAX_RESPONSE_BYTES`` (checked against Content-Length when there is one, and
  counted as it arrives, decompressed) is not read further: :class:`~relay.errors.InvalidPage`
  ``RELAY.RESPONSE_TOO_LARGE``, not retried, since the same page would be as large again (an error response that
  large is classified by its status alone);
* a request (connecting, the headers and the whole body) that takes longer than
  ``RELAY_SOURCE_REQUEST_TIMEOUT_SECONDS`` is a timeout (``RELAY.TIMEOUT``, retried), even if bytes keep trickling in;
* the ``code`` label of ``relay_source_requests_total`` and ``relay_source_retries_total`` is a code Kombo documents
  (:data:`KOMBO_ERROR_CODES`), one of the relay's own (``RELAY.*``) or ``other``; the error and its log line keep the
  source's code, cut to :data:`MAX_CODE_CHARS` characters;
* a redirect (3xx) is not followed, since the API key, the integration id and the query would go along: it raises
  :class:`~relay.errors.SourceError` ``RELAY.REDIRECT`` naming the origin it points to; not retried, the pair backs
  off (``RELAY_SOURCE_URL`` is wrong, or the source is hostile);
* JSON nested deeper than orjson reads (1024 levels) is an :class:`~relay.errors.InvalidPage` ``RELAY.JSON_TOO_DEEP``,
  not a malformed body to retry;
* a ``next`` cursor longer than :data:`MAX_CURSOR_CHARS` is an :class:`~relay.errors.InvalidPage`; the source's
  ``log_url`` is cut to :data:`MAX_LOG_URL_CHARS` characters and its ``message`` to 500.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from relay.config import Config
from relay.errors import (
    AuthenticationError,
    CursorRejected,
    IntegrationError,
    InvalidPage,
    RateLimited,
    RetryableSourceError,
    SourceError,
)
from relay.metrics import Metrics
from relay.slots import sleep_without_slot
from relay.timestamps import parse_timestamp_ms

RATE_LIMIT_CODES = frozenset(
    {"PLATFORM.RATE_LIMIT_EXCEEDED", "REMOTE.RATE_LIMIT_EXCEEDED", "PLATFORM.CONCURRENCY_LIMIT_EXCEEDED"}
)
RETRYABLE_CODES = frozenset(
    {"REMOTE.SERVICE_UNAVAILABLE", "PLATFORM.UNKNOWN_ERROR", "PLATFORM.TASK_TIMED_OUT", "REMOTE.UNKNOWN_HTTP_ERROR"}
)
AUTHENTICATION_CODES = frozenset({"PLATFORM.AUTHENTICATION_INVALID", "PLATFORM.IP_NOT_WHITELISTED"})
# Every `error.code` Kombo documents (the enums of ../shared/kombo-openapi.json; a test compares the two). With the
# relay's own codes these are the only values of a `code` label: a source that makes codes up must not make series.
KOMBO_ERROR_CODES = frozenset(
    {
        "AI_APPLY.JOB_FEED_IMPORT_ALREADY_RUNNING",
        "AI_APPLY.JOB_FEED_IMPORT_TIMED_OUT",
        "ATS.APPLICATION_ALREADY_EXISTS",
        "ATS.JOB_CLOSED",
        "HRIS.EMPLOYEE_ALREADY_EXISTS",
        "INTEGRATION.ACTION_DISABLED",
        "INTEGRATION.ACTION_NOT_AVAILABLE",
        "INTEGRATION.AUTHENTICATION_INVALID",
        "INTEGRATION.INACTIVE",
        "INTEGRATION.MODEL_DISABLED",
        "INTEGRATION.MODEL_NOT_AVAILABLE",
        "INTEGRATION.PERMISSION_MISSING",
        "INTEGRATION.QA_FAILED",
        "INTEGRATION.SETUP_INCOMPLETE",
        "INTEGRATION.SETUP_SYNC_PENDING",
        "LMS.COURSE_UPDATE_NOT_SUPPORTED",
        "PLATFORM.AUTHENTICATION_INVALID",
        "PLATFORM.CONCURRENCY_LIMIT_EXCEEDED",
        "PLATFORM.INPUT_INVALID",
        "PLATFORM.INTEGRATION_NOT_FOUND",
        "PLATFORM.IP_NOT_WHITELISTED",
        "PLATFORM.RATE_LIMIT_EXCEEDED",
        "PLATFORM.TASK_TIMED_OUT",
        "PLATFORM.UNKNOWN_ERROR",
        "REMOTE.INPUT_INVALID",
        "REMOTE.RATE_LIMIT_EXCEEDED",
        "REMOTE.SERVICE_UNAVAILABLE",
        "REMOTE.UNKNOWN_HTTP_ERROR",
    }
)
# The codes of the relay's own, for failures that carry no Kombo code; RELAY.HTTP_<status> is one too.
RELAY_ERROR_CODES = frozenset(
    {
        "RELAY.TIMEOUT",
        "RELAY.CONNECTION_ERROR",
        "RELAY.MALFORMED_BODY",
        "RELAY.INVALID_PAGE",
        "RELAY.RESPONSE_TOO_LARGE",
        "RELAY.REDIRECT",
        "RELAY.JSON_TOO_DEEP",
    }
)
OTHER_CODE = "other"  # the label of any other code
MAX_CODE_CHARS = 100  # an error code from the source is untrusted: longer ones are cut (for the error and the log)
MAX_LOG_URL_CHARS = 2048  # the same for the error's log_url
# A `next` cursor longer than this is not one: it is sent back in the query string and kept in the checkpoint.
MAX_CURSOR_CHARS = 4096

# First pages' URLs kept (see SourceClient._page_url): far more than the watermarks of one interval's polls.
MAX_FIRST_PAGE_URLS = 1024

# A ratelimit-reset above this (2001-09-09 as seconds since the epoch) is a time, not a number of seconds to wait.
EPOCH_SECONDS_FROM = 10**9

Sleep = Callable[[float], Awaitable[None]]
Headers = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Page:
    """One validated page of records."""

    records: list[dict[str, Any]]
    next_cursor: str | None
    # The source's clock (its Date header) when it answered, in epoch ms: the next poll's `updated_after` base.
    source_time_ms: int | None


@dataclass(slots=True)
class RateLimitBudget:
    """What the last response for one integration said about the request budget.

    Kept per integration: whether the source counts per API key or per integration, each integration's latest response
    says what is left for it, and one integration's stale (or hostile) answer never makes the others wait."""

    remaining: int | None = None
    reset_at: float | None = None  # monotonic time at which the budget refills

    def observe(self, headers: Headers, now: float, max_wait: float) -> None:
        remaining = _finite(headers.get("ratelimit-remaining"))
        reset = _reset_delay(headers, max_wait)
        if remaining is not None:
            self.remaining = max(0, int(remaining))
        if reset is not None:
            self.reset_at = now + reset

    def pause_before_next(self, min_remaining: int, now: float) -> float:
        """Seconds to wait so that the remaining budget lasts until it resets; 0 while there is plenty."""
        if self.remaining is None or self.reset_at is None or self.remaining > min_remaining:
            return 0.0
        until_reset = max(0.0, self.reset_at - now)
        if self.remaining <= 0:
            return until_reset
        return until_reset / (self.remaining + 1)


class SourceClient:
    """Fetches pages from the source API. Use as an async context manager, or call :meth:`close`."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics or Metrics()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._budgets: dict[str, RateLimitBudget] = {}  # by integration: those the pipeline polls, no others
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}  # by resource: parsed once, not on every request
        self._first_pages: dict[tuple[str, str | None], URL] = {}  # by resource and updated_after: see _page_url

    async def __aenter__(self) -> SourceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # `total` is the deadline of a whole request, body included: `sock_read` alone lets a body that trickles
            # in, a byte at a time, go on for ever.
            timeout = aiohttp.ClientTimeout(
                total=self._config.source_request_timeout_seconds,
                sock_connect=self._config.source_connect_timeout_seconds,
                sock_read=self._config.source_read_timeout_seconds,
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                headers={"Authorization": f"Bearer {self._config.api_key.reveal()}", "Accept": "application/json"},
                connector=aiohttp.TCPConnector(limit=max(10, self._config.max_concurrent_polls * 2)),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch_page(
        self,
        integration: str,
        resource: str,
        *,
        updated_after: str | None,
        cursor: str | None,
        page_number: int,
    ) -> Page:
        """Fetch and validate one page, retrying transient failures; raise a :class:`SourceError` otherwise."""
        url = self._page_url(resource, updated_after, cursor)
        attempt = 0
        while True:
            await self._respect_budget(integration)
            try:
                return await self._request(integration, resource, url, page_number, has_cursor=cursor is not None)
            except RetryableSourceError as error:
                attempt += 1
                self._metrics.source_retries.labels(resource, code_label(error.code)).inc()
                if attempt > self._config.source_max_retries:
                    raise
                await self._backoff(attempt, error)

    def _page_url(self, resource: str, updated_after: str | None, cursor: str | None) -> URL:
        """The URL of a page, its query encoded. A poll's first page has no cursor, and the pairs polled within one
        second share their updated_after (their watermarks come from the source's Date header, to the second): their
        URL is encoded once, not once per request."""
        if cursor is not None:
            return self._url(resource).extend_query(self._query(updated_after, cursor))
        key = (resource, updated_after)
        url = self._first_pages.get(key)
        if url is None:
            if len(self._first_pages) >= MAX_FIRST_PAGE_URLS:
                self._first_pages.clear()  # the watermarks of the past intervals; the new ones come back at once
            url = self._first_pages[key] = self._url(resource).extend_query(self._query(updated_after, None))
        return url

    def _query(self, updated_after: str | None, cursor: str | None) -> dict[str, str]:
        params = {"page_size": str(self._config.page_size), "include_deleted": "true"}
        if updated_after is not None:
            params["updated_after"] = updated_after
        if cursor is not None:
            params["cursor"] = cursor
        return params

    async def _respect_budget(self, integration: str) -> None:
        budget = self._budgets.get(integration)
        if budget is None:
            return
        pause = budget.pause_before_next(self._config.source_ratelimit_min_remaining, time.monotonic())
        if pause > 0:
            self._metrics.rate_limit_waits.labels("budget_low").inc()
            self._metrics.rate_limit_wait_seconds.inc(pause)
            await sleep_without_slot(self._sleep, pause)

    async def _backoff(self, attempt: int, error: RetryableSourceError) -> None:
        if error.retry_after is not None:
            delay = error.retry_after
            self._metrics.rate_limit_waits.labels("retry_after").inc()
            self._metrics.rate_limit_wait_seconds.inc(delay)
        else:
            ceiling = min(
                self._config.source_backoff_max_seconds,
                self._config.source_backoff_initial_seconds * 2 ** (attempt - 1),
            )
            delay = self._rng.uniform(0, ceiling)  # full jitter: many integrations must not retry in lockstep
        await sleep_without_slot(self._sleep, delay)

    def _url(self, resource: str) -> URL:
        url = self._urls.get(resource)
        if url is None:
            url = self._urls[resource] = URL(f"{self._config.source_url}/{resource}")
        return url

    async def _request(self, integration: str, resource: str, url: URL, page_number: int, *, has_cursor: bool) -> Page:
        series = self._metrics.for_resource(resource)
        started = time.monotonic()
        try:
            async with self._get_session().get(
                url,
                headers={"X-Integration-Id": integration},
                allow_redirects=False,  # the API key, the integration id and the query must not go elsewhere
            ) as response:
                body = await _read_at_most(response, self._config.source_max_response_bytes)
                budget = self._budgets.get(integration)
                if budget is None:
                    budget = self._budgets[integration] = RateLimitBudget()
                budget.observe(response.headers, time.monotonic(), self._config.source_backoff_max_seconds)
                status = response.status
                headers = response.headers
        except TimeoutError as exc:
            self._count(resource, None, "RELAY.TIMEOUT")
            raise RetryableSourceError(
                "the source did not answer in time", code="RELAY.TIMEOUT", integration=integration, resource=resource
            ) from exc
        except aiohttp.ClientError as exc:
            self._count(resource, None, "RELAY.CONNECTION_ERROR")
            raise RetryableSourceError(
                f"cannot reach the source: {type(exc).__name__}",
                code="RELAY.CONNECTION_ERROR",
                integration=integration,
                resource=resource,
            ) from exc
        finally:
            series.source_request_duration.observe(time.monotonic() - started)

        if 300 <= status < 400:
            raise self._redirected(integration, resource, status, headers)
        if 200 <= status < 300:
            if body is None:
                raise self._too_large(integration, resource, status, page_number)
            series.source_requests_ok.inc()
            return self._parse_page(body, headers, integration, resource, page_number)
        if body is None:  # an error's envelope that large is not Kombo's: its status says enough
            body = b""
        raise self._error_from_response(status, headers, body, integration, resource, has_cursor=has_cursor)

    def _redirected(self, integration: str, resource: str, status: int, headers: Headers) -> SourceError:
        # An API does not redirect its list endpoints: RELAY_SOURCE_URL is wrong (http:// for https://, an old host)
        # or the source is hostile. Neither gets better by retrying; the pair backs off and the error says where to.
        code = "RELAY.REDIRECT"
        self._count(resource, status, code)
        return SourceError(
            f"HTTP {status} redirects to {_origin(self._url(resource), headers.get('location'))}, which is not "
            "followed (the API key and the integration id would go along); set RELAY_SOURCE_URL to the API's own URL",
            code=code,
            integration=integration,
            resource=resource,
            status=status,
        )

    def _too_large(self, integration: str, resource: str, status: int, page_number: int) -> InvalidPage:
        # Not retried: the same page would be as large again. The poll fails, nothing advances, the pair backs off.
        code = "RELAY.RESPONSE_TOO_LARGE"
        self._count(resource, status, code)
        limit = self._config.source_max_response_bytes
        return InvalidPage(
            f"page {page_number}: the response is larger than RELAY_SOURCE_MAX_RESPONSE_BYTES ({limit} bytes); "
            "raise that, or lower RELAY_PAGE_SIZE",
            code=code,
            integration=integration,
            resource=resource,
            status=status,
        )

    def _count(self, resource: str, status: int | None, code: str) -> None:
        status_class = f"{status // 100}xx" if status is not None else "error"
        self._metrics.source_requests.labels(resource, status_class, code_label(code)).inc()

    def _error_from_response(
        self,
        status: int,
        headers: Headers,
        body: bytes,
        integration: str,
        resource: str,
        *,
        has_cursor: bool,
    ) -> SourceError:
        code, message, log_url = _parse_error_envelope(body)
        effective_code = code or f"RELAY.HTTP_{status}"
        self._count(resource, status, effective_code)
        kwargs: dict[str, Any] = {
            "code": effective_code,
            "integration": integration,
            "resource": resource,
            "status": status,
            "log_url": log_url,
        }
        text = message or f"HTTP {status} without a Kombo error envelope"
        if code in RATE_LIMIT_CODES or (code is None and status == 429):
            retry_after = _retry_after(headers, self._config.source_backoff_max_seconds)
            return RateLimited(text, retry_after=retry_after, **kwargs)
        if code in AUTHENTICATION_CODES:
            return AuthenticationError(text, **kwargs)
        if code == "PLATFORM.INTEGRATION_NOT_FOUND" or (code or "").startswith("INTEGRATION."):
            return IntegrationError(text, **kwargs)
        if code == "PLATFORM.INPUT_INVALID" and has_cursor:
            return CursorRejected(text, **kwargs)
        if code in RETRYABLE_CODES or (code is None and (status >= 500 or status == 408)):
            return RetryableSourceError(text, **kwargs)
        # Any other refusal is about this integration's request (an unsupported resource, an odd input error):
        # backing the pair off is safer than hammering it or stopping every other integration.
        return IntegrationError(text, **kwargs)

    def _parse_page(
        self,
        body: bytes,
        headers: Headers,
        integration: str,
        resource: str,
        page_number: int,
    ) -> Page:
        where: dict[str, Any] = {"integration": integration, "resource": resource}
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if "depth" in exc.msg or "recursion" in exc.msg:
                # Nested deeper than orjson reads (1024): the same page would be as deep again, so no retry.
                raise InvalidPage(
                    f"page {page_number}: the body nests JSON deeper than the parser reads ({exc})",
                    code="RELAY.JSON_TOO_DEEP",
                    **where,
                ) from exc
            # A truncated or garbled body is a transport accident, not the source's data: retry it.
            raise RetryableSourceError(
                f"page {page_number}: the body is not valid JSON ({exc})", code="RELAY.MALFORMED_BODY", **where
            ) from exc
        results, next_cursor = _unwrap_envelope(document, page_number, where)
        if len(results) > self._config.page_size:
            raise InvalidPage(
                f"page {page_number}: {len(results)} records, more than the page_size {self._config.page_size} "
                "asked for",
                code="RELAY.INVALID_PAGE",
                **where,
            )
        _validate_records(results, page_number, where)
        if results:  # an idle poll's page is empty: no lock taken to add 0
            self._metrics.for_resource(resource).records_fetched.inc(len(results))
        return Page(records=results, next_cursor=next_cursor, source_time_ms=_date_header_ms(headers))


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body (decompressed), in one bytes object; None once it is known to exceed ``limit`` bytes, which is
    as soon as the Content-Length says so, or else as soon as that many bytes arrived (the rest is not read)."""
    length = response.content_length
    if length is not None and length > limit and "content-encoding" not in response.headers:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(base: URL, location: str | None) -> str:
    """The origin (scheme, host, port) a Location header points to: never its path, query or user info."""
    if not location:
        return "nowhere (no Location header)"
    try:
        return str(base.join(URL(location)).origin())[:200]
    except ValueError:
        return f"{location[:64]!r} (not a URL)"


def code_label(code: str) -> str:
    """The value of a metric's ``code`` label for an error code: a code Kombo documents or one of ours, else
    ``other``. The error and its log line keep the real code."""
    if code in KOMBO_ERROR_CODES or code in RELAY_ERROR_CODES:
        return code
    status = code.removeprefix("RELAY.HTTP_")
    if status != code and len(status) == 3 and status.isascii() and status.isdigit():  # a handful in practice
        return code
    return OTHER_CODE


def _unwrap_envelope(document: Any, page_number: int, where: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(document, dict) or document.get("status") != "success" or not isinstance(data, dict):
        raise RetryableSourceError(
            f'page {page_number}: not a success envelope {{"status": "success", "data": {{...}}}}',
            code="RELAY.MALFORMED_BODY",
            **where,
        )
    results = data.get("results")
    next_cursor = data.get("next")
    if not isinstance(results, list):
        raise RetryableSourceError(
            f"page {page_number}: data.results is not a list", code="RELAY.MALFORMED_BODY", **where
        )
    if next_cursor is not None and (
        not isinstance(next_cursor, str) or not next_cursor or len(next_cursor) > MAX_CURSOR_CHARS
    ):
        what = f"a string of {len(next_cursor)} characters" if isinstance(next_cursor, str) else _describe(next_cursor)
        raise InvalidPage(
            f"page {page_number}: data.next is neither null nor a cursor string of 1 to {MAX_CURSOR_CHARS} characters"
            f" (it is {what})",
            code="RELAY.INVALID_PAGE",
            **where,
        )
    return results, next_cursor


def _validate_records(results: list[Any], page_number: int, where: dict[str, Any]) -> None:
    """Every record of a page as :func:`_validate_record` wants it, the usual case checked in one loop: an object with
    an ``id`` string, a ``changed_at`` string and a ``remote_deleted_at`` null or string that parse. The first record
    that is anything else goes the long way, which raises the error naming its problem. (A function call per record
    and its loop over the two fields were a third of the cost of validating a page.)"""
    parse = parse_timestamp_ms
    for index, record in enumerate(results):
        if type(record) is dict:
            entity_id, changed_at, deleted_at = (
                record.get("id"),
                record.get("changed_at"),
                record.get("remote_deleted_at"),
            )
            if type(entity_id) is str and entity_id and type(changed_at) is str:
                try:
                    parse(changed_at)
                    if deleted_at is None or (type(deleted_at) is str and parse(deleted_at) is not None):
                        continue
                except ValueError:
                    pass
        _validate_record(record, index, page_number, where)


def _validate_record(record: Any, index: int, page_number: int, where: dict[str, Any]) -> None:
    def invalid(problem: str) -> InvalidPage:
        return InvalidPage(f"page {page_number}, record {index}: {problem}", code="RELAY.INVALID_PAGE", **where)

    if not isinstance(record, dict):
        raise invalid(f"expected an object, got {type(record).__name__}")
    entity_id = record.get("id")
    if not isinstance(entity_id, str) or not entity_id:
        raise invalid("has no `id` string")
    for field, required in (("changed_at", True), ("remote_deleted_at", False)):
        value = record.get(field)
        if value is None and not required:
            continue
        if not isinstance(value, str):
            raise invalid(f"(id {entity_id!r}) `{field}` is {_describe(value)}, expected an ISO 8601 timestamp")
        try:
            parse_timestamp_ms(value)
        except ValueError:
            raise invalid(f"(id {entity_id!r}) `{field}` {value[:64]!r} is not an ISO 8601 timestamp") from None


def _describe(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def _parse_error_envelope(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(code, message, log_url) from Kombo's error envelope; all None when the body is something else."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return None, None, None
    code, message, log_url = error.get("code"), error.get("message"), error.get("log_url")
    return (
        code[:MAX_CODE_CHARS] if isinstance(code, str) else None,
        message[:500] if isinstance(message, str) else None,
        log_url[:MAX_LOG_URL_CHARS] if isinstance(log_url, str) else None,
    )


def _retry_after(headers: Headers, max_wait: float) -> float | None:
    """Retry-After (seconds or an HTTP date), else ratelimit-reset, at most ``max_wait``; None when the source said
    neither, or nothing that is a wait."""
    value = headers.get("retry-after")
    if value is not None:
        seconds = _finite(value)
        if seconds is None:
            when = _http_date_seconds(value)
            seconds = None if when is None else max(0.0, when - time.time())
        if seconds is not None and seconds >= 0:
            return min(seconds, max_wait)
    return _reset_delay(headers, max_wait)


def _reset_delay(headers: Headers, max_wait: float) -> float | None:
    """The seconds until ratelimit-reset, at most ``max_wait``; None when absent or not a wait.

    A value above :data:`EPOCH_SECONDS_FROM` is read as the time of the reset in seconds since the epoch."""
    seconds = _finite(headers.get("ratelimit-reset"))
    if seconds is None or seconds < 0:
        return None
    if seconds > EPOCH_SECONDS_FROM:
        seconds = max(0.0, seconds - time.time())
    return min(seconds, max_wait)


def _date_header_ms(headers: Headers) -> int | None:
    value = headers.get("date")
    if value is None:
        return None
    seconds = _http_date_seconds(value)
    return None if seconds is None else int(seconds * 1000)


# Every response carries a Date header, to the second: the responses of a busy second share one, parsed once.
@functools.lru_cache(maxsize=64)
def _http_date_seconds(value: str) -> float | None:
    """An HTTP date (``Tue, 01 Jul 2025 12:00:00 GMT``) as epoch seconds; None when it is not one."""
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _finite(value: str | None) -> float | None:
    """A header's number; None when it is absent, not a number, or not finite (``nan``, ``inf``, ``1e400``)."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None

"""The list endpoints' contract: query parameters in, one page out.

Parameters (every list endpoint; see the spec's ``GET /ats/users``):

* ``cursor``: opaque, from the previous page's ``next`` (see ``cursor.py``); it carries no filters, so the client
  sends the same filters with every page. A cursor this simulator did not issue for this integration and endpoint
  is 400 ``PLATFORM.INPUT_INVALID``.
* ``page_size``: an integer 1..250, default 100.
* ``updated_after``: the spec's pattern (``2024-01-31T12:00:00.000Z``, also ``2024-01-31`` or no ``Z``; all UTC).
  Matches records whose last modification, own fields *or nested data*, is **at or after** the instant
  (``>=``; the spec says "since" and does not say more). Modification times are distinct per record change
  (milliseconds, strictly increasing), so a client that resends the newest modification time it saw gets that
  one record again and misses nothing.
* ``include_deleted``: ``true`` / ``false`` (default): soft-deleted records are hidden unless ``true``.
* ``ignore_unsupported_filters``: ``true`` / ``false``; accepted and without effect, as the simulator supports
  every filter of the endpoints it serves.
* ``ids``, ``remote_ids`` and the endpoint's own filters (``emails`` for users, ...), comma-separated where the spec
  says so: AND across parameters, OR within one. An unknown id simply matches nothing (200, like any filter).

An unknown parameter, a repeated parameter or a bad value is 400 ``PLATFORM.INPUT_INVALID`` (stricter than
necessary, so that a client's typo fails loudly instead of silently fetching everything).

Results are in the order of their last modification, oldest first; a record changed while a client pages moves to
the end, so it is served (again) later in the same pagination and never lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from relay.simulator.clock import parse_timestamp_ms
from relay.simulator.cursor import CursorCodec, InvalidCursor
from relay.simulator.filters import Filter
from relay.simulator.store import Collection

Record = dict[str, Any]

DEFAULT_PAGE_SIZE = 100
MIN_PAGE_SIZE = 1
MAX_PAGE_SIZE = 250
COMMON_PARAMETERS = frozenset(
    {"cursor", "page_size", "updated_after", "include_deleted", "ignore_unsupported_filters", "ids"}
)
KOMBO_ID_LENGTH = 24  # Kombo's ids, such as 26vafvWSRmbhNcxJYqjCzuJg


class InputInvalid(ValueError):
    """A bad request parameter: 400 ``PLATFORM.INPUT_INVALID`` with this message."""


@dataclass
class ListQuery:
    after_seq: int = 0
    page_size: int = DEFAULT_PAGE_SIZE
    since_ms: int | None = None
    include_deleted: bool = False
    ids: frozenset[str] | None = None
    indexed: list[tuple[str, frozenset[str]]] = field(default_factory=list)  # (parameter, keys)
    predicates: list[tuple[Filter, Any]] = field(default_factory=list)


def _boolean(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise InputInvalid(f"{name} must be 'true' or 'false', not {value!r}")
    return value == "true"


def _page_size(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not MIN_PAGE_SIZE <= int(value) <= MAX_PAGE_SIZE:
        raise InputInvalid(f"page_size must be an integer from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}, not {value!r}")
    return int(value)


def parse_query(collection: Collection, params: Iterable[tuple[str, str]], codec: CursorCodec) -> ListQuery:
    """Validate the query string of a list request against ``collection``'s endpoint."""
    filters = collection.spec.filters
    seen: dict[str, str] = {}
    for name, value in params:
        if name not in COMMON_PARAMETERS and name not in filters:
            allowed = ", ".join(sorted(COMMON_PARAMETERS | set(filters)))
            raise InputInvalid(f"unknown query parameter {name!r}; this endpoint accepts {allowed}")
        if name in seen:
            raise InputInvalid(f"query parameter {name!r} given more than once; use a comma-separated list")
        seen[name] = value
    query = ListQuery()
    if seen.get("cursor"):
        try:
            query.after_seq = codec.decode(scope(collection), seen["cursor"])
        except InvalidCursor as exc:
            raise InputInvalid(f"invalid cursor: {exc}") from None
    if "page_size" in seen:
        query.page_size = _page_size(seen["page_size"])
    if seen.get("updated_after"):
        try:
            query.since_ms = parse_timestamp_ms(seen["updated_after"])
        except ValueError as exc:
            raise InputInvalid(f"updated_after: {exc}") from None
    if "include_deleted" in seen:
        query.include_deleted = _boolean("include_deleted", seen["include_deleted"])
    if "ignore_unsupported_filters" in seen:
        _boolean("ignore_unsupported_filters", seen["ignore_unsupported_filters"])
    ids = [i.strip() for i in seen.get("ids", "").split(",") if i.strip()]
    malformed = [i for i in ids if len(i) != KOMBO_ID_LENGTH]
    if malformed:
        raise InputInvalid(f"ids: {malformed[0]!r} is not a {KOMBO_ID_LENGTH}-character Kombo id")
    if ids:
        query.ids = frozenset(ids)
    for name, value in seen.items():
        if name not in filters or not value.strip():
            continue  # an empty filter is no filter
        f = filters[name]
        try:
            parsed = f.parse(value)
        except ValueError as exc:
            raise InputInvalid(str(exc)) from None
        if f.indexed:
            query.indexed.append((name, parsed))
        else:
            query.predicates.append((f, parsed))
    return query


def scope(collection: Collection) -> str:
    """What a cursor belongs to: a cursor of one integration or endpoint is invalid for another."""
    return f"{collection.integration}|{collection.spec.name}"


def run_query(collection: Collection, query: ListQuery, codec: CursorCodec) -> tuple[list[Record], str | None]:
    """The page's records and its ``next`` cursor (None on the last page)."""
    narrowed: set[str] | None = set(query.ids) if query.ids is not None else None
    for name, keys in query.indexed:  # AND across parameters: intersect what each one selects
        found = collection.lookup(name, keys)
        narrowed = found if narrowed is None else narrowed & found
    results, last_seq = collection.select(
        after_seq=query.after_seq,
        since_ms=query.since_ms,
        include_deleted=query.include_deleted,
        ids=narrowed,
        predicates=query.predicates,
        page_size=query.page_size,
    )
    return results, None if last_seq is None else codec.encode(scope(collection), last_seq)

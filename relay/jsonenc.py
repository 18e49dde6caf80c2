"""JSON encoding for everything the relay hashes or publishes: compact UTF-8, optionally with sorted keys.

What belongs here: :func:`encode_json`, the one way the relay turns a JSON value into bytes (orjson, with an exact
fallback for what orjson refuses). Pure, so the diff engine, the event encoder and anything else can share it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def encode_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """``value`` as compact UTF-8 JSON; with ``sort_keys`` in a canonical form fit for hashing.

    orjson does the work. It refuses integers beyond 64 bits, which JSON allows and stdlib parsers produce, so those
    values fall back to the standard library: slower, but exact, and deterministic for a given value. Raises
    ValueError for what no JSON can carry: lone surrogates, non-string keys. (Non-finite floats, which no JSON parser
    produces, become null with orjson and a ValueError in the fallback.)
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except orjson.JSONEncodeError:
        pass
    try:
        text = json.dumps(value, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not encodable as JSON: {exc}") from None

"""Opaque pagination cursors.

A cursor is where the previous page stopped in the collection's modification order, and nothing else: it carries no
filters, so (as with Kombo) the client must send the same ``updated_after``, ``include_deleted``, ``ids``, ... with
every page. It is base64url of a small JSON object ``{"v": 1, "p": position, "m": mac}``; the MAC (HMAC-SHA256 over
the position and the integration/resource it belongs to, keyed per simulator) makes hand-made, corrupted or
misdirected cursors fail with 400 ``PLATFORM.INPUT_INVALID`` instead of silently paging from somewhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import orjson

VERSION = 1


class InvalidCursor(ValueError):
    """The cursor was not made by this simulator for this integration and resource."""


class CursorCodec:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, scope: str, position: int) -> str:
        message = f"{VERSION}|{scope}|{position}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:20]

    def encode(self, scope: str, position: int) -> str:
        """``scope`` names what the cursor pages through (integration and resource)."""
        payload = orjson.dumps({"v": VERSION, "p": position, "m": self._mac(scope, position)})
        return base64.urlsafe_b64encode(payload).decode().rstrip("=")

    def decode(self, scope: str, cursor: str) -> int:
        """The position encoded in ``cursor``; raises :class:`InvalidCursor`."""
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        except (binascii.Error, ValueError):
            raise InvalidCursor("the cursor is not one this API returned") from None
        if not isinstance(payload, dict) or payload.get("v") != VERSION:
            raise InvalidCursor("the cursor is not one this API returned")
        position, mac = payload.get("p"), payload.get("m")
        if not isinstance(position, int) or not isinstance(mac, str):
            raise InvalidCursor("the cursor is not one this API returned")
        if not hmac.compare_digest(mac, self._mac(scope, position)):
            raise InvalidCursor("the cursor does not belong to this integration and endpoint")
        return position

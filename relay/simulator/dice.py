"""Deterministic ids and draws derived from the simulator's seed.

A seeded record is never stored as a dict: only its number is, and its content is derived again whenever it is
served, from ``(seed, integration, resource, number)``. That derivation must be cheap (1M records are seeded at
start-up) and must not depend on anything but its key, so it hashes the key with BLAKE2b instead of seeding a
``random.Random``, which is several times slower.

Ids look like Kombo's: 24 characters of the base58 alphabet (no ``0``, ``O``, ``I``, ``l``), e.g.
``26vafvWSRmbhNcxJYqjCzuJg``.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from struct import Struct
from typing import TypeVar

T = TypeVar("T")

BASE58 = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
ID_LENGTH = 24
# Byte -> base58 character; the slight bias of 256 % 58 does not matter for ids that only need to be unique.
TO_BASE58 = bytes(BASE58[i % len(BASE58)] for i in range(256))
_POOL_BYTES = 64
_POOL_WORDS = Struct(">16I")  # a pool of 64 bytes read as 16 unsigned 32-bit draws


def _key_bytes(key: tuple[object, ...]) -> bytes:
    return "\x1f".join(map(str, key)).encode()


def kombo_id(*key: object) -> str:
    """A 24-character base58 id that is a pure function of ``key``."""
    return blake2b(_key_bytes(key), digest_size=ID_LENGTH).digest().translate(TO_BASE58).decode()


class Dice:
    """A stream of pseudo-random draws that is a pure function of its key."""

    __slots__ = ("_key", "_pos", "_round", "_words")

    def __init__(self, *key: object) -> None:
        self._key = _key_bytes(key)
        self._round = 0
        self._words: tuple[int, ...] = ()
        self._pos = 0

    def _pool(self) -> bytes:
        pool = blake2b(self._key + self._round.to_bytes(4, "big"), digest_size=_POOL_BYTES).digest()
        self._round += 1
        return pool

    def below(self, n: int) -> int:
        """An integer in ``[0, n)``."""
        if self._pos >= len(self._words):
            self._words = _POOL_WORDS.unpack(self._pool())
            self._pos = 0
        word = self._words[self._pos]
        self._pos += 1
        return word % n

    def between(self, low: int, high: int) -> int:
        """An integer in ``[low, high]``."""
        return low + self.below(high - low + 1)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def chance(self, probability: float) -> bool:
        return self.below(1_000_000) < probability * 1_000_000

    def sample(self, options: Sequence[T], count: int) -> list[T]:
        """``count`` distinct elements (fewer if there are not that many), in the options' order."""
        chosen = sorted({self.below(len(options)) for _ in range(count)})
        return [options[i] for i in chosen]

    def id(self) -> str:
        """A fresh 24-character base58 id."""
        return self._pool()[:ID_LENGTH].translate(TO_BASE58).decode()

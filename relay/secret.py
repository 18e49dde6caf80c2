"""A secret value and the mask shown in its place. Kept apart from the configuration so that whatever prints or logs
(``relay.logs``) can use the mask without importing the configuration loader."""

from __future__ import annotations

import hmac
from typing import Final, NoReturn

__all__ = ["MASK", "MIN_MASKED_SECRET", "Secret"]

MASK: Final = "**********"
# The shortest secret the log filter masks: a shorter one would be masked wherever its characters stand, garbling every
# line. Configuration warns about a secret this short at start-up (relay.settings).
MIN_MASKED_SECRET: Final = 4


class Secret:
    """A string that must never be shown: ``repr`` and ``str`` give ``**********``, ``reveal()`` gives the value.

    Deliberately not a dataclass: ``dataclasses.asdict(config)`` recurses into dataclasses and would copy the value
    out into a plain dict, where the next log line would print it.
    """

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so that comparing a guess with the secret tells nothing through timing.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # copy, deepcopy and pickle would otherwise restore the slot through __setattr__, which refuses.
        return (Secret, (self._value,))

"""The kinds of change the relay announces: ``created``, ``updated`` and ``deleted``.

What belongs here: the one list of those kinds, which the diff engine emits, event types end in, metrics use as
label values and the topic settings name. Nothing else, and no imports from the relay, so any module can use it.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

ChangeKind = Literal["created", "updated", "deleted"]
CHANGE_KINDS: Final[tuple[ChangeKind, ...]] = get_args(ChangeKind)

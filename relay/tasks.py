"""Small helpers for asyncio tasks and futures whose outcome nobody awaits.

What belongs here: asyncio plumbing shared by modules that start work they may abandon (the sink, the poller), with
no knowledge of what the work is.
"""

from __future__ import annotations

import asyncio
from typing import Any


def retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a finished future's outcome as seen, so asyncio does not log "exception was never retrieved".

    Meant as a done callback (``future.add_done_callback(retrieve)``) on a task or future whose caller went away.
    """
    if not future.cancelled():
        future.exception()

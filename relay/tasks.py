"""Small helpers for asyncio tasks and futures that a module starts and may abandon or cancel.

What belongs here: asyncio plumbing shared by modules that run background work (the sink, the pipeline, the
simulator), with no knowledge of what the work is.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


def retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a finished future's outcome as seen, so asyncio does not log "exception was never retrieved".

    Meant as a done callback (``future.add_done_callback(retrieve)``) on a task or future whose caller went away.
    """
    if not future.cancelled():
        future.exception()


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished; its cancellation is not raised here."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

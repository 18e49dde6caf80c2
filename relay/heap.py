"""Give the heap memory freed by large polls back to the operating system.

Every page fetched allocates its body, its records and its events, and frees them once the page is committed. glibc
keeps freed memory for reuse instead of returning it, so after a snapshot of a million records the relay's resident
memory stays above what it remembers (the README's Performance section has the measurements) until the next
large poll reuses it; restoring the state topic leaves the same behind. ``malloc_trim(0)`` returns it. It walks the
whole heap, so it runs at the end of a poll or a restore only once enough records were handled since the last time:
a fleet's small polls never pay for it.

Elsewhere than on glibc (musl, macOS) there is no ``malloc_trim`` and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_AFTER_RECORDS = 100_000

Trim = Callable[[int], int]


def malloc_trim() -> Trim | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Trim = function
    return trim


class HeapTrimmer:
    """Counts the records that polls fetched and restores read; calls ``trim`` (:func:`malloc_trim`; None: never)
    at the end of one once ``every`` records were handled since the last call."""

    def __init__(self, trim: Trim | None, every: int = TRIM_AFTER_RECORDS) -> None:
        self.every = every
        self._trim = trim
        self._handled = 0
        self.trims = 0

    def processed(self, records: int) -> bool:
        """Count the records of a poll or a restore that just ended; trim if enough were handled since the last trim.
        Returns whether it trimmed."""
        self._handled += records
        if self._trim is None or self._handled < self.every:
            return False
        self._handled = 0
        started = time.monotonic()
        self._trim(0)
        self.trims += 1
        log.debug("heap trimmed", extra={"seconds": round(time.monotonic() - started, 4)})
        return True

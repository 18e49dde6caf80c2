"""Trimming the heap after large polls: when it happens, and that glibc's malloc_trim is found where it exists."""

from __future__ import annotations

import platform

from relay.heap import HeapTrimmer, malloc_trim


def test_the_heap_is_trimmed_once_enough_records_were_fetched_since_the_last_trim() -> None:
    calls: list[int] = []
    heap = HeapTrimmer(lambda pad: calls.append(pad) or 1, every=1_000)
    assert not heap.processed(400)
    assert not heap.processed(599)
    assert heap.processed(1)  # 1,000 since the start
    assert calls == [0]
    assert not heap.processed(999)  # counting starts again after a trim
    assert heap.processed(5_000)
    assert (calls, heap.trims) == ([0, 0], 2)


def test_without_malloc_trim_nothing_is_trimmed() -> None:
    heap = HeapTrimmer(None, every=1)
    assert not heap.processed(1_000_000)
    assert heap.trims == 0


def test_malloc_trim_is_found_exactly_where_the_c_library_is_glibc() -> None:
    trim = malloc_trim()
    assert (trim is not None) == (platform.libc_ver()[0] == "glibc")
    if trim is not None:
        assert trim(0) in (0, 1)  # 1: memory was released, 0: there was none to release

"""Argument types shared by the ``relay`` commands (argparse ``type=``): each parses one value or raises
``argparse.ArgumentTypeError`` with a message argparse prints after the option's name."""

from __future__ import annotations

import argparse


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0, like ``--timeout 2.5``."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return seconds


def positive_int(text: str) -> int:
    """An integer >= 1, like ``--partitions 12``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value

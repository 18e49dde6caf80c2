"""What the ``relay`` commands that talk to Kafka share: argument types (argparse ``type=``, each parses one value or
raises ``argparse.ArgumentTypeError`` with a message argparse prints after the option's name) and loading their
configuration."""

from __future__ import annotations

import argparse
import logging

from relay.config import Config, ConfigError, load_config, print_problems


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


def kafka_command_config(path: str | None) -> Config | None:
    """The configuration of a command that talks only to Kafka (no RELAY_API_KEY needed), from ``--config`` and
    ``RELAY_*``; None once its problems are printed. Quiets aiokafka, which logs every failed connection attempt at
    ERROR: the command says what went wrong once, itself."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return load_config(path, kafka_only=True)
    except ConfigError as error:
        print_problems(error)
        return None

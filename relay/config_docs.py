"""How the configuration is shown to people: the settings as the README's Markdown table and as ``--help`` text,
the ``--config`` option every subcommand that loads the configuration takes, and the printout of its problems. Renders
whatever settings it is given; which settings exist is ``relay.config``'s business."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence

from relay.config_kinds import number_text
from relay.errors import ConfigError
from relay.settings import REQUIRED, Derived, Setting

__all__ = ["add_config_argument", "help_text", "markdown_table", "print_problems"]


def _default_text(default: object) -> str:
    if isinstance(default, Derived):
        return default.description
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return number_text(default)
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default)


def _default_label(default: object, quote: Callable[[str], str]) -> str:
    if default is REQUIRED:
        return "required"
    if default is None or default == ():
        return "unset"
    return quote(_default_text(default))


def _meaning(each: Setting) -> str:
    return f"{each.doc}; {each.kind.description}"


def markdown_table(settings: Sequence[Setting]) -> str:
    """The settings as a Markdown table (Name | Default | Meaning), for the README."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| Name | Default | Meaning |", "| --- | --- | --- |"]
    for each in settings:
        names = " / ".join(f"`{name}`" for name in each.env_names)
        default = _default_label(each.default, lambda text: f"`{text}`")
        rows.append(f"| {names} | {cell(default)} | {cell(_meaning(each))} |")
    return "\n".join(rows) + "\n"


def help_text(settings: Sequence[Setting]) -> str:
    """The settings as plain text, for ``--help``."""
    lines = ["settings (file keys: the names lowercased, without RELAY_):"]
    for each in settings:
        default = _default_label(each.default, lambda text: f"default {text}")
        lines.append(f"  {' / '.join(each.env_names)}  [{default}]")
        lines += textwrap.wrap(_meaning(each), width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config PATH``, shared by every subcommand that loads the configuration."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file, TOML (.toml) or YAML (.yaml, .yml); default: $RELAY_CONFIG_FILE. "
        "RELAY_* environment variables override it.",
    )


def print_problems(error: ConfigError) -> None:
    """What every subcommand prints when the configuration is invalid: one line per problem, naming its key."""
    print("relay: invalid configuration", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)

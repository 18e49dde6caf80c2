"""Validate the configuration and print it as the relay would use it, secrets masked.

Where settings come from, later sources winning:

  1. the defaults listed below;
  2. a configuration file, if --config PATH or RELAY_CONFIG_FILE names one: TOML (.toml) or
     YAML (.yaml, .yml) with flat keys named like the environment variables, lowercased and
     without RELAY_ (RELAY_PAGE_SIZE is page_size);
  3. RELAY_* environment variables. An empty variable counts as unset.

Lists are TOML/YAML lists or comma-separated strings. A secret (the API key, Kafka passwords)
can be given directly or, better, as the path of a file holding it, in the matching *_FILE
setting (RELAY_API_KEY_FILE); secrets are never printed. Relative paths are relative to the
working directory. For example, relay.toml:

    integrations = ["personio:8d1hpPsDu6Q5K1UnBDMXiUeGV"]
    resources = "ats/users,hris/employees"
    api_key_file = "/run/secrets/kombo-api-key"

The relay checks everything when it starts and, if anything is wrong, stops with one line per
problem, each naming the setting. Unknown keys in the file are problems (a typo must not pass
for a default); unknown RELAY_* variables are ignored, with a warning if they look like a typo.

This command loads the configuration exactly as `relay run` does, then prints the effective
values as JSON (exit status 0) or the problems (exit status 2).
"""

# What belongs here: the `relay check-config` command (this docstring is its --help description) and the arguments
# shared by the subcommands that load the configuration and print every setting in their --help.

from __future__ import annotations

import argparse
import sys

import orjson

from relay.config import (
    ConfigError,
    add_config_argument,
    environment_warnings,
    load_config,
    print_problems,
    settings_help,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config PATH``, and every setting, its default and meaning after the options."""
    add_config_argument(parser)
    parser.epilog = settings_help()


def main(args: argparse.Namespace) -> int:
    for warning in environment_warnings():
        print(f"relay: warning: {warning}", file=sys.stderr)
    warnings: list[str] = []
    try:
        config = load_config(args.config, warnings=warnings)
    except ConfigError as error:
        print_problems(error)
        return 2
    for warning in warnings:
        print(f"relay: warning: {warning}", file=sys.stderr)
    sys.stdout.write(orjson.dumps(config.masked(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0

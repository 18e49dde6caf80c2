"""The ``relay`` command line: ``run``, ``simulate``, ``check-config``, ``tail``, ``schema``, ``asyncapi``,
``materialize``, ``integrations``, ``resnapshot``, ``reconcile``, ``state``.

Each subcommand lives in the module of its concept and exposes ``add_arguments(parser)`` and ``main(args) -> int``;
this module only wires them together, so ``relay --help`` stays the single index of what the program can do.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from relay import __version__
from relay.event_loop import use_uvloop

# name -> (module implementing it, one-line help for `relay --help`).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("relay.app", "poll the source and publish change events to Kafka"),
    "check-config": ("relay.check_config", "validate the configuration and print it, secrets masked"),
    "simulate": ("relay.simulator.cli", "serve a local Kombo-style API with churning data (for trying and testing)"),
    "tail": ("relay.tail", "print the change events arriving on the Kafka topics"),
    "schema": ("relay.contract_schema", "print the JSON Schema of the events (or write every schema file)"),
    "asyncapi": ("relay.contract_asyncapi", "print the AsyncAPI document of the topics the configuration produces"),
    "materialize": ("relay.materialize", "keep a SQLite table per resource up to date from the events"),
    "integrations": ("relay.registry_cli", "list, add, remove, pause and resume the integrations of the registry"),
    "resnapshot": ("relay.commands_cli", "ask the owner to re-announce every live record of an integration"),
    "reconcile": ("relay.commands_cli", "ask the owner to reconcile an integration now (find hard deletes)"),
    "state": (
        "relay.state_cli",
        "show what the relay remembers of an integration and its owner, reset it (forget it), or move the state to "
        "a new state topic of another partition count (repartition)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="change-relay: polls Kombo-style list endpoints and publishes one created / updated / deleted "
        "event per record to Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"change-relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or help_text).strip()
        command = sub.add_parser(
            name, help=help_text, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(command)
        command.set_defaults(handler=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":  # a long-lived process: its loop's own cost counts (see relay.event_loop)
        use_uvloop()
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Print the JSON Schema (2020-12) of the events, or write every schema file into a directory.

``event.schema.json`` validates every event of every resource (``data.record`` open); with ``--out DIR`` one file
per resource is written beside it, ``event.{resource with / as .}.schema.json``, whose ``data.record`` is the
result item of the resource's list endpoint in Kombo's OpenAPI document (``--openapi``), references resolved.
The committed copies are in deploy/schemas/ (``make schemas``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relay.contract import DEFAULT_OPENAPI, EVENT_SCHEMA_FILE, KNOWN_RESOURCES, dump_json, load_openapi, schema_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="write every schema file into this directory instead of printing")
    parser.add_argument(
        "--resource",
        action="append",
        dest="resources",
        help=f"resource with a schema file of its own (repeatable; default: {', '.join(KNOWN_RESOURCES)})",
    )
    parser.add_argument(
        "--openapi",
        type=Path,
        default=DEFAULT_OPENAPI,
        help="Kombo's OpenAPI document, for the records' schemas (default: ../shared/kombo-openapi.json)",
    )


def main(args: argparse.Namespace) -> int:
    openapi = load_openapi(args.openapi)
    if openapi is None and args.out is not None:
        print(f"relay schema: {args.openapi} not found, records' schemas are left open", file=sys.stderr)
    try:
        files = schema_files(args.resources or KNOWN_RESOURCES, openapi)
    except ValueError as error:
        print(f"relay schema: {error}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.buffer.write(dump_json(files[EVENT_SCHEMA_FILE]))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in files.items():
        (args.out / name).write_bytes(dump_json(schema))
    return 0

"""Print the AsyncAPI 3.0 document of the topics the configuration produces, as YAML (or JSON).

One channel per event topic (``RELAY_TOPIC_PREFIX``, ``RELAY_TOPIC_TEMPLATE``, and the resources of
``RELAY_RESOURCES``, ``RELAY_RESOURCES_ATS`` and ``RELAY_RESOURCES_HRIS``), its message the resource's event schema
(``event...schema.json`` beside the document; see ``relay schema``), the key, the headers and the read_committed
requirement; the state topic is listed as internal. The resources an integration of the registry names of its own
are not in the configuration: the document's description says that they add topics. The configuration is loaded as
``relay run`` loads it (``--config``, ``RELAY_*``), but needs no API key. The committed copy is
deploy/schemas/asyncapi.yaml (``make schemas``).
"""

from __future__ import annotations

import argparse
import sys

import yaml

from relay.config import ConfigError, add_config_argument, print_problems
from relay.contract import asyncapi, dump_json
from relay.tail import load_reader_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    parser.add_argument(
        "--schema-base", default="./", help="where the schema files are, relative to the document (default: ./)"
    )


def main(args: argparse.Namespace) -> int:
    try:
        config = load_reader_config(args.config)
    except ConfigError as error:
        print_problems(error)
        return 2
    document = asyncapi(config, schema_base=args.schema_base)
    if args.json:
        sys.stdout.buffer.write(dump_json(document))
    else:
        sys.stdout.write(render_yaml(document))
    return 0


def render_yaml(document: object) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)

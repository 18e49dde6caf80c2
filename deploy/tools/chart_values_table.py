#!/usr/bin/env python3
"""Write the values table of helm/change-relay/README.md from the comments of its values.yaml.

In values.yaml a comment block that starts with ``# --`` documents the key right below it (the helm-docs
convention); its next ``#`` lines continue it. The table lists every documented key with its type, default and
description, between the README's ``<!-- values-table:start -->`` and ``<!-- values-table:end -->`` markers.
tests/deploy/test_chart_docs.py fails when a value has no description or the README's table is not current.

    python deploy/tools/chart_values_table.py          # rewrite the table in the README
    python deploy/tools/chart_values_table.py --check  # exit 1 if it is not current
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "change-relay"
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")
_DOC_START = re.compile(r"^ *# -- ?(?P<text>.*)$")
_DOC_MORE = re.compile(r"^ *#(?: (?P<text>.*))?$")


@dataclass(frozen=True)
class Documented:
    path: str
    description: str


def documented_keys(values_text: str) -> list[Documented]:
    """The keys of values.yaml with a ``# --`` comment, as dotted paths, in file order."""
    found: list[Documented] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings the current line is in
    doc: list[str] | None = None
    for line in values_text.splitlines():
        if (start := _DOC_START.match(line)) is not None:
            doc = [start["text"].strip()]
            continue
        if doc is not None and (more := _DOC_MORE.match(line)) is not None:
            doc.append((more["text"] or "").strip())
            continue
        key = _KEY.match(line)
        if key is None:
            if line.strip() and not line.lstrip().startswith(("#", "-")):
                raise ValueError(f"values.yaml line not understood: {line!r}")
            if not line.strip() or line.lstrip().startswith("#"):
                doc = None
            continue
        indent = len(key["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key["key"]))
        if doc is not None:
            found.append(Documented(".".join(name for _, name in stack), " ".join(part for part in doc if part)))
        doc = None
    return found


def lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def prose(text: str) -> str:
    # < and > would read as HTML tags: <release> would vanish from the rendered page.
    return cell(text).replace("<", "&lt;").replace(">", "&gt;")


def values_table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    documented = documented_keys(values_text)
    paths = {entry.path for entry in documented}
    rows = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for entry in documented:
        value = lookup(values, entry.path)
        has_documented_children = any(path.startswith(entry.path + ".") for path in paths)
        default = "see below" if has_documented_children else f"`{json.dumps(value, separators=(', ', ': '))}`"
        rows.append(f"| `{entry.path}` | {type_name(value)} | {cell(default)} | {prose(entry.description)} |")
    return "\n".join(rows) + "\n"


def readme_with_table(readme: str, table: str) -> str:
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{table}{END}{after}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is not current")
    args = parser.parse_args()
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    expected = readme_with_table(readme, values_table((CHART / "values.yaml").read_text()))
    if args.check:
        if readme != expected:
            print(f"{readme_path.relative_to(REPO)}: the values table is out of date; run {__file__}", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(expected)
    return 0


if __name__ == "__main__":
    sys.exit(main())

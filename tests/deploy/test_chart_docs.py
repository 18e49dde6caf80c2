"""Every value of the chart is documented (values.yaml comment, README table) and validated (values.schema.json);
the chart's metadata agrees with the project. No helm needed: these run without Go."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deploy.tools.chart_values_table import documented_keys, readme_with_table, values_table
from relay import __version__
from tests.deploy.chart import CHART, CI_VALUES

VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = yaml.safe_load((CHART / "values.schema.json").read_text())


def leaves(node: Any, path: str = "") -> list[str]:
    """Dotted paths of the values that are not non-empty mappings."""
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in leaves(value, f"{path}.{key}" if path else key)]
    return [path]


def test_every_value_is_documented_in_values_yaml() -> None:
    documented = {entry.path for entry in documented_keys(VALUES_TEXT)}
    undocumented = []
    for leaf in leaves(VALUES):
        parts = leaf.split(".")
        if not any(".".join(parts[:end]) in documented for end in range(1, len(parts) + 1)):
            undocumented.append(leaf)
    assert undocumented == [], "add a `# --` comment above each of these in values.yaml"
    assert all(entry.description for entry in documented_keys(VALUES_TEXT))


def test_readme_values_table_is_current() -> None:
    readme = (CHART / "README.md").read_text()
    assert readme == readme_with_table(readme, values_table(VALUES_TEXT)), (
        "helm/change-relay/README.md's values table is out of date: run deploy/tools/chart_values_table.py"
    )


def schema_gaps(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Values the schema does not describe, and schema properties values.yaml lacks."""
    if not isinstance(values, dict) or "properties" not in schema:
        return []  # a leaf, or an object passed through to Kubernetes as it is (securityContext, resources, ...)
    assert schema.get("additionalProperties") is False, f"{path or 'the top'}: the schema must refuse unknown keys"
    gaps = [f"{path}.{key}".lstrip(".") + ": not in the schema" for key in values if key not in schema["properties"]]
    gaps += [
        f"{path}.{key}".lstrip(".") + ": in the schema, not in values.yaml"
        for key in schema["properties"]
        if key not in values and key != "global"
    ]
    for key, value in values.items():
        if key in schema["properties"]:
            gaps += schema_gaps(value, schema["properties"][key], f"{path}.{key}")
    return gaps


def test_schema_describes_every_value_and_nothing_else() -> None:
    assert schema_gaps(VALUES, SCHEMA) == []


def test_every_schema_property_has_a_description() -> None:
    def missing(schema: dict[str, Any], path: str) -> list[str]:
        found = []
        for key, child in schema.get("properties", {}).items():
            if "description" not in child:
                found.append(f"{path}.{key}")
            found += missing(child, f"{path}.{key}")
        return found

    assert missing(SCHEMA, "") == []


@pytest.mark.parametrize("path", [CHART / "values.yaml", *CI_VALUES], ids=lambda path: path.name)
def test_values_files_are_valid(path: Path) -> None:
    merged = merge(VALUES, yaml.safe_load(path.read_text()) or {})
    jsonschema.validate(merged, SCHEMA, cls=jsonschema.Draft7Validator)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = merge(result[key], value) if nested else value
    return result


@pytest.mark.parametrize(
    "change",
    [
        {"replicaCount": "two"},
        {"replicaCount": -1},
        {"updateStrategy": {"type": "BlueGreen"}},
        {"updateStrategy": {"maxSurge": "one"}},
        {"kafka": {"stateTopicPartitions": 0}},
        {"kafka": {"groupSessionTimeoutSeconds": 5}},
        {"kafka": {"groupId": "two words"}},
        {"topologySpread": {"whenUnsatisfiable": "Sometimes"}},
        {"podDisruptionBudget": {"enabled": "auto"}},
        {"autoscaling": {"maxReplicas": 0}},
        {"autoscaling": {"targetCPUUtilization": 70}},
        {"autoscaling": {"behavior": {"scaleSideways": {}}}},
        {"bogus": 1},
        {"relay": {"pageSize": 0}},
        {"kafka": {"sasl": {"mechanism": "GSSAPI"}}},
        {"podDisruptionBudget": {"maxUnavailable": "half"}},
        {"prometheusRule": {"alerts": {"down": {"for": "five minutes"}}}},
    ],
    ids=str,
)
def test_schema_rejects_bad_values(change: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merge(VALUES, change), SCHEMA, cls=jsonschema.Draft7Validator)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "change-relay"
    assert chart["appVersion"] == __version__
    assert chart["kubeVersion"] == ">=1.27.0-0"
    helmignore = (CHART / ".helmignore").read_text().splitlines()
    assert "ci/" in helmignore


def test_vendored_schemas_are_self_contained() -> None:
    """kubeconform runs offline: a schema that refers to another file or a URL would fail there, or fetch it."""
    schemas = sorted((Path(__file__).parent / "schemas").rglob("*.json"))
    assert len(schemas) >= 16
    for path in schemas:
        refs = re.findall(r'"\$ref":\s*"([^"]*)"', path.read_text())
        assert all(ref.startswith("#/") for ref in refs), f"{path.name}: {sorted(set(refs))[:3]}"

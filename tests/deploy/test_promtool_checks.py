"""promtool, Prometheus's own checker, accepts the alert rules (the generated file and the chart's PrometheusRule) and
the Prometheus configuration of the local stack.

deploy/prometheus/prometheus.yml names its rule file by the path the compose setup mounts it at
(/etc/prometheus/alerts.yml); the check runs on a copy whose rule file paths are mapped back to the repository's
files through deploy/docker-compose.yml's own volume list, so a mount that points to a missing file fails too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import REPO, Helm

PROMETHEUS = REPO / "deploy" / "prometheus"
COMPOSE = REPO / "deploy" / "docker-compose.yml"
ALERT_NAMES = 9  # every alert of _alerts.tpl, all enabled by default


def promtool_run(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, check=False, timeout=120)


def assert_rules_pass(promtool: Path, path: Path, rules: int) -> None:
    result = promtool_run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(path))
    assert result.returncode == 0, f"promtool check rules {path.name}:\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {rules} rules found" in result.stdout, result.stdout


def chart_rule_groups(helm: Helm, sets: list[str]) -> list[dict[str, Any]]:
    """The ``spec.groups`` of the chart's rendered PrometheusRule: what the Prometheus Operator hands Prometheus."""
    rule = helm.template(sets=["prometheusRule.enabled=true", *sets]).one("PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def test_generated_alert_rules_pass_promtool(promtool: Path) -> None:
    assert_rules_pass(promtool, PROMETHEUS / "alerts.yml", ALERT_NAMES)


@pytest.mark.parametrize(
    "sets",
    [
        [],
        [
            'prometheusRule.selector=namespace="relay"\\,job="relay"',
            "prometheusRule.runbookUrl=https://runbooks.example.com/change-relay",
            "prometheusRule.additionalLabels.team=data-platform",
        ],
        ["prometheusRule.alerts.down.enabled=false", "prometheusRule.alerts.fenced.enabled=false"],
    ],
    ids=["defaults", "selector-runbook-labels", "some-disabled"],
)
def test_chart_prometheus_rule_passes_promtool(promtool: Path, helm: Helm, tmp_path: Path, sets: list[str]) -> None:
    groups = chart_rule_groups(helm, sets)
    rules = sum(len(group["rules"]) for group in groups)
    assert rules == ALERT_NAMES - sum("enabled=false" in value for value in sets)
    path = tmp_path / "prometheusrule-groups.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    assert_rules_pass(promtool, path, rules)


def compose_mounts() -> dict[str, Path]:
    """Container path -> repository file, from the prometheus service's volumes in docker-compose.yml."""
    service = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    mounts = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def test_prometheus_config_passes_promtool(promtool: Path, tmp_path: Path) -> None:
    mounts = compose_mounts()
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS / "prometheus.yml"
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    rule_files = []
    for container_path in config["rule_files"]:
        assert container_path in mounts, f"{container_path} is not mounted into the prometheus service"
        assert mounts[container_path].is_file(), f"{mounts[container_path]} (mounted at {container_path}) is missing"
        rule_files.append(str(mounts[container_path]))
    config["rule_files"] = rule_files
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(yaml.safe_dump(config, sort_keys=False))
    result = promtool_run(promtool, "check", "config", "--lint=all", "--lint-fatal", str(rendered))
    assert result.returncode == 0, f"promtool check config:\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {ALERT_NAMES} rules found" in result.stdout, result.stdout

"""deploy/prometheus and deploy/grafana: the alert rules file is the chart's, Prometheus scrapes the relay under the
job the rules select, and the dashboard is well formed and shows what operators need."""

from __future__ import annotations

import json
from typing import Any

import yaml

from deploy.tools.generate_alerts import render_alerts_file
from tests.deploy.chart import REPO, Helm
from tests.deploy.test_metric_names import dashboard_panels

PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"


def test_alerts_file_is_generated_from_the_chart(helm: Helm) -> None:
    expected = render_alerts_file(helm.binary)
    assert (PROMETHEUS / "alerts.yml").read_text() == expected, (
        "deploy/prometheus/alerts.yml differs from the chart's PrometheusRule: "
        "run .venv/bin/python deploy/tools/generate_alerts.py"
    )


def test_alerts_file_has_the_issues_alerts() -> None:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == {
        "ChangeRelayDown",
        "ChangeRelayNotReady",
        "ChangeRelayPollsFailing",
        "ChangeRelayWatermarkLagHigh",
        "ChangeRelayIntegrationUnhealthy",
        "ChangeRelayPairStuck",
        "ChangeRelayFenced",
        "ChangeRelayPartitionUnowned",
        "ChangeRelayRebalanceStorm",
    }
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name
        assert 'job="change-relay"' in rule["expr"], name


def test_prometheus_scrapes_the_relay_under_the_job_the_rules_select() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "change-relay"
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["relay:8080"]}]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_grafana_provisioning() -> None:
    [source] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "change-relay.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/change-relay"


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((GRAFANA / "change-relay-dashboard.json").read_text())
    return dashboard


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "change-relay"
    assert dashboard["title"] == "change-relay"
    panels = list(dashboard_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        x, y, w, h = (panel["gridPos"][key] for key in ("x", "y", "w", "h"))
        assert x >= 0, panel["title"]
        assert x + w <= 24, panel["title"]
        cells = {(column, line) for column in range(x, x + w) for line in range(y, y + h)}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            assert panel.get("description"), panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], panel["title"]
                assert 'job=~"$job"' in target["expr"], panel["title"]


def test_dashboard_shows_what_operators_need() -> None:
    expressions = {
        panel["title"]: " ".join(target["expr"] for target in panel["targets"])
        for panel in dashboard_panels(load_dashboard()["panels"])
        if panel["type"] != "row"
    }

    def panel_using(*fragments: str) -> str:
        found: list[str] = [title for title, expr in expressions.items() if all(part in expr for part in fragments)]
        assert found, f"no panel uses {fragments}"
        return found[0]

    panel_using("sum by (type)", "relay_events_published_total")  # throughput by type
    panel_using("sum by (outcome)", "relay_polls_total")  # poll outcomes
    panel_using("time() - (relay_watermark_timestamp_seconds")  # lag
    panel_using("sum by (status_class, code)", "relay_source_requests_total", '!="2xx"')  # errors by code
    panel_using('relay_integrations{job=~"$job",health="unhealthy"}')  # integrations unhealthy
    panel_using("histogram_quantile", "relay_kafka_transaction_duration_seconds_bucket")  # transaction duration

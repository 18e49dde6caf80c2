"""Every metric the dashboard, the alert rules and the chart's PrometheusRule use is one the relay really exposes.

The exposed names come from the relay itself: ``relay.metrics.Metrics`` rendered by ``generate_latest``, whose
``# TYPE`` lines name every family, samples or not (a labelled counter nothing has incremented has no sample yet).
Besides the relay's, only Prometheus' own ``up`` may be used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from relay.metrics import Metrics
from tests.deploy.chart import REPO, Helm

DASHBOARD = REPO / "deploy" / "grafana" / "change-relay-dashboard.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_OWN = {"up"}

# PromQL words that are neither metrics nor followed by "(" (functions and aggregations are recognised by that).
KEYWORDS = {"and", "or", "unless", "bool", "offset", "Inf", "NaN", "inf", "nan"}
SUFFIXES = {
    "counter": ("",),  # prometheus-client names the family of a counter with its _total
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def exposed_names() -> set[str]:
    text = generate_latest(Metrics(["ats/users"]).registry).decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names |= {family + suffix for suffix in SUFFIXES[kind]}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    # The *_created series prometheus-client adds are an artefact of the client, not part of the contract.
    return {name for name in names if not name.endswith("_created")}


EXPOSED = exposed_names()


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana query, with its $variables) selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings: label values
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_finds_the_metrics_and_only_them() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, kind) (rate(relay_poll_duration_seconds_bucket{job=~"$job"}'
        "[$__rate_interval]))) > 1e+06 and on (job) up offset 5m or absent(relay_ready) unless relay_fenced == bool 1"
    )
    assert metric_names(expr) == {"relay_poll_duration_seconds_bucket", "up", "relay_ready", "relay_fenced"}


def test_the_relay_exposes_what_the_issue_lists() -> None:
    listed = {
        "relay_polls_total",
        "relay_poll_duration_seconds_bucket",
        "relay_source_requests_total",
        "relay_source_request_duration_seconds_bucket",
        "relay_source_retries_total",
        "relay_rate_limit_waits_total",
        "relay_rate_limit_wait_seconds_total",
        "relay_records_fetched_total",
        "relay_events_published_total",
        "relay_events_suppressed_total",
        "relay_kafka_transaction_errors_total",
        "relay_kafka_transaction_duration_seconds_bucket",
        "relay_last_successful_poll_timestamp_seconds",
        "relay_watermark_timestamp_seconds",
        "relay_entities_remembered",
        "relay_integrations",
        "relay_reconcile_vanish_refused_total",
        "relay_fenced",
        "relay_ready",
        "relay_build_info",
    }
    assert sorted(listed - EXPOSED) == []


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            # label_values(metric{...}, label): the label is not a metric.
            yield f"${variable['name']}", re.sub(r",\s*\w+\s*\)\s*$", ")", query)


def rule_expressions(groups: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            yield name, str(rule["expr"])
            # The annotations name metrics too, for whoever is paged: they must be real as well.
            for text in rule.get("annotations", {}).values():
                yield f"{name} (annotations)", " ".join(re.findall(r"\brelay_[a-z_]+", text))


def assert_only_exposed(queries: list[tuple[str, str]]) -> None:
    assert queries
    used = set()
    for where, expr in queries:
        names = metric_names(expr)
        unknown = sorted(names - EXPOSED - PROMETHEUS_OWN)
        assert unknown == [], f"{where}: {expr!r} uses {unknown}, which the relay does not expose"
        used |= names
    assert used


def test_dashboard_uses_only_exposed_metrics() -> None:
    assert_only_exposed(list(dashboard_queries()))


def test_alert_rules_file_uses_only_exposed_metrics() -> None:
    assert_only_exposed(list(rule_expressions(yaml.safe_load(ALERTS.read_text())["groups"])))


@pytest.mark.parametrize(
    "values",
    [["prometheusRule.enabled=true"], ["prometheusRule.enabled=true", 'prometheusRule.selector=namespace="x"']],
    ids=["default", "selector"],
)
def test_chart_prometheus_rule_uses_only_exposed_metrics(helm: Helm, values: list[str]) -> None:
    rule = helm.template(sets=values).one("PrometheusRule")
    assert_only_exposed(list(rule_expressions(rule["spec"]["groups"])))


def test_every_relay_metric_is_on_the_dashboard() -> None:
    """The dashboard shows every series the relay exposes (a new metric needs a panel, or an entry here)."""
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    histogram_parts = {name for name in EXPOSED if name.endswith(("_sum", "_count"))}
    assert sorted(EXPOSED - histogram_parts - used) == []

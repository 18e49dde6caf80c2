"""A real Prometheus scrapes a real relay polling the simulator, with the alert rules loaded; an integration goes
inactive, and Prometheus's own /api/v1/alerts shows the alerts firing for it, then resolved once it is healed. Then
every dashboard panel's queries are asked of the same Prometheus: each parses, and each panel shows data.

Processes: ``relay simulate``, ``relay run`` (Kafka: the session broker) and the pinned ``prometheus`` server, each on a
free 127.0.0.1 port, scraping and evaluating every second. The rules are a test copy of the chart's PrometheusRule,
rendered by helm with short ``for:`` values and with the 15-minute windows cut to 10 s, so that the test takes seconds
rather than the rules' real hours; and ChangeRelayPollsFailing's ratio at 0.1, since with one integration of two
inactive (and backing off) while webhooks trigger extra polls of the other, far fewer than half of a resource's polls
fail (the real ratio, 0.5, is for a resource failing as a whole; ChangeRelayIntegrationUnhealthy is the alert for one
integration). The unit tests (test_alert_rules.py) prove the
real rules' timing.

``RELAY_DASHBOARD_DUMP=path.json`` writes each panel's series over the run (query_range) there, for
``make dashboard-png``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.deploy.chart import REPO, Helm
from tests.deploy.test_metric_names import dashboard_panels
from tests.deploy.test_monitoring_assets import load_dashboard
from tests.faults.chaos import free_port

pytestmark = pytest.mark.kafka

ACME, GLOBEX = "personio:acme", "greenhouse:globex"
USERS = "ats/users"
TEST_RULE_VALUES = {
    "prometheusRule": {
        "enabled": True,
        "alerts": {
            "down": {"for": "2s"},
            "notReady": {"for": "2s"},
            "pollsFailing": {"for": "2s", "ratio": 0.1},
            "watermarkLag": {"for": "2s"},
            "integrationUnhealthy": {"for": "2s"},
            "pairStuck": {"for": "2s", "window": "10s"},
        },
    }
}
# Panels whose series only exist once something the run does not cause has happened.
NO_DATA_EXPECTED = {
    "Kafka transaction errors": "relay_kafka_transaction_errors_total is labelled by the error's class, so it has no"
    " series before a transaction fails; the run keeps Kafka up",
    "Admin API requests by operation and outcome": "relay_admin_requests_total has series only while the admin API is"
    " on (RELAY_ADMIN_TOKEN); the run leaves it off",
}
WEBHOOK_SECRET = "live-test-webhook-secret"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, *, alive: Callable[[], None]) -> T:
    """Poll ``probe`` until it returns something other than None; check the processes are alive between tries."""
    deadline = time.monotonic() + timeout
    while True:
        alive()
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def http_json(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    # Only the http://127.0.0.1 URLs this test builds.
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.loads(response.read())


def answers(url: str) -> bool | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            return True if response.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def cut_windows(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The 15-minute windows cut to 10 s (no value sets them)."""
    for rule in rules:
        rule["expr"] = str(rule["expr"]).replace("[15m]", "[10s]")
    return rules


class Processes:
    """The test's child processes, stopped (SIGTERM, then SIGKILL) at the end, their output in log files."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            self.running[name] = subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        for name, process in self.running.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{self.tail(name)}")

    def tail(self, name: str) -> str:
        return "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-40:])

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    running = Processes(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def firing(prometheus: str, alert: str, **labels: str) -> list[dict[str, Any]]:
    alerts = http_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
    return [
        a
        for a in alerts
        if a["labels"]["alertname"] == alert
        and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def grafana_to_promql(expr: str) -> str:
    """A panel's query as Grafana sends it with every job and resource selected."""
    return expr.replace("$__rate_interval", "10s").replace("$job", ".+").replace("$resource", ".+")


def test_alerts_fire_and_resolve_in_a_real_prometheus(
    prometheus_server: Path, helm: Helm, bootstrap_servers: str, topic_prefix: str, processes: Processes
) -> None:
    started = time.monotonic()
    work = processes.log_dir
    sim_port, relay_port, prom_port = free_port(), free_port(), free_port()
    simulator = f"http://127.0.0.1:{sim_port}"
    relay = f"http://127.0.0.1:{relay_port}"
    prometheus = f"http://127.0.0.1:{prom_port}"

    (work / "test-values.yaml").write_text(yaml.safe_dump(TEST_RULE_VALUES))
    rule = helm.template([work / "test-values.yaml"]).one("PrometheusRule")
    groups = rule["spec"]["groups"]
    for group in groups:
        group["rules"] = cut_windows(group["rules"])
        group["interval"] = "1s"
    (work / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    job = rule["metadata"]["name"]  # the rules select job="<full name>"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(work / "rules.yml")],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{relay_port}"]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    bin_dir = Path(sys.executable).parent
    processes.start(
        "simulator",
        [str(bin_dir / "relay"), "simulate", "--port", str(sim_port), "--integrations", f"{ACME},{GLOBEX}",
         "--users", "40", "--candidates", "5", "--jobs", "5", "--employees", "5", "--churn", "4",
         "--webhook-url", f"{relay}/webhooks/kombo", "--webhook-secret", WEBHOOK_SECRET],
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        {
            "RELAY_SOURCE_URL": f"{simulator}/v1",
            "RELAY_API_KEY": "sim-api-key",
            "RELAY_INTEGRATIONS": f"{ACME},{GLOBEX}",
            "RELAY_RESOURCES": USERS,
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
            "RELAY_TOPIC_PREFIX": topic_prefix,
            "RELAY_TOPIC_PARTITIONS": "1",
            "RELAY_STATE_TOPIC_PARTITIONS": "1",
            "RELAY_HTTP_HOST": "127.0.0.1",
            "RELAY_HTTP_PORT": str(relay_port),
            # Long enough that webhooks, not the schedule, start most polls: the webhook-to-event panel has data.
            "RELAY_POLL_INTERVAL_SECONDS": "3",
            "RELAY_INTEGRATION_BACKOFF_MAX_SECONDS": "1",
            "RELAY_SOURCE_BACKOFF_INITIAL_SECONDS": "0.05",
            "RELAY_SOURCE_BACKOFF_MAX_SECONDS": "0.2",
            "RELAY_LOG_FORMAT": "json",
            "RELAY_KOMBO_WEBHOOK_SECRET": WEBHOOK_SECRET,  # the simulator's webhooks trigger polls: webhook panels
        }
    )
    wait_for("the simulator", lambda: answers(f"{simulator}/_sim/state"), 30, alive=processes.check_alive)
    # Two 503s for globex, retried within their polls: the retries panel has a series to show.
    http_json(f"{simulator}/_sim/faults", "POST", {"kind": "http_503", "count": 2, "integration": GLOBEX})
    processes.start("relay", [sys.executable, "-m", "relay", "run"], env=env)
    processes.start(
        "prometheus",
        [str(prometheus_server), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
    )  # fmt: skip
    alive = processes.check_alive
    wait_for("the relay to be ready", lambda: answers(f"{relay}/readyz"), 60, alive=alive)
    wait_for("Prometheus to be ready", lambda: answers(f"{prometheus}/-/ready"), 30, alive=alive)

    def scraped(query: str) -> Callable[[], bool | None]:
        def probe() -> bool | None:
            result = http_json(f"{prometheus}/api/v1/query?query=" + urllib.parse.quote(query))
            return True if result["data"]["result"] else None

        return probe

    wait_for("Prometheus to scrape a ready relay", scraped(f'relay_ready{{job="{job}"}} == 1'), 20, alive=alive)
    healthy = f'relay_integrations{{job="{job}",health="healthy"}} == 2'
    wait_for("both integrations healthy, seen by Prometheus", scraped(healthy), 20, alive=alive)
    published = f'relay_events_published_total{{job="{job}",resource="{USERS}"}} > 0'
    wait_for("events published, seen by Prometheus", scraped(published), 20, alive=alive)
    assert firing(prometheus, "ChangeRelayPollsFailing") == []
    assert firing(prometheus, "ChangeRelayIntegrationUnhealthy") == []
    broken_at = time.monotonic()

    http_json(f"{simulator}/_sim/integrations/{ACME}/state", "PUT", {"state": "inactive"})
    [polls_failing] = wait_for(
        "ChangeRelayPollsFailing to fire for ats/users",
        lambda: firing(prometheus, "ChangeRelayPollsFailing", resource=USERS) or None,
        30,
        alive=alive,
    )
    [unhealthy] = wait_for(
        "ChangeRelayIntegrationUnhealthy to fire",
        lambda: firing(prometheus, "ChangeRelayIntegrationUnhealthy") or None,
        30,
        alive=alive,
    )
    fired_after = time.monotonic() - broken_at
    assert unhealthy["labels"]["instance"] == f"127.0.0.1:{relay_port}"
    assert polls_failing["labels"]["job"] == job
    status = http_json(f"{relay}/status")
    assert unhealthy["value"] in ("1e+00", "1"), json.dumps(status, indent=1)
    assert "INTEGRATION.INACTIVE" in json.dumps(status), status

    healed_at = time.monotonic()
    http_json(f"{simulator}/_sim/integrations/{ACME}/state", "PUT", {"state": "active"})
    for alert in ("ChangeRelayPollsFailing", "ChangeRelayIntegrationUnhealthy"):
        wait_for(
            f"{alert} to resolve",
            lambda alert=alert: True if not firing(prometheus, alert) else None,
            30,
            alive=alive,
        )
    resolved_after = time.monotonic() - healed_at
    for alert in ("ChangeRelayDown", "ChangeRelayNotReady", "ChangeRelayFenced", "ChangeRelayPairStuck"):
        assert firing(prometheus, alert) == [], alert

    panels_without_data = check_dashboard(prometheus, since=started)
    assert panels_without_data == set(NO_DATA_EXPECTED), panels_without_data - set(NO_DATA_EXPECTED)
    print(  # shown with -s: what the run saw
        f"\nlive alerts: fired {fired_after:.1f}s after the break, resolved {resolved_after:.1f}s after the heal;"
        f" whole test {time.monotonic() - started:.1f}s"
    )
    assert time.monotonic() - started < 60


def check_dashboard(prometheus: str, since: float) -> set[str]:
    """Ask Prometheus every panel's queries: each must parse; returns the titles of the panels with no data."""
    end = time.time()
    start = end - (time.monotonic() - since)
    without_data = set()
    dump: dict[str, Any] = {"start": start, "end": end, "panels": []}
    for panel in dashboard_panels(load_dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        series = []
        for target in panel["targets"]:
            query = grafana_to_promql(target["expr"])
            params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": 1})
            try:
                answer = http_json(f"{prometheus}/api/v1/query_range?{params}")
            except urllib.error.HTTPError as error:
                raise AssertionError(f"{panel['title']}: {query!r} was refused: {error.read().decode()}") from None
            assert answer["status"] == "success", (panel["title"], answer)
            legend = target.get("legendFormat") or ""
            for result in answer["data"]["result"]:
                labels = result["metric"]
                name = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m, labels=labels: labels.get(m.group(1), ""), legend)
                series.append({"legend": name or query, "values": result["values"]})
        if not any(any(v != "NaN" for _, v in s["values"]) for s in series):
            without_data.add(panel["title"])
        dump["panels"].append({"title": panel["title"], "type": panel["type"], "series": series})
    target = os.environ.get("RELAY_DASHBOARD_DUMP")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(dump))
    return without_data

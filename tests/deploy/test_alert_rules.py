"""``promtool test rules`` on deploy/prometheus/alerts.yml: every alert fires when it should, after its ``for:``, and
stays silent in the healthy case and in the case that looks like it (a restart is not "relay down", a quiet
integration is not "lagging", a short episode is not "stuck").

The input series are recorded from the relay's own ``/metrics`` page (``tests/deploy/alert_series.py``): a real
``relay.metrics.Metrics`` driven through each situation minute by minute and scraped like Prometheus would. Each
situation becomes one promtool test group; the expected alerts carry their labels and their annotations as
Prometheus renders them. Run these alone with ``.venv/bin/pytest tests/deploy/test_alert_rules.py``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest

from relay.metrics import Metrics
from tests.deploy.alert_series import (
    INSTANCE,
    JOB,
    FleetSituation,
    Pair,
    Recording,
    Situation,
    always,
    between,
    expected_alert,
    parse_page,
    parse_page_with_prometheus_client,
)
from tests.deploy.chart import REPO

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
RULES = {rule["alert"]: rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
TARGET = {"job": JOB, "instance": INSTANCE}
USERS, EMPLOYEES = "ats/users", "hris/employees"
ACME, GLOBEX = "personio:acme", "greenhouse:globex"


def fleet(**outcomes: Callable[[float], str]) -> list[Pair]:
    """Two integrations by two resources; ``outcomes`` overrides a pair's, keyed like ``acme_users``."""
    pairs = []
    for integration in (ACME, GLOBEX):
        for resource in (USERS, EMPLOYEES):
            key = f"{integration.split(':')[1]}_{resource.split('/')[1]}"
            pairs.append(Pair(integration, resource, outcomes.get(key, always("success"))))
    return pairs


def for_minutes(alert: str) -> int:
    """The alert's ``for:`` in minutes (0 when it has none)."""
    text = str(RULES[alert].get("for", "0m"))
    minutes = 0
    for amount, unit in re.findall(r"(\d+)([hm])", text):
        minutes += int(amount) * (60 if unit == "h" else 1)
    assert text in ("0m", "") or minutes, text
    return minutes


Value = Callable[[Recording, int], float]


def constant(value: float) -> Value:
    return lambda _recording, _minute: value


@dataclass
class Firing:
    """One alert instance expected to fire: its labels (without alertname and the rule's own) and its $value."""

    labels: dict[str, str]
    value: Value = field(default_factory=lambda: constant(1.0))


@dataclass
class Case:
    """A situation, and for one alert: the minutes it must be silent and those it must fire at (with what)."""

    situation: Situation | FleetSituation
    alert: str
    silent: range | list[int]
    firing: range | list[int] = field(default_factory=list)
    expected: list[Firing] = field(default_factory=list)


def silent_throughout(situation: Situation | FleetSituation) -> list[Case]:
    """The look-alikes: no alert at all, checked every 5 minutes of the situation."""
    return [Case(situation, alert, range(0, situation.minutes + 1, 5)) for alert in RULES]


def watermark_lag(resource: str) -> Value:
    """time() - the resource's recorded watermark, at a minute of the recording."""

    def value(recording: Recording, minute: int) -> float:
        [key] = [
            k for k in recording.values if k.startswith("relay_watermark_timestamp_seconds{") and f'"{resource}"' in k
        ]
        recorded = [v for v in recording.values[key][: minute + 1] if v not in ("_", "stale")]
        return minute * 60 - float(recorded[-1])

    return value


def onset(alert: str, condition_from: int, until: int) -> tuple[range, range]:
    """Silent before the condition has held for the alert's ``for:``; firing from then until ``until``."""
    fires_at = condition_from + for_minutes(alert)
    assert fires_at <= until, f"{alert}'s for: is longer than its situation's condition lasts: it would never fire"
    return range(0, fires_at), range(fires_at, until + 1)


# -- the situations --------------------------------------------------------------------------------------------------

HEALTHY = Situation("healthy", 180, fleet())
QUIET = Situation("quiet: nothing new at the source", 180, [])  # pairs set below: no events, watermark still moves
QUIET.pairs = fleet()
for _pair in QUIET.pairs:
    _pair.events_per_poll = 0
RESTARTS = Situation(
    "restarts: one slow (two failed scrapes), one within a scrape interval",
    180,
    fleet(),
    down=lambda minute: minute in (60, 61),
    restarts=(62, 120),
)

DOWN = Situation("down from minute 30", 90, fleet(), down=lambda minute: minute >= 30)
NOT_READY = Situation(
    "Kafka unreachable from minute 30",
    90,
    fleet(**{name: between(30, 999, "kafka_error") for name in ("acme_users", "acme_employees", "globex_users")}),
    not_ready=lambda minute: minute >= 30,
)
USERS_FAILING = Situation(
    "every poll of ats/users fails from minute 30",
    120,
    fleet(acme_users=between(30, 999, "integration_error"), globex_users=between(30, 999, "integration_error")),
)
CURSOR_REJECTED = Situation(
    "every poll of ats/users restarts after a rejected cursor",
    120,
    fleet(acme_users=between(30, 999, "cursor_rejected"), globex_users=between(30, 999, "cursor_rejected")),
)
SHORT_OUTAGE = Situation(
    "ats/users fails for ten minutes",
    120,
    fleet(acme_users=between(30, 40, "source_error"), globex_users=between(30, 40, "source_error")),
)
USERS_FROZEN = Situation(
    "ats/users stops advancing at minute 30",
    120,
    fleet(acme_users=between(30, 999, "source_error"), globex_users=between(30, 999, "source_error")),
)
ACME_INACTIVE = Situation(
    "personio:acme is inactive from minute 30",
    120,
    fleet(acme_users=between(30, 999, "integration_error"), acme_employees=between(30, 999, "integration_error")),
)
ACME_BLIP = Situation(
    "personio:acme is inactive for twenty minutes",
    120,
    fleet(acme_users=between(30, 50, "integration_error"), acme_employees=between(30, 50, "integration_error")),
)
FIRST_SNAPSHOT = Situation(
    "the first snapshot of ats/users takes seventy minutes (no watermark yet)",
    120,
    fleet(acme_users=between(0, 70, "running"), globex_users=between(0, 70, "running")),
)
FENCED = Situation("fenced at minute 20, then exits", 60, fleet(), fenced_at=20)
STUCK = Situation(
    "acme's users stuck on an internal error, globex's employees on a looping cursor, from minute 30",
    240,
    fleet(acme_users=between(30, 999, "internal_error"), globex_employees=between(30, 999, "invalid_page")),
)
STUCK_EPISODES = Situation(
    "one internal error, and twenty minutes of too large a record",
    240,
    fleet(acme_users=between(30, 30.5, "internal_error"), globex_employees=between(60, 80, "record_too_large")),
)

# A fleet: two replicas (instances) of one relay, sharing six state partitions.
REPLICA_0, REPLICA_1 = "relay-0:8080", "relay-1:8080"
FLEET_HEALTHY = FleetSituation("fleet: two replicas own 3 + 3 of 6 partitions", 120, {0: {REPLICA_0: 3, REPLICA_1: 3}})
REPLICA_LOST = FleetSituation(
    "fleet: relay-1 dies at minute 30, its partitions are claimed only at 40; the whole fleet is down from 60",
    90,
    {0: {REPLICA_0: 3, REPLICA_1: 3}, 30: {REPLICA_1: None}, 40: {REPLICA_0: 6}, 60: {REPLICA_0: None}},
    rebalances=lambda minute: int(minute == 40),
)
ROLLING_DEPLOY = FleetSituation(
    "fleet: a rolling deploy, each replica replaced within a minute, two rebalances each",
    120,
    {
        0: {REPLICA_0: 3, REPLICA_1: 3},
        30: {REPLICA_1: None},  # relay-0 has not claimed relay-1's partitions yet at this scrape
        31: {REPLICA_0: 6},
        32: {REPLICA_0: 3, REPLICA_1: 3},
        40: {REPLICA_0: None},
        41: {REPLICA_1: 6},
        42: {REPLICA_0: 3, REPLICA_1: 3},
    },
    rebalances=lambda minute: int(minute in (31, 32, 41, 42)),
)
STORM = FleetSituation(
    "fleet: the group rebalances every minute from 30 to 90 (the same partitions handed back each time)",
    150,
    {0: {REPLICA_0: 3, REPLICA_1: 3}},
    rebalances=lambda minute: int(30 <= minute < 90),
)

_down_silent, _down_firing = onset("ChangeRelayDown", 30, 90)
_ready_silent, _ready_firing = onset("ChangeRelayNotReady", 30, 90)
_lag_silent, _lag_firing = onset("ChangeRelayWatermarkLagHigh", 59, 120)  # 30 minutes after its last watermark
# The first failed polls are at 30:01, seen by the scrape at 31.
_unhealthy_silent, _unhealthy_firing = onset("ChangeRelayIntegrationUnhealthy", 31, 120)
_stuck_silent, _stuck_firing = onset("ChangeRelayPairStuck", 31, 240)
# relay-1's series go stale at its first failed scrape: from minute 30 the replicas own 3 of 6, until 40.
_unowned_silent, _unowned_firing = onset("ChangeRelayPartitionUnowned", 30, 39)
# One rebalance a minute from minute 30: increase(...[15m]) is 11 from minute 40 (counters at 0 before 30, so no
# extrapolation below 0) until 93 (the last 10 of the 60 rebalances in the window, extrapolated to 15 minutes: 10.7).
_storm_silent, _storm_firing = onset("ChangeRelayRebalanceStorm", 40, 93)

CASES: list[Case] = [
    *silent_throughout(HEALTHY),
    *silent_throughout(QUIET),
    *silent_throughout(RESTARTS),
    Case(DOWN, "ChangeRelayDown", _down_silent, _down_firing, [Firing(TARGET)]),
    Case(NOT_READY, "ChangeRelayNotReady", _ready_silent, _ready_firing, [Firing(TARGET)]),
    # The failed fraction passes 0.5 a few minutes after 30 (the 15-minute window still holds successes), so the
    # minutes in between are not checked.
    Case(
        USERS_FAILING,
        "ChangeRelayPollsFailing",
        range(0, 30 + for_minutes("ChangeRelayPollsFailing")),
        range(30 + for_minutes("ChangeRelayPollsFailing") + 10, 121),
        [Firing({"job": JOB, "resource": USERS})],
    ),
    Case(CURSOR_REJECTED, "ChangeRelayPollsFailing", range(0, 121)),
    Case(SHORT_OUTAGE, "ChangeRelayPollsFailing", range(0, 121)),
    Case(
        USERS_FROZEN,
        "ChangeRelayWatermarkLagHigh",
        _lag_silent,
        _lag_firing,
        [Firing({**TARGET, "resource": USERS}, watermark_lag(USERS))],
    ),
    Case(QUIET, "ChangeRelayWatermarkLagHigh", range(0, 181)),
    Case(FIRST_SNAPSHOT, "ChangeRelayWatermarkLagHigh", range(0, 121)),
    Case(
        ACME_INACTIVE,
        "ChangeRelayIntegrationUnhealthy",
        _unhealthy_silent,
        _unhealthy_firing,
        [Firing({**TARGET, "health": "unhealthy"})],
    ),
    Case(ACME_BLIP, "ChangeRelayIntegrationUnhealthy", range(0, 121)),
    Case(FENCED, "ChangeRelayFenced", [*range(0, 20), *range(35, 61)], range(20, 35), [Firing(TARGET)]),
    Case(
        STUCK,
        "ChangeRelayPairStuck",
        _stuck_silent,
        _stuck_firing,
        [
            Firing({"job": JOB, "resource": USERS, "outcome": "internal_error"}),
            Firing({"job": JOB, "resource": EMPLOYEES, "outcome": "invalid_page"}),
        ],
    ),
    Case(STUCK_EPISODES, "ChangeRelayPairStuck", range(0, 241)),
    *silent_throughout(FLEET_HEALTHY),
    Case(
        REPLICA_LOST,
        "ChangeRelayPartitionUnowned",
        [*_unowned_silent, *range(40, 91)],  # resolved once claimed; silent while no replica is up (Down's case)
        _unowned_firing,
        [Firing({"job": JOB}, constant(3.0))],
    ),
    Case(ROLLING_DEPLOY, "ChangeRelayPartitionUnowned", range(0, 121)),
    Case(STORM, "ChangeRelayPartitionUnowned", range(0, 151)),
    Case(STORM, "ChangeRelayRebalanceStorm", [*_storm_silent, *range(94, 151)], _storm_firing, [Firing({"job": JOB})]),
    Case(ROLLING_DEPLOY, "ChangeRelayRebalanceStorm", range(0, 121)),
    Case(REPLICA_LOST, "ChangeRelayRebalanceStorm", range(0, 91)),
]


def test_every_alert_has_a_firing_case_and_a_look_alike() -> None:
    firing = {case.alert for case in CASES if case.firing}
    healthy = (HEALTHY, RESTARTS, FLEET_HEALTHY)
    silent_only = {case.alert for case in CASES if not case.firing and case.situation not in healthy}
    assert firing == set(RULES), sorted(set(RULES) - firing)
    # ChangeRelayDown's and ChangeRelayNotReady's look-alike is the restart, ChangeRelayFenced's the restart too.
    assert silent_only | {"ChangeRelayDown", "ChangeRelayNotReady", "ChangeRelayFenced"} == set(RULES)


def unit_test_file(rule_file: Path) -> dict[str, Any]:
    recordings: dict[str, Recording] = {}
    groups: dict[str, dict[str, Any]] = {}
    for case in CASES:
        name = case.situation.name
        if name not in recordings:
            recordings[name] = case.situation.record()
            groups[name] = {
                "name": name,
                "interval": "1m",
                "input_series": recordings[name].input_series(),
                "alert_rule_test": [],
            }
        recording = recordings[name]
        firing_at = set(case.firing)
        assert not firing_at & set(case.silent), case
        for minute in sorted({*case.silent, *case.firing}):
            expected = (
                [expected_alert(RULES[case.alert], f.labels, f.value(recording, minute)) for f in case.expected]
                if minute in firing_at
                else []
            )
            groups[name]["alert_rule_test"].append(
                {"eval_time": f"{minute}m", "alertname": case.alert, "exp_alerts": expected}
            )
    no_relay = {
        "name": "no relay target at all",
        "interval": "1m",
        "input_series": [{"series": 'up{job="prometheus",instance="localhost:9090"}', "values": "1+0x20"}],
        "alert_rule_test": [
            {
                "eval_time": f"{minute}m",
                "alertname": "ChangeRelayDown",
                "exp_alerts": [expected_alert(RULES["ChangeRelayDown"], {"job": JOB}, 1.0)]
                if minute >= for_minutes("ChangeRelayDown")
                else [],
            }
            for minute in range(0, 21)
        ],
    }
    return {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "1m",
        "tests": [*groups.values(), no_relay],
    }


def test_parse_page_agrees_with_prometheus_client() -> None:
    metrics = Metrics(["ats/users"])
    metrics.polls.labels("ats/users", "incremental", "success").inc(3)
    metrics.transaction_errors.labels('Odd"Name\\x').inc()
    metrics.watermark.labels("ats/users").set(1.5e9 + 0.25)
    page = generate_latest(metrics.registry).decode()
    assert parse_page(page) == parse_page_with_prometheus_client(page)


def test_the_recorded_series_are_the_relays() -> None:
    """The recording holds every family the rules read, with the relay's labels (a sanity check of the recorder)."""
    recording = HEALTHY.record()
    families = recording.families()
    for name in ("up", "relay_polls_total", "relay_ready", "relay_watermark_timestamp_seconds", "relay_fenced"):
        assert name in families
    assert "relay_integrations" in families
    polls = [k for k in recording.values if k.startswith("relay_polls_total{") and 'outcome="success"' in k]
    assert len(polls) == 2 * 4  # two resources by four kinds (snapshot, incremental, reconcile, resnapshot)
    for label in ('job="change-relay"', 'instance="relay:8080"', 'kind="incremental"', f'resource="{USERS}"'):
        assert any(label in key for key in polls), label
    fleet = REPLICA_LOST.record()
    for name in ("relay_owned_partitions", "relay_state_partitions", "relay_rebalances_total"):
        instances = {key for key in fleet.values if key.startswith(name + "{")}
        assert instances == {f'{name}{{instance="{instance}",job="{JOB}"}}' for instance in (REPLICA_0, REPLICA_1)}, (
            instances
        )


def test_alert_rules_unit_tests(promtool: Path, tmp_path: Path) -> None:
    tests_file = tmp_path / "alerts.test.yml"
    # libyaml's dumper: the pure-Python one takes many seconds over the 1.4 MB of series.
    tests_file.write_text(yaml.dump(unit_test_file(ALERTS), Dumper=yaml.CSafeDumper, sort_keys=False, width=1 << 20))
    result = subprocess.run(
        [str(promtool), "test", "rules", str(tests_file)], capture_output=True, text=True, check=False, timeout=240
    )
    assert result.returncode == 0, f"promtool test rules:\n{result.stdout[-20000:]}{result.stderr[-5000:]}"
    assert "SUCCESS" in result.stdout, result.stdout

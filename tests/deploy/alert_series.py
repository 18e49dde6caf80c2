"""Input series for ``promtool test rules``, recorded from the relay's own ``/metrics`` page.

A :class:`SimulatedRelay` holds a real :class:`relay.metrics.Metrics` and drives it the way the relay does (a poll
ends with an outcome counted in ``relay_polls_total``; a successful one sets the watermark and the last success; a
failed pair backs off by the scheduler's own :meth:`Scheduler._backoff_delay`; the health gauge counts the
integrations whose last poll failed; a restart is a fresh ``Metrics``, counters back at 0). A :class:`Recording`
scrapes it every ``SCRAPE_INTERVAL`` like Prometheus: it renders the page with ``generate_latest``, parses it with
prometheus-client's parser, adds the target labels (``job``, ``instance``) and Prometheus' ``up``, and marks series
stale when a scrape fails or a series disappears from the page. Nothing here types a series' name or labels by hand:
they are whatever the page says.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import Metrics
from relay.scheduler import PairStatus, Scheduler

SCRAPE_INTERVAL = 60  # seconds; promtool's evaluation interval too
JOB = "change-relay"
INSTANCE = "relay:8080"
POLL_INTERVAL = 60.0  # the relay's defaults (relay/config.py)
BACKOFF_MAX = 900.0


def _series_key(name: str, labels: dict[str, str]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    inner = ",".join(f'{key}="{escape(value)}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)",?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_page(page: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a text-format page: (name, labels, value). prometheus-client's own parser reads the same, but
    at a tenth of the speed, which two thousand scrapes notice; :func:`test_parse_page_agrees_with_prometheus_client`
    holds them to the same result."""
    samples = []
    for line in page.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        labels = {
            label["key"]: re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group()], label["value"])
            for label in _LABEL.finditer(match["labels"] or "")
        }
        samples.append((match["name"], labels, float(match["value"])))
    return samples


def parse_page_with_prometheus_client(page: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    ]


def scrape_page(metrics: Metrics, instance: str = INSTANCE) -> dict[str, float]:
    """The samples of one ``/metrics`` page, keyed by series as Prometheus stores them (target labels added)."""
    samples = {}
    for name, labels, value in parse_page(generate_latest(metrics.registry).decode()):
        # prometheus-client's *_created series are dropped: no rule or panel reads them.
        if not name.endswith("_created"):
            samples[_series_key(name, {**labels, "job": JOB, "instance": instance})] = value
    return samples


@dataclass
class Recording:
    """The series Prometheus would hold after scraping a relay every minute, in promtool's ``values`` notation."""

    values: dict[str, list[str]] = field(default_factory=dict)
    steps: int = 0

    def scrape(self, metrics: Metrics | None) -> None:
        """One scrape: of ``metrics``' page, or a failed one (the relay is down) when it is None."""
        self.scrape_targets({INSTANCE: metrics})

    def scrape_targets(self, targets: dict[str, Metrics | None]) -> None:
        """One scrape of each target (replicas of one job, by instance): of its page, or a failed one when None."""
        samples = {}
        for instance, metrics in targets.items():
            if metrics is not None:
                samples.update(scrape_page(metrics, instance))
            samples[_series_key("up", {"job": JOB, "instance": instance})] = 0.0 if metrics is None else 1.0
        for key, value in samples.items():
            self.values.setdefault(key, ["_"] * self.steps).append(_number(value))
        for values in self.values.values():
            if len(values) == self.steps:  # gone from this scrape: stale once, then missing
                values.append("stale" if values and values[-1] not in ("_", "stale") else "_")
        self.steps += 1

    def input_series(self) -> list[dict[str, str]]:
        return [{"series": key, "values": expanding_notation(values)} for key, values in sorted(self.values.items())]

    def families(self) -> set[str]:
        return {re.split(r"[{]", key, maxsplit=1)[0] for key in self.values}


def expanding_notation(values: list[str]) -> str:
    """promtool's ``values`` text, with runs of integers in arithmetic progression written ``a+bxn`` (``a``, then
    ``n`` more values, each ``b`` above the previous): what a counter or a steady gauge does most of the time."""
    words = []
    i = 0
    while i < len(values):
        if not re.fullmatch(r"-?\d+", values[i]):
            words.append(values[i])
            i += 1
            continue
        j = i + 1
        step = int(values[j]) - int(values[i]) if j < len(values) and re.fullmatch(r"-?\d+", values[j]) else None
        while step is not None and j < len(values) and re.fullmatch(r"-?\d+", values[j]):
            if int(values[j]) - int(values[j - 1]) != step:
                break
            j += 1
        run = j - i  # values[i:j] share the step
        if run == 1 or step is None:
            words.append(values[i])
        else:
            words.append(f"{values[i]}{'+' if step >= 0 else '-'}{abs(step)}x{run - 1}")
        i = j
    return " ".join(words)


Outcome = Callable[[float], str]


def always(outcome: str) -> Outcome:
    return lambda _at: outcome


def between(start_min: float, end_min: float, outcome: str, otherwise: str = "success") -> Outcome:
    """``outcome`` for polls from minute ``start_min`` until ``end_min``, ``otherwise`` before and after."""
    return lambda at: outcome if start_min * 60 <= at < end_min * 60 else otherwise


@dataclass
class Pair:
    """One (integration, resource) pair: what each of its polls ends as, by time, and its scheduler status."""

    integration: str
    resource: str
    outcome: Outcome = field(default_factory=lambda: always("success"))
    events_per_poll: int = 3
    status: PairStatus = field(init=False)
    next_at: float = 0.0

    def __post_init__(self) -> None:
        self.status = PairStatus(self.integration, self.resource)


class _BackoffOnly:
    """What :meth:`Scheduler._backoff_delay` reads of its scheduler: the relay's default settings and a seeded rng."""

    def __init__(self) -> None:
        self._config = type(
            "Config", (), {"integration_backoff_max_seconds": BACKOFF_MAX, "poll_interval_seconds": POLL_INTERVAL}
        )
        self._rng = random.Random(7)


class SimulatedRelay:
    """A relay's metrics, driven through time by its pairs' polls (see the module's docstring)."""

    def __init__(self, pairs: list[Pair], resources: tuple[str, ...]) -> None:
        self.pairs = pairs
        self.resources = resources
        self.integrations = sorted({pair.integration for pair in pairs})
        self._backoff = _BackoffOnly()
        self.metrics = self._fresh(0.0)

    def _fresh(self, now: float) -> Metrics:
        metrics = Metrics(self.resources)
        metrics.build_info.info({"version": "0.0.0-test"})
        for pair in self.pairs:
            pair.status = PairStatus(pair.integration, pair.resource)
            pair.next_at = now + 1.0  # the first polls start as soon as the state is restored
        self._health(metrics)
        return metrics

    def restart(self, now: float) -> None:
        """A new process: every series from 0 again, not ready until it has polled."""
        self.metrics = self._fresh(now)

    def _health(self, metrics: Metrics) -> None:
        unhealthy = {pair.integration for pair in self.pairs if not pair.status.healthy}
        metrics.integrations.labels("unhealthy").set(len(unhealthy))
        metrics.integrations.labels("healthy").set(len(self.integrations) - len(unhealthy))

    def run_until(self, now: float) -> None:
        """Every poll due up to ``now``, in time order."""
        while True:
            due = [pair for pair in self.pairs if pair.next_at <= now]
            if not due:
                return
            pair = min(due, key=lambda p: p.next_at)
            self._poll(pair, pair.next_at)

    def _poll(self, pair: Pair, at: float) -> None:
        metrics = self.metrics
        outcome = pair.outcome(at)
        if outcome == "running":  # a long poll (a first snapshot) still going: nothing is counted until it ends
            pair.next_at = at + POLL_INTERVAL
            return
        kind = "incremental"
        metrics.polls_triggered.labels(pair.resource, "schedule").inc()
        metrics.poll_duration.labels(pair.resource, kind).observe(0.2)
        if outcome in ("success", "cursor_rejected"):
            metrics.polls.labels(pair.resource, kind, outcome).inc()
            metrics.source_requests.labels(pair.resource, "2xx", "").inc()
            metrics.records_fetched.labels(pair.resource).inc(pair.events_per_poll)
            metrics.events_published.labels(pair.resource, "updated").inc(pair.events_per_poll)
            metrics.last_success.labels(pair.resource).set(at)
            metrics.watermark.labels(pair.resource).set(at - 2.0)  # the poll's start, in source time
            pair.status.healthy = True
            pair.status.consecutive_failures = 0
            pair.next_at = at + POLL_INTERVAL
        else:
            metrics.polls.labels(pair.resource, kind, outcome).inc()
            pair.status.healthy = False
            pair.status.consecutive_failures += 1
            if outcome == "kafka_error":  # Kafka's trouble, not the integration's: retried soon
                pair.next_at = at + POLL_INTERVAL / 2
            else:
                pair.next_at = at + Scheduler._backoff_delay(cast(Scheduler, self._backoff), pair.status)
        self._health(metrics)


@dataclass
class Situation:
    """A relay's life minute by minute: its pairs, and when it is down, restarts, is not ready or is fenced."""

    name: str
    minutes: int
    pairs: list[Pair]
    resources: tuple[str, ...] = ("ats/users", "hris/employees")
    down: Callable[[int], bool] = lambda _minute: False
    restarts: tuple[int, ...] = ()
    not_ready: Callable[[int], bool] = lambda _minute: False
    fenced_at: int | None = None

    def record(self) -> Recording:
        relay = SimulatedRelay(self.pairs, self.resources)
        recording = Recording()
        for minute in range(self.minutes + 1):
            now = float(minute * SCRAPE_INTERVAL)
            if minute in self.restarts:
                relay.restart(now - SCRAPE_INTERVAL / 2)
            if self.fenced_at is not None and minute > self.fenced_at:
                recording.scrape(None)  # it exited
                continue
            if self.down(minute):
                recording.scrape(None)
                continue
            relay.run_until(now)
            # Not ready at the very first scrape (its state is being restored), nor while Kafka is unreachable.
            relay.metrics.ready.set(1 if minute > 0 and not self.not_ready(minute) else 0)
            if self.fenced_at is not None and minute == self.fenced_at:
                relay.metrics.fenced.set(1)
                relay.metrics.ready.set(0)
            recording.scrape(relay.metrics)
        return recording


Owned = dict[str, int | None]


@dataclass
class FleetSituation:
    """Replicas of one relay (one job, an instance each) minute by minute, their fleet metrics set through their own
    :class:`Metrics` as relay.app and relay.fleet do: ``relay_state_partitions`` at start, ``relay_owned_partitions``
    when a handover ends, ``relay_rebalances_total`` once per rebalance each replica up takes part in.

    ``owned`` says, from a minute on, what a replica owns, or None while it is down (its scrapes fail; when it comes
    back it is a new process, counters at 0). ``rebalances`` is the number of rebalances of the group in the minute
    before a scrape."""

    name: str
    minutes: int
    owned: dict[int, Owned]
    partitions: int = 6
    rebalances: Callable[[int], int] = lambda _minute: 0

    def record(self) -> Recording:
        recording = Recording()
        replicas: dict[str, Metrics | None] = {}
        owned: Owned = {}
        for minute in range(self.minutes + 1):
            owned.update(self.owned.get(minute, {}))
            for instance, count in owned.items():
                if count is None:
                    replicas[instance] = None
                    continue
                metrics = replicas.get(instance)
                if metrics is None:  # started, or restarted: a fresh process
                    metrics = replicas[instance] = Metrics(())
                    metrics.build_info.info({"version": "0.0.0-test"})
                    metrics.state_partitions.set(self.partitions)
                metrics.rebalances.inc(self.rebalances(minute))
                metrics.owned_partitions.set(count)
                metrics.ready.set(1)
            recording.scrape_targets(dict(replicas))
        return recording


def humanize_duration(seconds: float) -> str:
    """Prometheus' ``humanizeDuration`` for the values these tests produce (at least one second)."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{seconds:.4g}s"


def render_annotation(template: str, labels: dict[str, str], value: float) -> str:
    """An annotation as Prometheus renders it, for the template forms the relay's rules use."""

    def substitute(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        if expression.startswith("$labels."):
            return labels.get(expression.removeprefix("$labels."), "")
        if expression == "$value":
            return f"{value:g}"
        if expression == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"
        if expression == "$value | humanizeDuration":
            return humanize_duration(value)
        raise AssertionError(f"no rendering for {{{{ {expression} }}}}")

    return re.sub(r"\{\{(.*?)\}\}", substitute, template)


def expected_alert(rule: dict[str, Any], labels: dict[str, str], value: float) -> dict[str, Any]:
    """promtool's ``exp_alerts`` entry for ``rule`` firing on a series with ``labels`` and ``value``."""
    # $labels in an annotation are the series' labels, without the rule's own.
    annotations = {name: render_annotation(text, labels, value) for name, text in rule.get("annotations", {}).items()}
    return {"exp_labels": {**labels, **rule.get("labels", {})}, "exp_annotations": annotations}

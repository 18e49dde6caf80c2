"""Prometheus metrics, named by Prometheus' rules: prefix ``relay_``, base units, ``_total`` counters, timestamps
rather than ages, and low-cardinality labels (``resource``, ``outcome``, ``code``; never the integration id, since a
fleet can have thousands: ``/status`` gives per-integration detail instead).

Each relay owns a :class:`Metrics` on its own ``CollectorRegistry``, so several relays can run in one process
(the tests do) without colliding in prometheus-client's global registry.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from relay import __version__
from relay.kinds import CHANGE_KINDS
from relay.verdicts import VERDICTS
from relay.webhook_labels import WEBHOOK_OUTCOMES, WEBHOOK_TYPES

# A poll succeeds, restarts after its cursor was rejected, or ends as its error's verdict says.
POLL_OUTCOMES = ("success", "cursor_rejected", *dict.fromkeys(verdict.outcome for _, verdict in VERDICTS))
POLL_KINDS = ("snapshot", "incremental", "reconcile", "resnapshot")
EVENT_TYPES: tuple[str, ...] = CHANGE_KINDS
STATUS_CLASSES = ("2xx", "4xx", "5xx", "error")
SUPPRESSED_REASONS = ("noop", "stale", "deleted", "snapshot_skipped")

# Fast polls of small pages take milliseconds; snapshots of a million records take minutes.
POLL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Webhook to event: a second or two when all is well; the tail shows polls queued behind the concurrency limit.
WEBHOOK_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)
POLL_TRIGGERS = ("webhook", "schedule")
# A handover reads a partition's state: well under a second for a small one, tens of seconds for millions of entities.
HANDOVER_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# relay_control_actions_total: the kinds of relay.control.ControlAction (unknown: an unreadable record), and what
# became of them: sent by this replica, delivered to this owner, a duplicate of a webhook id (or a command id) within
# the window, unreadable (skipped), replayed (an operator's command a new owner found unacknowledged, and runs).
# Operators' commands (resnapshot, reconcile, reset) count too, and their acks sent.
CONTROL_KINDS = ("trigger", "pause", "resume", "resnapshot", "reconcile", "reset", "ack", "unknown")
CONTROL_OUTCOMES = ("sent", "delivered", "duplicate", "unreadable", "replayed")
# relay_admin_requests_total: the operations of the admin HTTP API (relay.admin), and their outcomes (its README
# section maps each to an HTTP status).
ADMIN_OPERATIONS = ("list", "add", "remove", "pause", "resume", "resnapshot", "reconcile", "reset")
ADMIN_OUTCOMES = (
    "done",
    "sent",
    "no_ack",
    "failed",
    "invalid",
    "too_large",
    "unauthorized",
    "unknown_integration",
    "kafka_refused",
    "kafka_unavailable",
    "kafka_timeout",
    "busy",
)


class Metrics:
    """Every series change-relay exposes. Known label values are pre-initialised at 0."""

    def __init__(self, resources: Iterable[str] = (), registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Info("relay_build", "Build information of the running relay.", registry=r)
        self.build_info.info({"version": __version__})
        self.polls = Counter(
            "relay_polls_total",
            "Polls finished, by resource, kind and outcome.",
            ["resource", "kind", "outcome"],
            registry=r,
        )
        self.poll_duration = Histogram(
            "relay_poll_duration_seconds",
            "Duration of a whole poll (all its pages).",
            ["resource", "kind"],
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.source_requests = Counter(
            "relay_source_requests_total",
            "Requests to the source API by HTTP status class and Kombo error code.",
            ["resource", "status_class", "code"],
            registry=r,
        )
        self.source_request_duration = Histogram(
            "relay_source_request_duration_seconds",
            "Duration of one source API request.",
            ["resource"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.source_retries = Counter(
            "relay_source_retries_total",
            "Source requests retried after a transient error, by error code.",
            ["resource", "code"],
            registry=r,
        )
        self.rate_limit_waits = Counter(
            "relay_rate_limit_waits_total",
            "Times the client waited for the source's rate-limit budget.",
            ["reason"],
            registry=r,
        )
        self.rate_limit_wait_seconds = Counter(
            "relay_rate_limit_wait_seconds_total",
            "Seconds spent waiting for the source's rate-limit budget.",
            registry=r,
        )
        self.records_fetched = Counter(
            "relay_records_fetched_total", "Records received from the source.", ["resource"], registry=r
        )
        self.events_published = Counter(
            "relay_events_published_total", "Events committed to Kafka, by type.", ["resource", "type"], registry=r
        )
        self.events_suppressed = Counter(
            "relay_events_suppressed_total",
            "Records that produced no event: identical re-fetch (noop), stale read (stale), "
            "change to a deleted record (deleted), snapshot with RELAY_INITIAL_SNAPSHOT=skip (snapshot_skipped).",
            ["resource", "reason"],
            registry=r,
        )
        self.transaction_errors = Counter(
            "relay_kafka_transaction_errors_total",
            "Kafka transactions aborted or failed, by error class.",
            ["error"],
            registry=r,
        )
        self.transaction_duration = Histogram(
            "relay_kafka_transaction_duration_seconds",
            "Duration of one Kafka transaction (begin to commit).",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.transaction_units = Histogram(
            "relay_kafka_transaction_units",
            "Units of work (a pair's page, with its state records) committed by one Kafka transaction: more than one "
            "when units arrived while the previous transaction was in flight (group commit).",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128),
            registry=r,
        )
        self.last_success = Gauge(
            "relay_last_successful_poll_timestamp_seconds",
            "Unix time at which the last poll of this resource succeeded (for the oldest integration, see /status).",
            ["resource"],
            registry=r,
        )
        self.watermark = Gauge(
            "relay_watermark_timestamp_seconds",
            "The oldest committed watermark (source time) among the integrations of this resource.",
            ["resource"],
            registry=r,
        )
        self.entities = Gauge(
            "relay_entities_remembered", "Entities whose fingerprint the relay remembers.", ["resource"], registry=r
        )
        self.integrations = Gauge("relay_integrations", "Configured integrations by health.", ["health"], registry=r)
        self.vanish_refused = Counter(
            "relay_reconcile_vanish_refused_total",
            "Reconciliations whose vanish-deletes were refused (incomplete fetch or too many at once).",
            ["resource", "reason"],
            registry=r,
        )
        self.fenced = Gauge(
            "relay_fenced",
            "1 when another instance with our transactional id took over; this one has stopped.",
            registry=r,
        )
        self.owned_partitions = Gauge(
            "relay_owned_partitions",
            "State-topic partitions this replica owns (polls the integrations of).",
            registry=r,
        )
        self.state_partitions = Gauge(
            "relay_state_partitions",
            "Partitions the state is placed over (RELAY_STATE_TOPIC_PARTITIONS): what the fleet's replicas share.",
            registry=r,
        )
        self.rebalances = Counter(
            "relay_rebalances_total",
            "Rebalances of the fleet's consumer group this replica took part in.",
            registry=r,
        )
        self.partition_handover = Histogram(
            "relay_partition_handover_seconds",
            "From being assigned state partitions to polling their pairs: fencing, reading their state.",
            buckets=HANDOVER_BUCKETS,
            registry=r,
        )
        self.removed_state_tombstoned = Counter(
            "relay_removed_state_tombstoned_total",
            "Integrations removed from the registry whose state this replica tombstoned once "
            "RELAY_REMOVED_STATE_RETENTION had passed.",
            registry=r,
        )
        self.ready = Gauge("relay_ready", "1 when the relay is ready (state restored, Kafka reachable).", registry=r)
        self.webhooks_received = Counter(
            "relay_webhooks_received_total",
            "Kombo webhooks received, by type and outcome (accepted, duplicate, unknown_integration, paused, ignored,"
            " invalid, unauthorized, too_large, timeout, busy, unavailable, starting).",
            ["type", "outcome"],
            registry=r,
        )
        self.polls_triggered = Counter(
            "relay_polls_triggered_total",
            "Polls started, by what started them: a webhook or the schedule.",
            ["resource", "trigger"],
            registry=r,
        )
        self.webhook_to_event = Histogram(
            "relay_webhook_to_event_seconds",
            "From receiving a webhook to the events of the poll it triggered being committed.",
            ["resource"],
            buckets=WEBHOOK_LATENCY_BUCKETS,
            registry=r,
        )
        self.control_actions = Counter(
            "relay_control_actions_total",
            "Actions of the control topic (webhook triggers forwarded to the owning replica), by kind and outcome: "
            "sent, delivered, duplicate (the same webhook id within the window), unreadable (skipped), replayed "
            "(a command a new owner found unacknowledged).",
            ["kind", "outcome"],
            registry=r,
        )
        self.admin_requests = Counter(
            "relay_admin_requests_total",
            "Requests to the admin HTTP API (on only with RELAY_ADMIN_TOKEN), by operation and outcome: done, sent "
            "(not waited for), no_ack, failed (the owner said so), invalid, too_large, unauthorized, "
            "unknown_integration, kafka_refused, kafka_unavailable, kafka_timeout, busy (too many at once).",
            ["operation", "outcome"],
            registry=r,
        )
        self._by_resource: dict[str, ResourceSeries] = {}
        self.resources: tuple[str, ...] = ()  # those whose series are pre-initialised, in the order they came
        self._initialise_common()
        self.add_resources(resources)

    def for_resource(self, resource: str) -> ResourceSeries:
        """The series every poll of ``resource`` touches, resolved once and then shared."""
        series = self._by_resource.get(resource)
        if series is None:
            series = self._by_resource[resource] = ResourceSeries(self, resource)
        return series

    def add_resources(self, resources: Iterable[str]) -> tuple[str, ...]:
        """Create the series of each of ``resources`` not known yet at 0, so that rate() and absent() work from the
        first scrape; return those that were new. The resources of RELAY_RESOURCES* at start, and later those only an
        integration of the registry names (its own ``--resources``): as bounded as the registry's resource lists,
        which operators write (a webhook adds an integration with its category's, never resources of its own)."""
        new = tuple(resource for resource in dict.fromkeys(resources) if resource not in self.resources)
        self.resources += new
        for resource in new:
            for kind in POLL_KINDS:
                self.poll_duration.labels(resource, kind)
                for outcome in POLL_OUTCOMES:
                    self.polls.labels(resource, kind, outcome)
            for event_type in EVENT_TYPES:
                self.events_published.labels(resource, event_type)
            for reason in SUPPRESSED_REASONS:
                self.events_suppressed.labels(resource, reason)
            for reason in ("incomplete", "too_many"):
                self.vanish_refused.labels(resource, reason)
            self.records_fetched.labels(resource)
            self.source_request_duration.labels(resource)
            self.source_requests.labels(resource, "2xx", "")
            self.last_success.labels(resource)
            self.watermark.labels(resource)
            self.entities.labels(resource)
            for trigger in POLL_TRIGGERS:
                self.polls_triggered.labels(resource, trigger)
            self.webhook_to_event.labels(resource)
        return new

    def _initialise_common(self) -> None:
        """Create the series of no resource at 0."""
        for webhook_type in WEBHOOK_TYPES:
            for outcome in WEBHOOK_OUTCOMES:
                self.webhooks_received.labels(webhook_type, outcome)
        for kind in CONTROL_KINDS:
            for outcome in CONTROL_OUTCOMES:
                self.control_actions.labels(kind, outcome)
        for health in ("healthy", "unhealthy"):
            self.integrations.labels(health)
        for reason in ("retry_after", "budget_low"):
            self.rate_limit_waits.labels(reason)
        self.fenced.set(0)
        self.ready.set(0)

    def initialise_admin(self) -> None:
        """Create the admin API's series at 0: only when it is on (it is off by default), so that a relay without it
        does not expose 88 series that stay at 0."""
        for operation in ADMIN_OPERATIONS:
            for outcome in ADMIN_OUTCOMES:
                self.admin_requests.labels(operation, outcome)


class ResourceSeries:
    """The children of the series that every poll of one resource updates, looked up once.

    ``labels()`` stringifies and checks its arguments and takes a lock for a dictionary lookup; a fleet of idle
    integrations would pay that several times per poll, for the same few children every time.
    """

    __slots__ = (
        "events_published",
        "events_suppressed",
        "last_success",
        "poll_duration",
        "polls_succeeded",
        "polls_triggered",
        "records_fetched",
        "source_request_duration",
        "source_requests_ok",
        "webhook_to_event",
    )

    def __init__(self, metrics: Metrics, resource: str) -> None:
        self.polls_triggered = {trigger: metrics.polls_triggered.labels(resource, trigger) for trigger in POLL_TRIGGERS}
        self.polls_succeeded = {kind: metrics.polls.labels(resource, kind, "success") for kind in POLL_KINDS}
        self.poll_duration = {kind: metrics.poll_duration.labels(resource, kind) for kind in POLL_KINDS}
        self.last_success = metrics.last_success.labels(resource)
        self.webhook_to_event = metrics.webhook_to_event.labels(resource)
        self.events_published = {kind: metrics.events_published.labels(resource, kind) for kind in EVENT_TYPES}
        self.events_suppressed = {
            reason: metrics.events_suppressed.labels(resource, reason) for reason in SUPPRESSED_REASONS
        }
        self.source_request_duration = metrics.source_request_duration.labels(resource)
        self.source_requests_ok = metrics.source_requests.labels(resource, "2xx", "")
        self.records_fetched = metrics.records_fetched.labels(resource)

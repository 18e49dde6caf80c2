"""Run the relay: join the fleet's consumer group, poll the integrations of the state partitions it assigns, publish
change events to Kafka.

Start-up: validate the configuration (stop with one line per problem), start the HTTP server (``/readyz`` says not
ready yet), create missing topics, fence the producer of the releases before the fleet, read the registry of
integrations (``RELAY_INTEGRATIONS_TOPIC``; seeded first with the ``RELAY_INTEGRATIONS`` it has never heard of), join
the group (``RELAY_GROUP_ID``), and for each state partition assigned fence its previous writer, restore its state,
then poll its pairs: those of the registry's integrations placed there. Alone in the group, a relay owns every
partition. Until Kafka is reachable the relay keeps trying, with backoff, and stays not ready. While it runs, it
follows the registry: an integration added to an owned partition is polled (within one poll interval), one removed no
longer, one paused not until resumed; with RELAY_REMOVED_STATE_RETENTION, the state of one removed that long ago is
tombstoned (:mod:`relay.retention`).

Exit codes: 0 after SIGTERM/SIGINT, 2 invalid configuration, 3 the source refused the API key, 5 the state topic holds
records this version cannot read (or state placed by another RELAY_STATE_TOPIC_PARTITIONS), 6 Kafka's ACLs refuse the
relay's principal, 7 Kafka refused the relay's credentials or client certificate, or the relay refused the broker's
certificate (untrusted CA, another host name). 4 (fenced by another instance with the same transactional id) ended
the single instance of the releases before the fleet; a replica whose partition another takes over now gives that
partition up and goes on. After 3 to 7 the relay waits RELAY_FATAL_EXIT_DELAY_SECONDS (or a signal), not ready, still
serving its metrics and ``/status`` (whose ``fatal_error`` says why), before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError

from relay import __version__
from relay.admin import admin_routes
from relay.check_config import add_arguments as add_arguments  # `relay run` takes what check-config takes
from relay.commands import CommandApplier
from relay.config import Config, ConfigError, environment_warnings, load_config, print_problems
from relay.control import COMMAND_KINDS, ControlAction, ControlChannel, ForwardingTarget, apply_action
from relay.errors import (
    AuthenticationError,
    Fenced,
    KafkaAuthenticationFailed,
    KafkaAuthorizationFailed,
    KafkaUnavailable,
    StateError,
)
from relay.fleet import (
    FATAL_CLAIM_ERRORS,
    Membership,
    Ownership,
    StateReading,
    fence_single_instance_writer,
    legacy_transactional_id,
)
from relay.heap import HeapTrimmer, malloc_trim
from relay.kafka_access import check_kafka_access
from relay.logs import configure_logging
from relay.metrics import Metrics
from relay.netaddr import bound_port
from relay.partition_sinks import PartitionSinks
from relay.pipeline import Pipeline
from relay.registry import MAX_BY_LENGTH, DefaultResources, Registry, RegistryChange
from relay.registry_topic import RegistryTopic
from relay.registry_webhooks import RegistryFollower
from relay.reload_gate import ReloadGate
from relay.retention import check_interval, every
from relay.scheduler import PairStatus, Scheduler
from relay.sink import authorization_failed
from relay.source import SourceClient
from relay.state import PairState, StateStore
from relay.state_topic import restore
from relay.tasks import cancel_and_wait
from relay.web import Heartbeat, build_app
from relay.webhooks import WebhookReceiver, WebhookSettings, make_handler

log = logging.getLogger("relay")

EXIT_CONFIG = 2
EXIT_AUTHENTICATION = 3
EXIT_FENCED = 4
EXIT_STATE = 5
EXIT_KAFKA_AUTHORIZATION = 6
EXIT_KAFKA_AUTHENTICATION = 7


class Relay:
    """The running service: HTTP server, Kafka sink, state, pipeline and scheduler, started and stopped together."""

    def __init__(self, config: Config, *, state_reading: StateReading | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store = StateStore(config.state_topic_partitions)
        self.source = SourceClient(config, self.metrics)
        self.sink = PartitionSinks(config, self.metrics)
        self.heap = HeapTrimmer(malloc_trim())
        self.pipeline = Pipeline(config, self.source, self.sink, self.store, self.metrics, heap=self.heap)
        self.scheduler = Scheduler(
            config,
            ReloadGate(self.pipeline.poll_once, self.reload_state, self.pipeline.reset),
            self.metrics,
            on_stop=self.pipeline.stop,
            commits=self.pipeline.commits,
            pairs=(),  # none until this relay owns their state partitions
        )
        read_state = self._read_partitions
        if state_reading is not None:  # a claim's reading of its partitions' state, as a test's fake does it

            async def read_state(partitions: set[int]) -> None:
                await state_reading(partitions, self._read_partitions)

        self.ownership = Ownership(
            config, self.store, self.sink, self.pipeline, self.scheduler, self.metrics, read_state
        )
        self.membership: Membership | None = None  # in a fleet: this replica's seat in the consumer group
        self.control: ControlChannel | None = None  # in a fleet: webhook triggers to and from the owners
        self.commands: CommandApplier | None = None  # in a fleet: operators' commands run, registry changes acked
        self.metrics.state_partitions.set(config.state_topic_partitions)
        self.registry_topic = RegistryTopic(config)
        self._count_resources(config.all_resources())  # and those only the registry names, once it does
        self.heartbeat = Heartbeat()
        webhook_settings = WebhookSettings.from_config(config)  # None: no secret, no endpoint
        self.webhooks = None if webhook_settings is None else WebhookReceiver(webhook_settings, self.scheduler)
        if self.webhooks is not None:
            self.webhooks.accepting = False  # until the registry is read and the webhooks' target is set
        if self.webhooks is not None and config.follow_integrations:  # integration webhooks write the registry
            self.webhooks.integrations = RegistryFollower(lambda: self.ownership.registry, self.registry_topic.write)
        self.restored = False
        self.http_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._stop_requested = asyncio.Event()
        self._leaving = asyncio.Event()  # stop polling: at a stop request, or after a fatal error
        self._probe: asyncio.Task[None] | None = None
        self.fatal_error: str | None = None  # why the relay is about to exit, once an operator must act

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        checks = {
            # In a fleet: the partitions the group assigned are restored (owning none is ready too).
            "state_restored": self.restored and (self.membership is None or self.ownership.settled),
            "kafka_reachable": self.sink.reachable,
            "not_fenced": not self.sink.fenced,
            "no_fatal_error": self.fatal_error is None,
        }
        ready = all(checks.values())
        self.metrics.ready.set(1 if ready else 0)
        return ready, checks

    def status(self) -> dict[str, Any]:
        pairs = [
            _pair_status(status, self.store.pair(integration, resource))
            for (integration, resource), status in self.scheduler.status.items()
        ]
        ready, checks = self.readiness()
        return {
            "version": __version__,
            "ready": ready,
            "checks": checks,
            "fatal_error": self.fatal_error,
            "fleet": self._fleet_status(),
            "registry": self._registry_status(),
            "pairs": pairs,
        }

    @property
    def registry(self) -> Registry:
        """The registry of integrations as this relay last applied it."""
        return self.ownership.registry

    def _registry_status(self) -> dict[str, Any]:
        counts = {"active": 0, "paused": 0, "removed": 0}
        for entry in self.registry.values():
            counts[entry.state] += 1
        return {
            "topic": self.config.integrations_topic,
            "integrations": counts,
            # The integrations of the partitions this replica owns, as the registry holds them.
            "owned": dict(sorted(self.ownership.owned_states().items())),
        }

    def _fleet_status(self) -> dict[str, Any]:
        owned = sorted(self.ownership.owned)
        return {
            "member_id": None if self.membership is None else self.membership.member_id,
            "generation": None if self.membership is None else self.membership.generation,
            "state_partitions": self.config.state_topic_partitions,
            "owned_partitions": owned,
            "integrations": {str(p): sorted({i for i, _ in self.ownership.pairs_of([p])}) for p in owned},
        }

    async def start_http(self) -> None:
        self.heartbeat.start()
        webhook = None
        if self.webhooks is not None:
            webhook = (self.webhooks.settings.path, make_handler(self.webhooks, self.metrics))
        routes = admin_routes(self.config, self.metrics)  # off without RELAY_ADMIN_TOKEN: /admin/* answers 404
        app = build_app(self.metrics, self.readiness, self.status, self.heartbeat, webhook=webhook, routes=routes)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http_host, self.config.http_port)
        await site.start()
        self.http_port = bound_port(self._runner) or self.config.http_port
        log.info("http server listening", extra={"host": self.config.http_host, "port": self.http_port})

    async def connect_kafka(self) -> bool:
        """Own every state partition without joining the group (fence their writers, read their state), retrying
        until Kafka answers or a stop: for a relay its caller drives (tests, tools). ``relay run`` joins the fleet
        (:meth:`join_fleet`); alone in its group, it owns every partition too."""
        return await self._retrying(self._own_everything)

    async def _own_everything(self) -> None:
        await self._prepare_kafka()
        await self.ownership.claim(range(self.config.state_topic_partitions))
        self.restored = True
        if self.webhooks is not None:
            self.webhooks.accepting = True

    async def _prepare_kafka(self) -> None:
        """What comes before owning anything: Kafka lets this relay in, its topics exist, the producer of the
        releases before the fleet is fenced, and the registry of integrations is read (seeded first with the
        integrations of RELAY_INTEGRATIONS it has never heard of)."""
        await check_kafka_access(self.config.kafka_bootstrap_servers, self.config.kafka_security)
        await self.sink.ensure_topics()
        await fence_single_instance_writer(self.config, legacy_transactional_id(self.config))
        await self.registry_topic.ensure_topic()
        if self.config.integrations:
            seeder = f"relay run ({socket.gethostname()})"[:MAX_BY_LENGTH]
            await self.registry_topic.seed(self.config.integrations, by=seeder)
        await self.apply_registry(await self.registry_topic.read())
        counts = self._registry_status()["integrations"]
        log.info("registry of integrations read", extra={"topic": self.config.integrations_topic, **counts})
        if not counts["active"] and not counts["paused"]:
            log.warning(
                "the registry of integrations is empty: polling nothing until one is added (relay integrations add)",
                extra={"topic": self.config.integrations_topic},
            )

    async def _follow_registry(self) -> None:
        """Apply each change of the registry of integrations as it is written, until cancelled. Kafka errors are
        retried with backoff (the registry applied stays what is polled meanwhile); nothing ends this but a stop."""
        delay = 1.0
        while not self._leaving.is_set():
            try:
                async with contextlib.aclosing(self.registry_topic.follow(self.ownership.registry)) as updates:
                    async for update in updates:
                        for change in update.changes:
                            log.info(
                                "registry changed",
                                extra={
                                    "integration": change.integration,
                                    "change": change.kind,
                                    "by": None if change.after is None else change.after.updated_by,
                                },
                            )
                        await self.apply_registry(update.registry, update.changes)
                        if self.commands is not None:  # for `relay integrations`, waiting for the owner
                            self.commands.registry_applied(update.changes, self._owns)
                        delay = 1.0
                return  # the topic was closed: the relay is stopping
            except asyncio.CancelledError:
                raise
            except Exception as error:  # KafkaUnavailable, an ACL that refuses, or a bug: log, wait, follow again
                log.warning(
                    "cannot follow the registry of integrations; retrying",
                    extra={"error": f"{type(error).__name__}: {error}", "retry_in": delay},
                    exc_info=not isinstance(error, KafkaUnavailable | KafkaError | OSError),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leaving.wait(), delay)
            delay = min(delay * 2, 30.0)

    def _owns(self, integration: str) -> bool:
        return self.store.partition_of(integration) in self.ownership.owned

    async def _retrying(self, step: Callable[[], Awaitable[None]]) -> bool:
        """Run ``step`` until it succeeds (True) or a stop is requested (False), with backoff while Kafka is not
        reachable. Errors no retry mends propagate."""
        delay = 1.0
        while not self._stop_requested.is_set():
            try:
                await step()
                return True
            except KafkaUnavailable as error:
                log.warning("Kafka not reachable yet; retrying", extra={"error": str(error), "retry_in": delay})
            except (OSError, KafkaError) as error:  # aiokafka surfaces some failures unwrapped
                log.warning("Kafka not reachable yet; retrying", extra={"error": str(error), "retry_in": delay})
            await self._stop_or_timeout(delay)
            delay = min(delay * 2, 30.0)
        return False

    async def _stop_or_timeout(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)

    async def join_fleet(self) -> None:
        """Be one replica of a fleet until :meth:`request_stop`: join the consumer group, own what it assigns (its
        partitions' pairs polled by the scheduler, which the caller runs), hand it over when it moves. Webhooks this
        replica receives go to the owner of their integration through the control topic; the triggers of the
        partitions it owns come back the same way. Kafka not ready yet (a topic just created, not in the metadata)
        is retried as in ``relay run``."""
        if await self._retrying(self._prepare_kafka):
            await self._take_seat()

    async def _take_seat(self) -> None:
        """Hold a seat in the group until a stop; join again when the seat is lost to a Kafka error. Raises what a
        claim met that no retry mends (:data:`~relay.fleet.FATAL_CLAIM_ERRORS`)."""
        self.sink.in_fleet(on_lost=self.ownership.lost)
        if not await self._retrying(self._start_control):
            return
        control = self.control
        assert control is not None
        self.ownership.control = control
        if self.webhooks is not None:
            # Which integrations exist, with which resources, and which are paused: the registry as followed live.
            self.webhooks.target = ForwardingTarget(
                control, resources_of=self.ownership.resources_of, is_paused=self.ownership.is_paused
            )
            self.webhooks.accepting = True
        self.restored = True  # nothing owned yet; readiness waits for the group's first assignment
        commands = CommandApplier(self.scheduler, control.send)  # relay resnapshot, reconcile, state reset
        self.commands = self.ownership.commands = commands

        def on_action(action: ControlAction) -> None:
            if action.kind in COMMAND_KINDS:
                commands.apply(action)
            else:
                apply_action(self.scheduler, action)

        following = asyncio.create_task(control.follow(on_action), name="control topic")
        following_registry = asyncio.create_task(self._follow_registry(), name="registry topic")
        forgetting = None
        if self.config.removed_state_retention is not None:  # removed integrations' state: tombstoned once it is due
            every_so_often = check_interval(self.config.removed_state_retention)
            forgetting = asyncio.create_task(
                every(every_so_often, self.ownership.forget_removed, self._leaving), name="removed state"
            )
        try:
            delay = 1.0
            while not self._leaving.is_set():
                self.membership = Membership(self.config, self.ownership, self.metrics)
                try:
                    await self.membership.run()
                    return
                except FATAL_CLAIM_ERRORS:
                    raise
                except (KafkaUnavailable, KafkaError, OSError) as error:
                    log.warning(
                        "lost this replica's seat in the group; joining again",
                        extra={"error": str(error), "retry_in": delay},
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._leaving.wait(), delay)
                delay = min(delay * 2, 30.0)
        finally:
            await cancel_and_wait(forgetting)
            await cancel_and_wait(following_registry)
            await commands.close()
            await control.stop()
            await cancel_and_wait(following)

    async def _start_control(self) -> None:
        """Start the control channel, or stop what it started before it failed (a StateError for too few
        partitions, Kafka unreachable): a stopped channel cannot be started again, the next try makes a new one."""
        control = ControlChannel(self.config, self.metrics, partition_of=self.store.partition_of)
        try:
            await control.start()
        except BaseException:
            await control.stop()
            raise
        self.control = control

    async def reload_state(self) -> None:
        """Forget what is in memory and read the owned partitions of the state topic again (after a commit whose
        outcome is unknown)."""
        self.restored = False
        owned = set(self.sink.owned)
        self.store.drop(owned)
        # The producers first: their InitProducerId completes or aborts the transaction in doubt and fences any other
        # instance, so the state read next is final. Read before it, a commit still in flight could land afterwards.
        await self.sink.start()
        await self._read_partitions(owned)
        self.sink.state_read(owned)
        self.restored = True
        log.info("state re-read from the state topic after a Kafka error")

    async def _read_partitions(self, partitions: set[int]) -> None:
        """Read the state of ``partitions`` into memory (once their producers started). Owning them all, read every
        partition the topic has: a record in one beyond RELAY_STATE_TOPIC_PARTITIONS is state placed by another
        setting, which restore refuses (StateError)."""
        every = partitions >= set(range(self.config.state_topic_partitions))
        try:
            records = await restore(
                self.store,
                self.config.state_topic,
                self.config.kafka_client_kwargs(),
                partitions=None if every else sorted(partitions),
            )
        except KafkaError as error:
            if refused := authorization_failed(error, self.config, doing="read"):
                raise refused from error
            raise
        self.heap.processed(records)
        self._update_entity_gauges()

    async def _probe_kafka(self, interval: float = 5.0) -> None:
        """Keep readiness true to Kafka's reachability even while no page is being committed."""
        while True:
            await asyncio.sleep(interval)
            await self.sink.probe()

    def _count_resources(self, resources: Iterable[str]) -> None:
        """Give each resource polled its series, pre-initialised, and its watermark gauge, once: those of
        RELAY_RESOURCES* at start, one only an integration of the registry names (its own --resources) as soon as the
        registry applied names it. The gauge is read at each scrape, from what is remembered: no pair hides another."""
        new = self.metrics.add_resources(resources)
        for resource in new:
            self.metrics.watermark.labels(resource).set_function(functools.partial(self._oldest_watermark, resource))
        if new:  # a claim may have read state of it already: count what is remembered
            self._update_entity_gauges()

    async def apply_registry(self, registry: Registry, changes: Iterable[RegistryChange] | None = None) -> None:
        """Make ``registry`` the one this relay polls by (see :meth:`Ownership.apply_registry`), and give each resource
        it names its series."""
        await self.ownership.apply_registry(registry, changes)
        defaults = DefaultResources.from_config(self.config)
        self._count_resources(resource for _, resource in defaults.pairs(registry))

    def _oldest_watermark(self, resource: str) -> float:
        """The oldest committed watermark among the owned pairs of ``resource``, in seconds; 0 while none has one."""
        watermarks = [
            state.checkpoint.watermark_ms
            for (_, r), state in self.store.pairs()
            if r == resource and state.checkpoint.watermark_ms is not None
        ]
        return min(watermarks) / 1000 if watermarks else 0.0

    def _update_entity_gauges(self) -> None:
        for resource in self.metrics.resources:
            count = sum(len(state.entities) for (_, r), state in self.store.pairs() if r == resource)
            self.metrics.entities.labels(resource).set(count)

    def request_stop(self) -> None:
        self._stop_requested.set()
        self._stop_polling()

    def _stop_polling(self) -> None:
        """Leave the group (handing over what is owned) and stop every pair."""
        self._leaving.set()
        if self.membership is not None:
            self.membership.stop()
        self.scheduler.stop()

    async def run(self) -> int:
        """Run until stopped; return the process exit code."""
        await self.start_http()
        try:
            fatal = await self._serve_until_stopped()
            code = self._exit_code(fatal)
            if code:
                await self._wait_before_exit(fatal)
            return code
        finally:
            await self.close()

    async def _serve_until_stopped(self) -> BaseException | None:
        """Connect to Kafka, restore the state and poll until a stop; return the fatal error that ended it, if any."""
        try:
            if not await self._retrying(self._prepare_kafka):
                return None
            log.info(
                "relay started",
                extra={
                    "integrations": len(self.registry.active()),  # in the registry, paused ones included
                    "registry_topic": self.config.integrations_topic,
                    "resources": list(self.config.all_resources()),
                    "transactional_id": self.config.transactional_id,
                },
            )
            self._probe = asyncio.create_task(self._probe_kafka(), name="kafka probe")
            return await self._serve_as_replica()
        except StateError as error:
            log.critical("cannot read the state topic", extra={"error": str(error)})
            return error
        except KafkaAuthorizationFailed as error:
            log.critical("Kafka refused this relay's principal; stopping", extra={"error": str(error)})
            return error
        except KafkaAuthenticationFailed as error:
            log.critical(
                "Kafka and this relay do not accept each other's credentials; stopping", extra={"error": str(error)}
            )
            return error

    async def _serve_as_replica(self) -> BaseException | None:
        """Poll what the group assigns until a stop, or until the scheduler or the seat meets an error that ends the
        relay (returned by the scheduler, raised by the seat)."""
        seat = asyncio.create_task(self._take_seat(), name="fleet seat")
        polling = asyncio.create_task(self.scheduler.run(), name="scheduler")
        try:
            await asyncio.wait({seat, polling}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stop_polling()  # the other one too (not a stop request: a fatal error is still served a while)
            await asyncio.wait({seat, polling})
        await seat  # raises what ended the seat, if anything did
        return self.scheduler.fatal

    @staticmethod
    def _exit_code(fatal: BaseException | None) -> int:
        if isinstance(fatal, AuthenticationError):
            return EXIT_AUTHENTICATION
        if isinstance(fatal, Fenced):
            return EXIT_FENCED
        if isinstance(fatal, StateError):
            return EXIT_STATE
        if isinstance(fatal, KafkaAuthorizationFailed):
            return EXIT_KAFKA_AUTHORIZATION
        if isinstance(fatal, KafkaAuthenticationFailed):
            return EXIT_KAFKA_AUTHENTICATION
        return 0

    async def _wait_before_exit(self, fatal: BaseException | None) -> None:
        """Stay up, not ready, for RELAY_FATAL_EXIT_DELAY_SECONDS after a fatal error (or until SIGTERM).

        A process that exits at once is never scraped in that state: Prometheus would see a restart, not its cause
        (``relay_fenced``, the failing polls), and the alerts made for those could not fire.
        """
        self.fatal_error = str(fatal)
        if self._probe is not None:
            self._probe.cancel()
        delay = self.config.fatal_exit_delay_seconds
        if delay <= 0 or self._stop_requested.is_set():
            return
        log.warning(
            "exiting after a fatal error; metrics and status stay served until then",
            extra={"exit_in_seconds": delay, "error": self.fatal_error},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), delay)

    async def close(self) -> None:
        await cancel_and_wait(self._probe)
        await self.registry_topic.close()
        await self.sink.stop()
        await self.source.close()
        await self.heartbeat.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _pair_status(status: PairStatus, pair: PairState) -> dict[str, Any]:
    """What ``/status`` says of one pair: its health from the scheduler, its progress from what is remembered."""
    watermark = pair.checkpoint.watermark_ms
    return {
        "integration": status.integration,
        "resource": status.resource,
        "healthy": status.healthy,
        "polling": status.polling,
        "paused": status.paused,
        "last_success_at": status.last_success_at,
        "last_error": None
        if status.last_error_code is None
        else {
            "code": status.last_error_code,
            "message": status.last_error_message,
            "log_url": status.last_error_log_url,
            "at": status.last_error_at,
        },
        "consecutive_failures": status.consecutive_failures,
        "watermark": watermark / 1000 if watermark is not None else None,
        "lag_seconds": round(time.time() - watermark / 1000, 3) if watermark is not None else None,
        "snapshot_done": pair.checkpoint.snapshot_done,
        "in_progress": pair.checkpoint.in_progress is not None,
        "entities": len(pair.entities),
        "live_entities": pair.live_entities,
        "events_published": status.events_published,
        "next_poll_at": status.next_poll_at,
    }


async def serve(config: Config) -> int:
    relay = Relay(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, relay.request_stop)
    try:
        return await relay.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(args: argparse.Namespace) -> int:
    warnings: list[str] = []
    try:
        config = load_config(args.config, warnings=warnings)
    except ConfigError as error:
        print_problems(error)
        return EXIT_CONFIG
    configure_logging(config.log_format, config.log_level, secrets=config.secret_values())
    for warning in [*environment_warnings(), *warnings]:
        log.warning("configuration warning", extra={"warning": warning})
    code = asyncio.run(serve(config))
    log.info("relay stopped", extra={"exit_code": code})
    return code

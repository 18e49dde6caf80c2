"""relay.webhooks and the scheduler's side of webhooks: signatures, payloads, the model map, de-duplication, the
receiver's every answer, the HTTP endpoint on a real localhost server, and the scheduler's coalescing, pause/resume and
per-trigger counting. Fakes are hand-written; nothing is patched."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from relay.config import MASK, Config, ConfigError, Secret, load_config
from relay.metrics import Metrics
from relay.scheduler import Scheduler
from relay.simulator import webhooks as sim_webhooks
from relay.web import Heartbeat, build_app
from relay.webhook_labels import HANDLED_TYPES, INTEGRATION_TYPES, WEBHOOK_OUTCOMES, WEBHOOK_TYPES
from relay.webhooks import (
    DEFAULT_MODEL_MAP,
    OTHER_KOMBO_TYPES,
    SIGNATURE_HEADER,
    DataChanged,
    DedupWindow,
    IntegrationCreated,
    IntegrationDeleted,
    IntegrationStateChanged,
    InvalidWebhook,
    ModelMap,
    SyncFinished,
    WebhookReceiver,
    WebhookSettings,
    make_handler,
    own_resource,
    parse_webhook,
    sign,
    verify_signature,
)
from tests.unit.support import quiescent, wait_until

SECRET = "whsec_unit-never-print-me-4e1b"
ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
USERS = "ats/users"
CANDIDATES = "ats/candidates"
JOBS = "ats/jobs"
EMPLOYEES = "hris/employees"


def config(**env: str) -> Config:
    environ = {
        "RELAY_API_KEY": "k",
        "RELAY_INTEGRATIONS": f"{ACME},{GLOBEX}",
        "RELAY_RESOURCES": f"{USERS},{CANDIDATES},{EMPLOYEES}",
        "RELAY_KOMBO_WEBHOOK_SECRET": SECRET,
        "RELAY_POLL_INTERVAL_SECONDS": "600",
        "RELAY_POLL_JITTER_FRACTION": "0",
    }
    environ.update({f"RELAY_{name.upper()}": value for name, value in env.items()})
    return load_config(None, environ)


def settings(**env: str) -> WebhookSettings:
    built = WebhookSettings.from_config(config(**env))
    assert built is not None
    return built


def body_of(payload: Mapping[str, Any]) -> bytes:
    return orjson.dumps(payload)


def changed(integration: str, *models: str, ident: str = "wh-1") -> bytes:
    return body_of(sim_webhooks.data_changed(integration, models, ident=ident))


# --- Signatures -----------------------------------------------------------------------------------------------------

# Computed independently: printf BODY | openssl dgst -sha256 -hmac SECRET -binary | base64 | tr '+/' '-_' | tr -d =
VECTORS = [
    (
        b'{"id":"Cbfk5sHtDxrSrJBRjsDtbaN9","type":"data-changed"}',
        "whsec_test_secret",
        "9g_kUsgM88G54yQCT6uX0-teDOAx8j_oZyOLURXmC14",
    ),
    (b"", "k", "i7mQxAp9YcuXWXqUISUCW-UKyL63RDbjc1uYiTp_ZiA"),
]


@pytest.mark.parametrize(("body", "secret", "signature"), VECTORS)
def test_signature_vectors(body: bytes, secret: str, signature: str) -> None:
    assert sign(body, secret) == signature
    assert sim_webhooks.sign(body, secret) == signature  # the simulator signs the same way
    assert verify_signature(body, signature, secret)


def test_signature_is_base64url_without_padding() -> None:
    signature = sign(b"x" * 100, SECRET)
    assert len(signature) == 43
    assert not set(signature) & set("+/=")


@pytest.mark.parametrize(
    "signature",
    [None, "", "   ", "not-a-signature", sign(b"other body", SECRET), sign(b"{}", "other-secret"), "é" * 43],
)
def test_wrong_or_missing_signatures_do_not_verify(signature: str | None) -> None:
    assert not verify_signature(b"{}", signature, SECRET)


def test_a_padded_or_spaced_signature_still_verifies() -> None:
    assert verify_signature(b"{}", f" {sign(b'{}', SECRET)}= ", SECRET)


def test_a_tampered_body_does_not_verify() -> None:
    body = changed(ACME, "ats_users")
    assert not verify_signature(body.replace(b"acme", b"evil"), sign(body, SECRET), SECRET)


# --- Payloads -------------------------------------------------------------------------------------------------------


def spec_example(spec_path: Path, kind: str) -> dict[str, Any]:
    spec = orjson.loads(spec_path.read_bytes())
    example: dict[str, Any] = spec["webhooks"][kind]["post"]["requestBody"]["content"]["application/json"]["example"]
    return example


def test_the_spec_examples_parse(kombo_spec_path: Path) -> None:
    example = spec_example(kombo_spec_path, "data-changed")
    assert parse_webhook(body_of(example)) == DataChanged(
        "Cbfk5sHtDxrSrJBRjsDtbaN9", "personio:CBNMt7dSNCzBdnRTx87dev4E", ("hris_employees", "hris_join_employees_teams")
    )
    finished = parse_webhook(body_of(spec_example(kombo_spec_path, "sync-finished")))
    assert finished == SyncFinished("Cbfk5sHtDxrSrJBRjsDtbaN9", "personio:CBNMt7dSNCzBdnRTx87dev4E", "SUCCEEDED")
    state = parse_webhook(body_of(spec_example(kombo_spec_path, "integration-state-changed")))
    assert isinstance(state, IntegrationStateChanged)
    assert (state.id, state.integration_id, state.state) == (
        "Cbfk5sHtDxrSrJBRjsDtbaN9",
        "personio:CBNMt7dSNCzBdnRTx87dev4E",
        "ACTIVE",
    )
    assert state.updated_at is not None
    deleted = parse_webhook(body_of(spec_example(kombo_spec_path, "integration-deleted")))
    assert isinstance(deleted, IntegrationDeleted)
    assert (deleted.id, deleted.integration_id) == ("Cbfk5sHtDxrSrJBRjsDtbaN9", "personio:CBNMt7dSNCzBdnRTx87dev4E")
    assert deleted.deleted_at is not None
    created = parse_webhook(body_of(spec_example(kombo_spec_path, "integration-created")))
    assert isinstance(created, IntegrationCreated)
    assert created.integration_id == "personio:CBNMt7dSNCzBdnRTx87dev4E"
    assert created.category in ("ATS", "HRIS", "ASSESSMENT", "LMS")


def test_the_types_known_are_the_specs(kombo_spec_path: Path) -> None:
    spec = orjson.loads(kombo_spec_path.read_bytes())
    assert set(HANDLED_TYPES) | set(OTHER_KOMBO_TYPES) == set(spec["webhooks"])


def test_the_simulators_payloads_parse() -> None:
    assert isinstance(parse_webhook(body_of(sim_webhooks.sync_finished(ACME))), SyncFinished)
    assert parse_webhook(body_of(sim_webhooks.integration_state_changed(ACME, "INACTIVE"))).state == "INACTIVE"  # type: ignore[union-attr]
    assert isinstance(parse_webhook(body_of(sim_webhooks.integration_deleted(ACME))), IntegrationDeleted)
    assert parse_webhook(changed(ACME, "ats_users", "ats_users")) == DataChanged("wh-1", ACME, ("ats_users",))


def test_unused_extra_fields_are_tolerated() -> None:
    payload = sim_webhooks.data_changed(ACME, ["ats_users"], ident="x")
    payload["data"]["new_field_kombo_added"] = {"a": 1}
    payload["delivered_at"] = "now"
    assert parse_webhook(body_of(payload)) == DataChanged("x", ACME, ("ats_users",))


def _without(path: tuple[str, ...]) -> bytes:
    payload = sim_webhooks.data_changed(ACME, ["ats_users"], ident="x")
    target = payload
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return body_of(payload)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"data-changed"', "JSON object"),
        (_without(("id",)), "id must be"),
        (_without(("type",)), "type must be"),
        (_without(("data",)), "data must be an object"),
        (_without(("data", "integration_id")), "data.integration_id"),
        (_without(("data", "changed_models")), "data.changed_models must be a list"),
        (
            body_of({"id": "x", "type": "data-changed", "data": {"integration_id": ACME, "changed_models": [1]}}),
            "object",
        ),
        (
            body_of({"id": "x", "type": "data-changed", "data": {"integration_id": ACME, "changed_models": [{}]}}),
            "name",
        ),
        (body_of({"id": "x", "type": "integration-deleted", "data": {"integration_id": ACME}}), "data.id"),
        (body_of({"id": "x", "type": "integration-state-changed", "data": {"integration_id": ACME}}), "data.state"),
        (body_of({"id": "x", "type": "something-new", "data": {}}), "unknown webhook type"),
        (body_of({"id": "x" * 300, "type": "data-changed", "data": {}}), "longer than"),
        (body_of({"id": 7, "type": "data-changed", "data": {}}), "id must be"),
    ],
)
def test_malformed_or_unknown_shapes_are_refused(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidWebhook, match=problem):
        parse_webhook(body)


# --- Models to resources --------------------------------------------------------------------------------------------


def follow(spec: dict[str, Any], node: Any, *keys: str) -> Any:
    """``node[keys[0]][keys[1]]...``, resolving the spec's ``$ref`` on the way."""
    for key in (*keys, None):
        while isinstance(node, dict) and "$ref" in node:
            target: Any = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        if key is not None:
            node = node[key]
    return node


def test_every_model_kombo_names_is_mapped(kombo_spec_path: Path) -> None:
    spec = orjson.loads(kombo_spec_path.read_bytes())
    schema = spec["webhooks"]["data-changed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    keys = ("properties", "data", "properties", "changed_models", "items", "properties", "name", "enum")
    assert set(follow(spec, schema, *keys)) == set(DEFAULT_MODEL_MAP)


def test_every_mapped_resource_is_a_list_endpoint_of_the_spec(kombo_spec_path: Path) -> None:
    paths = set(orjson.loads(kombo_spec_path.read_bytes())["paths"])
    mapped = {resource for resources in DEFAULT_MODEL_MAP.values() for resource in resources}
    assert {f"/{resource}" for resource in mapped} <= paths
    for model, resources in DEFAULT_MODEL_MAP.items():  # a model's own endpoint, if it has one, comes first
        own = own_resource(model)
        if own is not None and f"/{own}" in paths:
            assert resources[0] == own, model


def test_own_resource_follows_kombos_naming() -> None:
    assert own_resource("ats_users") == "ats/users"
    assert own_resource("ats_application_stages") == "ats/application-stages"
    assert own_resource("hris_join_employees_teams") is None
    assert own_resource("nocategory") is None


def test_changed_models_map_to_the_configured_resources_they_affect() -> None:
    models = ModelMap()
    configured = (USERS, CANDIDATES, EMPLOYEES)
    assert models.affected(["ats_users"], configured) == (USERS,)
    assert models.affected(["ats_candidates"], configured) == (CANDIDATES,)
    assert models.affected(["ats_users", "hris_employees"], configured) == (USERS, EMPLOYEES)
    assert models.affected(["hris_join_employees_teams"], configured) == (EMPLOYEES,)  # a join: who embeds it
    assert models.affected(["ats_join_candidates_tags"], configured) == (CANDIDATES,)
    assert models.affected(["ats_jobs"], configured) == (CANDIDATES,)  # candidates embed applications' jobs
    assert models.affected(["ats_users"], (JOBS,)) == (JOBS,)  # jobs embed the hiring team
    assert models.affected(["lms_courses", "ats_offers"], configured) == ()
    assert models.affected([], configured) == ()


def test_unlisted_models_map_by_rule_and_unlisted_joins_to_nothing() -> None:
    models = ModelMap()
    assert models.resources_for("ats_future_things") == ("ats/future-things",)
    assert models.resources_for("ats_join_future_things") == ()


def test_hyphens_and_underscores_name_the_same_resource() -> None:
    models = ModelMap()
    assert models.affected(["ats_application_stages"], ("ats/application_stages",)) == ("ats/application_stages",)
    assert models.affected(["ats_application_stages"], ("ats/application-stages",)) == ("ats/application-stages",)


def test_overrides_replace_entries() -> None:
    models = ModelMap([("ats_users", (CANDIDATES,)), ("hris_employees", ())])
    assert models.affected(["ats_users"], (USERS, CANDIDATES)) == (CANDIDATES,)
    assert models.affected(["hris_employees"], (EMPLOYEES,)) == ()
    assert models.affected(["ats_candidates"], (CANDIDATES,)) == (CANDIDATES,)  # the others stay


def test_the_model_map_setting() -> None:
    loaded = config(kombo_webhook_model_map="ats_application_stages=ats/applications,ats/jobs;ats_tags=;")
    assert loaded.kombo_webhook_model_map == (
        ("ats_application_stages", ("ats/applications", "ats/jobs")),
        ("ats_tags", ()),
    )
    assert WebhookSettings.from_config(loaded).model_map.resources_for("ats_tags") == ()  # type: ignore[union-attr]


def test_the_model_map_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[kombo_webhook_model_map]\nats_users = ["ats/users", "ats/jobs"]\nats_tags = "ats/candidates"\n')
    loaded = load_config(path, {"RELAY_API_KEY": "k", "RELAY_INTEGRATIONS": ACME})
    assert loaded.kombo_webhook_model_map == (
        ("ats_users", ("ats/users", "ats/jobs")),
        ("ats_tags", ("ats/candidates",)),
    )


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"kombo_webhook_model_map": "ats_users"}, "not model=resource"),
        ({"kombo_webhook_model_map": "Ats Users=ats/users"}, "Kombo model name"),
        ({"kombo_webhook_model_map": "ats_users=ATS/Users"}, "a path like ats/users"),
        ({"kombo_webhook_model_map": "a=ats/users;a=ats/jobs"}, "more than once"),
        ({"kombo_webhook_model_map": ";"}, "at least one"),
        ({"kombo_webhook_path": "webhooks"}, "RELAY_KOMBO_WEBHOOK_PATH"),
        ({"kombo_webhook_path": "/metrics"}, "RELAY_KOMBO_WEBHOOK_PATH"),
        ({"kombo_webhook_path": "/admin/integrations"}, "RELAY_KOMBO_WEBHOOK_PATH"),  # the admin API's
        ({"kombo_webhook_path": "/a b"}, "RELAY_KOMBO_WEBHOOK_PATH"),
        ({"kombo_webhook_max_body_bytes": "0"}, "RELAY_KOMBO_WEBHOOK_MAX_BODY_BYTES"),
        ({"kombo_webhook_dedup_seconds": "-1"}, "RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS"),
        ({"follow_integration_state": "maybe"}, "RELAY_FOLLOW_INTEGRATION_STATE"),
    ],
)
def test_invalid_webhook_settings_are_problems(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config(**env)
    assert any(problem in line for line in raised.value.problems), raised.value.problems


def test_the_secret_is_masked_and_can_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    loaded = load_config(
        None, {"RELAY_API_KEY": "k", "RELAY_INTEGRATIONS": ACME, "RELAY_KOMBO_WEBHOOK_SECRET_FILE": str(secret_file)}
    )
    assert loaded.kombo_webhook_secret == Secret(SECRET)
    assert loaded.masked()["kombo_webhook_secret"] == MASK
    assert SECRET not in repr(loaded) + orjson.dumps(loaded.masked()).decode()
    assert SECRET in loaded.secret_values()  # so the log filter masks it too


def test_no_secret_no_endpoint() -> None:
    assert WebhookSettings.from_config(load_config(None, {"RELAY_API_KEY": "k", "RELAY_INTEGRATIONS": ACME})) is None


# --- De-duplication -------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_id_seen_within_the_window_is_a_duplicate() -> None:
    clock = FakeClock()
    window = DedupWindow(60, clock=clock)
    assert not window.seen("a")
    assert window.seen("a")
    assert not window.seen("b")
    clock.now += 59
    assert window.seen("a")
    clock.now += 2  # 61 s after "a" was first seen
    assert not window.seen("a")
    assert len(window) == 1  # "b" expired as well


def test_the_window_is_bounded() -> None:
    window = DedupWindow(3600, max_entries=3, clock=FakeClock())
    for ident in "abcd":
        assert not window.seen(ident)
    assert len(window) == 3
    assert not window.seen("a")  # the oldest went first
    assert window.seen("d")


def test_a_zero_window_remembers_nothing() -> None:
    window = DedupWindow(0)
    assert not window.seen("a")
    assert not window.seen("a")
    assert len(window) == 0


# --- The receiver, with a fake poller -------------------------------------------------------------------------------


class FakePoller:
    """The receiver's view of the poller, recording what it is asked to do."""

    def __init__(self, resources: Mapping[str, tuple[str, ...]]) -> None:
        self.resources = dict(resources)
        self.triggers: list[tuple[str, str, float | None]] = []
        self.paused: set[str] = set()
        self.resumed: list[str] = []

    def resources_of(self, integration: str) -> tuple[str, ...]:
        return self.resources.get(integration, ())

    def trigger(self, integration: str, resource: str, *, received_at: float | None = None) -> bool:
        if resource not in self.resources.get(integration, ()):
            return False
        self.triggers.append((integration, resource, received_at))
        return True

    def is_paused(self, integration: str) -> bool:
        return integration in self.paused

    def pause(self, integration: str) -> bool:
        self.paused.add(integration)
        return True

    def resume(self, integration: str) -> bool:
        self.paused.discard(integration)
        self.resumed.append(integration)
        return True

    def pairs(self) -> list[tuple[str, str]]:
        return [(i, r) for i, r, _ in self.triggers]


@pytest.fixture
def target() -> FakePoller:
    return FakePoller({ACME: (USERS, CANDIDATES, EMPLOYEES), GLOBEX: (USERS,)})


def receiver_for(target: FakePoller, **env: str) -> WebhookReceiver:
    return WebhookReceiver(settings(**env), target)


def deliver(receiver: WebhookReceiver, body: bytes, *, secret: str = SECRET, received_at: float = 5.0) -> Any:
    return receiver.receive(body, sign(body, secret), received_at=received_at)


def test_data_changed_triggers_the_mapped_pairs(target: FakePoller) -> None:
    reply = deliver(receiver_for(target), changed(ACME, "ats_users", "hris_join_employees_teams"), received_at=12.5)
    assert (reply.status, reply.outcome, reply.type) == (200, "accepted", "data-changed")
    assert reply.polls == (USERS, EMPLOYEES)
    assert target.triggers == [(ACME, USERS, 12.5), (ACME, EMPLOYEES, 12.5)]
    assert orjson.loads(reply.body()) == {"outcome": "accepted"}


def test_a_relay_that_has_not_read_its_registry_asks_kombo_to_retry(target: FakePoller) -> None:
    receiver = receiver_for(target)
    receiver.accepting = False
    reply = deliver(receiver, changed(ACME, "ats_users"))
    assert (reply.status, reply.outcome, reply.type) == (503, "starting", "data-changed")
    assert target.triggers == []
    receiver.accepting = True  # the retry is acted on: the first delivery did not use up its id
    assert deliver(receiver, changed(ACME, "ats_users")).outcome == "accepted"
    assert target.pairs() == [(ACME, USERS)]


def test_an_unsigned_webhook_is_refused_before_a_starting_relay_answers(target: FakePoller) -> None:
    receiver = receiver_for(target)
    receiver.accepting = False
    assert deliver(receiver, changed(ACME, "ats_users"), secret="wrong").outcome == "unauthorized"


def test_data_changed_for_unconfigured_models_is_ignored(target: FakePoller) -> None:
    reply = deliver(receiver_for(target), changed(ACME, "lms_courses"))
    assert (reply.status, reply.outcome) == (200, "ignored")
    assert target.triggers == []


def test_sync_finished_triggers_every_resource_of_the_integration(target: FakePoller) -> None:
    reply = deliver(receiver_for(target), body_of(sim_webhooks.sync_finished(ACME)))
    assert (reply.status, reply.outcome, reply.type) == (200, "accepted", "sync-finished")
    assert target.pairs() == [(ACME, USERS), (ACME, CANDIDATES), (ACME, EMPLOYEES)]


def test_an_unknown_integration_is_accepted_with_202_and_counted_apart(target: FakePoller) -> None:
    reply = deliver(receiver_for(target), changed("bamboohr:other", "ats_users"))
    assert (reply.status, reply.outcome) == (202, "unknown_integration")
    assert target.triggers == []


def test_the_same_id_twice_is_acted_on_once(target: FakePoller) -> None:
    receiver = receiver_for(target)
    assert deliver(receiver, changed(ACME, "ats_users", ident="same")).outcome == "accepted"
    again = deliver(receiver, changed(ACME, "ats_users", ident="same"))
    assert (again.status, again.outcome) == (200, "duplicate")
    assert deliver(receiver, changed(ACME, "ats_users", ident="other")).outcome == "accepted"
    assert target.pairs() == [(ACME, USERS), (ACME, USERS)]


def test_dedup_can_be_turned_off(target: FakePoller) -> None:
    receiver = receiver_for(target, kombo_webhook_dedup_seconds="0")
    for _ in range(2):
        assert deliver(receiver, changed(ACME, "ats_users", ident="same")).outcome == "accepted"


def test_a_rejected_delivery_does_not_count_as_seen(target: FakePoller) -> None:
    receiver = receiver_for(target)
    body = changed(ACME, "ats_users", ident="retry-me")
    assert receiver.receive(body, "wrong").status == 401
    assert deliver(receiver, body).outcome == "accepted"


def test_state_changes_are_ignored_unless_followed(target: FakePoller) -> None:
    receiver = receiver_for(target)
    reply = deliver(receiver, body_of(sim_webhooks.integration_state_changed(ACME, "INACTIVE")))
    assert (reply.status, reply.outcome, reply.type) == (200, "ignored", "integration-state-changed")
    assert deliver(receiver, body_of(sim_webhooks.integration_deleted(ACME))).outcome == "ignored"
    assert target.paused == set()


def test_followed_state_changes_pause_and_resume(target: FakePoller) -> None:
    receiver = receiver_for(target, follow_integration_state="true")
    inactive = deliver(receiver, body_of(sim_webhooks.integration_state_changed(ACME, "INACTIVE")))
    assert (inactive.status, inactive.outcome) == (200, "accepted")
    assert target.paused == {ACME}
    paused = deliver(receiver, changed(ACME, "ats_users", ident="while-paused"))
    assert (paused.status, paused.outcome) == (200, "paused")
    assert deliver(receiver, body_of(sim_webhooks.sync_finished(ACME))).outcome == "paused"
    assert target.triggers == []
    assert deliver(receiver, body_of(sim_webhooks.integration_state_changed(ACME, "ACTIVE"))).outcome == "accepted"
    assert target.paused == set()
    assert target.resumed == [ACME]
    assert deliver(receiver, body_of(sim_webhooks.integration_state_changed(ACME, "INVALID"))).outcome == "accepted"
    assert target.paused == {ACME}
    assert deliver(receiver, body_of(sim_webhooks.integration_state_changed(ACME, "SOMETHING"))).outcome == "ignored"


def test_a_deleted_integration_is_paused_when_followed(target: FakePoller) -> None:
    receiver = receiver_for(target, follow_integration_state="true")
    reply = deliver(receiver, body_of(sim_webhooks.integration_deleted(GLOBEX)))
    assert (reply.status, reply.outcome, reply.type) == (200, "accepted", "integration-deleted")
    assert target.paused == {GLOBEX}


def test_other_kombo_types_are_ignored(target: FakePoller) -> None:
    body = body_of({"id": "x", "type": "connection-flow-failed", "data": {}})
    reply = deliver(receiver_for(target), body)
    assert (reply.status, reply.outcome, reply.type) == (200, "ignored", "other")


@pytest.mark.parametrize("follow", ["false", "true"])
def test_integration_created_is_counted_under_its_own_type_whether_followed_or_not(
    target: FakePoller, follow: str
) -> None:
    body = body_of({"id": "c-1", "type": "integration-created", "data": {"id": GLOBEX, "category": "HRIS"}})
    reply = deliver(receiver_for(target, follow_integrations=follow), body)
    outcome = "accepted" if follow == "true" else "ignored"  # accepted: handed to the registry's follower
    assert (reply.status, reply.outcome, reply.type) == (200, outcome, "integration-created")


def test_the_integration_lifecycle_types_have_series_of_their_own() -> None:
    assert set(INTEGRATION_TYPES) == {"integration-created", "integration-state-changed", "integration-deleted"}
    assert not set(INTEGRATION_TYPES) & set(OTHER_KOMBO_TYPES)
    registry = Metrics().registry
    for webhook_type in INTEGRATION_TYPES:  # pre-initialised at 0, like every type
        labels = {"type": webhook_type, "outcome": "accepted"}
        assert registry.get_sample_value("relay_webhooks_received_total", labels) == 0.0


def test_unsigned_or_wrongly_signed_bodies_get_401_with_no_detail(target: FakePoller) -> None:
    receiver = receiver_for(target)
    body = changed(ACME, "ats_users")
    for reply in (
        receiver.receive(body, None),
        receiver.receive(body, ""),
        receiver.receive(body, sign(body, "guessed-secret")),
        deliver(receiver, body, secret="guessed-secret"),
    ):
        assert (reply.status, reply.outcome, reply.type) == (401, "unauthorized", "unknown")
        assert reply.body() == b""
    assert target.triggers == []


def test_an_oversized_body_gets_413(target: FakePoller) -> None:
    receiver = receiver_for(target, kombo_webhook_max_body_bytes="100")
    body = changed(ACME, *(f"ats_model_{n}" for n in range(20)))
    reply = deliver(receiver, body)
    assert (reply.status, reply.outcome, reply.body()) == (413, "too_large", b"")


def test_a_signed_but_malformed_body_gets_400_naming_the_problem_not_the_body(target: FakePoller) -> None:
    receiver = receiver_for(target)
    reply = deliver(receiver, b'{"id": "x", "type": "data-changed", "data": {"changed_models": "SECRETISH"}}')
    assert (reply.status, reply.outcome, reply.type) == (400, "invalid", "data-changed")
    assert b"SECRETISH" not in reply.body()
    assert orjson.loads(reply.body()) == {"error": "data.integration_id must be a non-empty string"}
    assert deliver(receiver, b"{oops").type == "unknown"
    assert deliver(receiver, body_of({"id": "x", "type": "made-up", "data": {}})).type == "unknown"


def test_the_metric_labels_are_the_receivers() -> None:
    assert set(HANDLED_TYPES) < set(WEBHOOK_TYPES)
    assert {"other", "unknown"} < set(WEBHOOK_TYPES)
    assert "accepted" in WEBHOOK_OUTCOMES


# --- The HTTP endpoint on a real localhost server ------------------------------------------------------------------


class Endpoint:
    def __init__(self, base: str, http: aiohttp.ClientSession, metrics: Metrics) -> None:
        self.base = base
        self.http = http
        self.metrics = metrics

    async def post(self, body: bytes, signature: str | None = "sign", path: str = "/webhooks/kombo") -> Any:
        headers = {"Content-Type": "application/json"}
        if signature == "sign":
            signature = sign(body, SECRET)
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        async with self.http.post(self.base + path, data=body, headers=headers) as response:
            return response.status, await response.read()

    def count(self, kind: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "relay_webhooks_received_total", {"type": kind, "outcome": outcome}
        )
        return value or 0.0


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def relay_app(metrics: Metrics, receiver: WebhookReceiver | None) -> web.Application:
    webhook = None if receiver is None else (receiver.settings.path, make_handler(receiver, metrics))
    return build_app(metrics, lambda: (True, {}), lambda: {}, Heartbeat(), webhook=webhook)


@pytest.fixture
async def endpoint(target: FakePoller) -> AsyncIterator[Endpoint]:
    metrics = Metrics([USERS])
    receiver = receiver_for(target, kombo_webhook_max_body_bytes="2048")
    runner, base = await serve(relay_app(metrics, receiver))
    try:
        async with aiohttp.ClientSession() as http:
            yield Endpoint(base, http, metrics)
    finally:
        await runner.cleanup()


async def test_the_endpoint_accepts_a_signed_webhook_and_counts_it(endpoint: Endpoint, target: FakePoller) -> None:
    status, body = await endpoint.post(changed(ACME, "ats_users"))
    assert (status, orjson.loads(body)) == (200, {"outcome": "accepted"})
    assert target.pairs() == [(ACME, USERS)]
    assert endpoint.count("data-changed", "accepted") == 1
    assert endpoint.count("data-changed", "duplicate") == 0  # pre-initialised


async def test_the_endpoint_refuses_what_it_must(endpoint: Endpoint, target: FakePoller) -> None:
    body = changed(ACME, "ats_users", ident="r")
    assert await endpoint.post(body, signature=None) == (401, b"")
    assert await endpoint.post(body, signature=sign(body, "nope")) == (401, b"")
    assert (await endpoint.post(b"{oops"))[0] == 400
    assert (await endpoint.post(body_of({"id": "x", "type": "made-up", "data": {}})))[0] == 400
    assert await endpoint.post(changed(ACME, *(f"ats_model_{n}" for n in range(200)))) == (413, b"")
    assert (await endpoint.post(changed("workday:unknown", "ats_users")))[0] == 202
    assert target.triggers == []
    assert endpoint.count("unknown", "unauthorized") == 2
    assert endpoint.count("unknown", "invalid") == 2
    assert endpoint.count("unknown", "too_large") == 1
    assert endpoint.count("data-changed", "unknown_integration") == 1


async def test_a_chunked_body_over_the_limit_gets_413(endpoint: Endpoint) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    headers = {SIGNATURE_HEADER: "whatever"}
    async with endpoint.http.post(endpoint.base + "/webhooks/kombo", data=chunks(), headers=headers) as response:
        assert response.status == 413


def request_head(body: bytes, path: str = "/webhooks/kombo") -> bytes:
    """The head of a signed POST of ``body``, for a raw socket client that sends the body as it likes."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{SIGNATURE_HEADER}: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()


async def response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def serve_limited(target: FakePoller, metrics: Metrics, **limits: Any) -> tuple[web.AppRunner, str, int]:
    receiver = receiver_for(target)
    webhook = (receiver.settings.path, make_handler(receiver, metrics, **limits))
    runner, base = await serve(build_app(metrics, lambda: (True, {}), lambda: {}, Heartbeat(), webhook=webhook))
    return runner, base, runner.addresses[0][1]


async def test_a_body_dripped_past_the_deadline_gets_408(target: FakePoller) -> None:
    metrics = Metrics([USERS])
    runner, _, port = await serve_limited(target, metrics, body_timeout=0.3)
    body = changed(ACME, "ats_users")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = asyncio.Event()

    async def drip() -> None:
        # A byte every 20 ms (each read is quick, only the whole is slow), and never the last one.
        writer.write(request_head(body))
        for byte in body[:-1]:
            if answered.is_set():
                return
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    dripping = asyncio.create_task(drip())
    try:
        started = time.monotonic()
        status, headers = await asyncio.wait_for(response_head(reader), timeout=10)
        answered.set()
        assert status == 408
        assert headers.get("connection") == "close"
        assert time.monotonic() - started < 5  # generous: the deadline is 0.3 s, the whole drip would take 3 s
        assert target.triggers == []
        labels = {"type": "unknown", "outcome": "timeout"}
        assert metrics.registry.get_sample_value("relay_webhooks_received_total", labels) == 1
    finally:
        answered.set()
        await dripping
        writer.close()
        await runner.cleanup()


async def test_a_client_gone_halfway_through_its_body_is_counted_as_invalid_not_a_server_error(
    target: FakePoller,
) -> None:
    metrics = Metrics([USERS])
    runner, _, port = await serve_limited(target, metrics)
    body = changed(ACME, "ats_users")
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    labels = {"type": "unknown", "outcome": "invalid"}
    try:
        writer.write(request_head(body) + body[: len(body) // 2])
        await writer.drain()
        writer.close()  # gone, the rest of the body never sent: reading it fails in the handler
        await wait_until(lambda: metrics.registry.get_sample_value("relay_webhooks_received_total", labels) == 1)
        assert target.triggers == []
    finally:
        await runner.cleanup()


async def test_webhooks_beyond_the_cap_get_503_at_once_with_retry_after(target: FakePoller) -> None:
    metrics = Metrics([USERS])
    runner, base, port = await serve_limited(target, metrics, max_in_flight=2)
    body = changed(ACME, "ats_users")
    holders = []
    try:
        for _ in range(2):  # two slow clients: the head and a part of the body, the rest later
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_head(body) + body[:10])
            await writer.drain()
            holders.append((reader, writer))
        async with aiohttp.ClientSession() as http:
            endpoint = Endpoint(base, http, metrics)
            deadline = time.monotonic() + 10
            # Until both slow clients are being handled, a webhook goes through; then it is refused.
            while (answer := await endpoint.post(changed(ACME, "ats_users", ident="more")))[0] != 503:
                assert answer[0] == 200
                assert time.monotonic() < deadline, "a third webhook in flight was never refused"
                await asyncio.sleep(0.005)
            async with http.post(base + "/webhooks/kombo", data=body, headers=signed_headers(body)) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "1"
            assert endpoint.count("unknown", "busy") >= 2
            for reader, writer in holders:  # the slow clients finish: their webhooks are handled, the slots freed
                writer.write(body[10:])
                await writer.drain()
                assert (await asyncio.wait_for(response_head(reader), timeout=10))[0] == 200
            assert (await endpoint.post(changed(ACME, "ats_users", ident="after")))[0] == 200
    finally:
        for _, writer in holders:
            writer.close()
        await runner.cleanup()


def signed_headers(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, SECRET)}


async def test_only_post_is_allowed(endpoint: Endpoint) -> None:
    async with endpoint.http.get(endpoint.base + "/webhooks/kombo") as response:
        assert response.status == 405


async def test_without_a_secret_there_is_no_endpoint() -> None:
    runner, base = await serve(relay_app(Metrics(), None))
    try:
        async with aiohttp.ClientSession() as http:
            body = changed(ACME, "ats_users")
            headers = {SIGNATURE_HEADER: sign(body, SECRET)}
            async with http.post(base + "/webhooks/kombo", data=body, headers=headers) as response:
                assert response.status == 404
    finally:
        await runner.cleanup()


async def test_the_path_is_configurable(target: FakePoller) -> None:
    metrics = Metrics()
    runner, base = await serve(relay_app(metrics, receiver_for(target, kombo_webhook_path="/hooks/k")))
    try:
        async with aiohttp.ClientSession() as http:
            endpoint = Endpoint(base, http, metrics)
            assert (await endpoint.post(changed(ACME, "ats_users"), path="/hooks/k"))[0] == 200
            assert (await endpoint.post(changed(ACME, "ats_users"), path="/webhooks/kombo"))[0] == 404
    finally:
        await runner.cleanup()


# --- The scheduler's side: coalescing, pause/resume, counting -------------------------------------------------------


class ScriptedPoller(Scheduler):
    """A real Scheduler whose poll operation is scripted: each poll waits for ``release`` and may publish events."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, self._scripted_poll, Metrics(cfg.resources))
        self.started: list[tuple[str, str]] = []
        self.finished: list[tuple[str, str]] = []
        self.in_flight: dict[tuple[str, str], int] = {}
        self.most_in_flight = 0
        self.release = asyncio.Event()
        self.release.set()
        self.events_per_poll = 0

    async def _scripted_poll(self, integration: str, resource: str, published: Callable[[int], None]) -> None:
        pair = (integration, resource)
        self.started.append(pair)
        self.in_flight[pair] = self.in_flight.get(pair, 0) + 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[pair])
        try:
            await self.release.wait()
            published(self.events_per_poll)
        finally:
            self.in_flight[pair] -= 1
            self.finished.append(pair)

    def polls(self, integration: str, resource: str) -> int:
        return self.started.count((integration, resource))

    def triggered(self, resource: str, trigger: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "relay_polls_triggered_total", {"resource": resource, "trigger": trigger}
        )
        return value or 0.0

    @property
    def metrics(self) -> Metrics:
        return self._metrics


@pytest.fixture
async def poller() -> AsyncIterator[ScriptedPoller]:
    scripted = ScriptedPoller(config(resources=f"{USERS},{EMPLOYEES}", integrations=ACME))
    runner = asyncio.create_task(scripted.run(grace_seconds=1))
    # The first polls are scheduled at once (jitter 0); then each pair sleeps its 600 s interval.
    await wait_until(lambda: len(scripted.finished) == 2, "the first scheduled polls")
    yield scripted
    scripted.stop()
    scripted.release.set()
    await runner


async def test_a_burst_of_triggers_gives_one_poll(poller: ScriptedPoller) -> None:
    for _ in range(10):
        assert poller.trigger(ACME, USERS)
    await wait_until(lambda: poller.finished.count((ACME, USERS)) == 2, "the triggered poll")
    await quiescent()
    assert poller.polls(ACME, USERS) == 2  # the scheduled one and one for the whole burst
    assert poller.polls(ACME, EMPLOYEES) == 1  # untouched
    assert poller.triggered(USERS, "webhook") == 1
    assert poller.triggered(USERS, "schedule") == 1
    assert poller.triggered(EMPLOYEES, "webhook") == 0


async def test_triggers_during_a_poll_give_exactly_one_follow_up(poller: ScriptedPoller) -> None:
    poller.release.clear()
    poller.trigger(ACME, USERS)
    await wait_until(lambda: poller.in_flight.get((ACME, USERS)) == 1, "the poll to start")
    for _ in range(5):
        poller.trigger(ACME, USERS)  # while it runs
    await quiescent()
    assert poller.polls(ACME, USERS) == 2  # no second poll in flight
    poller.release.set()
    await wait_until(lambda: poller.finished.count((ACME, USERS)) == 3, "the follow-up")
    await quiescent()
    assert poller.polls(ACME, USERS) == 3  # the scheduled, the triggered, exactly one follow-up
    assert poller.most_in_flight == 1
    assert not poller.status[(ACME, USERS)].trigger.is_set()


async def test_a_trigger_while_waiting_for_a_slot_is_served_by_that_poll() -> None:
    scripted = ScriptedPoller(config(resources=f"{USERS},{EMPLOYEES}", integrations=ACME, max_concurrent_polls="1"))
    runner = asyncio.create_task(scripted.run(grace_seconds=1))
    try:
        await wait_until(lambda: len(scripted.finished) == 2, "the first scheduled polls")
        scripted.release.clear()
        scripted.trigger(ACME, EMPLOYEES)
        await wait_until(lambda: scripted.in_flight.get((ACME, EMPLOYEES)) == 1, "employees to poll")
        scripted.trigger(ACME, USERS)  # users wakes and waits for the only slot
        await quiescent()
        scripted.trigger(ACME, USERS)  # still waiting: the poll to come will see this change anyway
        scripted.release.set()
        await wait_until(lambda: scripted.finished.count((ACME, USERS)) == 2, "users' triggered poll")
        await quiescent()
        assert scripted.polls(ACME, USERS) == 2
    finally:
        scripted.stop()
        scripted.release.set()
        await runner


async def test_the_webhook_to_event_latency_is_observed_when_events_are_published(poller: ScriptedPoller) -> None:
    def observations() -> float:
        value = poller.metrics.registry.get_sample_value("relay_webhook_to_event_seconds_count", {"resource": USERS})
        return value or 0.0

    poller.trigger(ACME, USERS, received_at=time.monotonic() - 0.25)
    await wait_until(lambda: poller.finished.count((ACME, USERS)) == 2, "a poll without events")
    assert observations() == 0  # nothing published: nothing to observe
    poller.events_per_poll = 3
    poller.trigger(ACME, USERS, received_at=time.monotonic() - 0.25)
    await wait_until(lambda: poller.finished.count((ACME, USERS)) == 3, "a poll with events")
    await wait_until(lambda: observations() == 1, "the observation")
    total = poller.metrics.registry.get_sample_value("relay_webhook_to_event_seconds_sum", {"resource": USERS})
    assert total is not None
    assert total >= 0.25


async def test_a_paused_integration_is_not_polled_until_resumed(poller: ScriptedPoller) -> None:
    assert poller.pause(ACME)
    assert poller.is_paused(ACME)
    assert poller.trigger(ACME, USERS)
    await wait_until(lambda: not poller.status[(ACME, USERS)].trigger.is_set(), "the paused pair to wake")
    await quiescent()
    assert poller.polls(ACME, USERS) == 1
    assert poller.resume(ACME)
    assert not poller.is_paused(ACME)
    await wait_until(lambda: poller.finished.count((ACME, USERS)) == 2, "users after the resume")
    await wait_until(lambda: poller.finished.count((ACME, EMPLOYEES)) == 2, "employees after the resume")
    assert not poller.pause("bamboohr:unknown")
    assert not poller.resume("bamboohr:unknown")


def test_the_poller_knows_its_integrations_resources() -> None:
    scripted = ScriptedPoller(config(integrations=ACME, resources=f"{USERS},{EMPLOYEES}"))
    assert scripted.resources_of(ACME) == (USERS, EMPLOYEES)
    assert scripted.resources_of(GLOBEX) == ()
    assert not scripted.trigger(GLOBEX, USERS)


async def test_the_endpoint_answers_while_a_poll_runs_and_never_waits_for_it(poller: ScriptedPoller) -> None:
    poller.release.clear()  # every poll from now on blocks until released
    metrics = Metrics([USERS, EMPLOYEES])
    runner, base = await serve(relay_app(metrics, WebhookReceiver(settings(), poller)))
    try:
        async with aiohttp.ClientSession() as http:
            endpoint = Endpoint(base, http, metrics)
            assert (await endpoint.post(changed(ACME, "ats_users", ident="first")))[0] == 200
            await wait_until(lambda: poller.in_flight.get((ACME, USERS)) == 1, "the triggered poll to start")
            durations = []
            for n in range(20):
                started = time.perf_counter()
                status, _ = await endpoint.post(changed(ACME, "ats_users", ident=f"w{n}"))
                durations.append(time.perf_counter() - started)
                assert status == 200
            assert poller.in_flight.get((ACME, USERS)) == 1  # the poll is still blocked: nobody waited for it
            assert statistics.median(durations) < 0.05
    finally:
        poller.release.set()
        await runner.cleanup()
    await wait_until(lambda: poller.finished.count((ACME, USERS)) == 3, "the poll and its one follow-up")
    await quiescent()
    assert poller.polls(ACME, USERS) == 3

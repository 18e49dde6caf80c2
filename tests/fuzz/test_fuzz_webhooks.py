"""Fuzz: generated webhook bodies and signatures, sent over HTTP to the real aiohttp app (``relay.web.build_app`` with
``relay.webhooks.make_handler``) on 127.0.0.1, acting on a hand-written fake of the scheduler.

Property: every request gets an HTTP answer (never a 500, never a dropped connection); a body without a valid
signature never reaches the PollTarget; each request is counted once in ``relay_webhooks_received_total`` with label
values from ``relay.webhook_labels``; a valid signed ``data-changed`` for a polled integration triggers exactly the
pairs the model map names (unless it is a duplicate or the integration is paused).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from relay.config import load_config
from relay.metrics import Metrics
from relay.web import Heartbeat, build_app
from relay.webhook_labels import HANDLED_TYPES, WEBHOOK_OUTCOMES, WEBHOOK_TYPES
from relay.webhooks import (
    DEFAULT_MODEL_MAP,
    OTHER_KOMBO_TYPES,
    SIGNATURE_HEADER,
    DedupWindow,
    ModelMap,
    WebhookReceiver,
    WebhookSettings,
    make_handler,
    sign,
)
from tests.fuzz.tally import FUZZ, tally

SECRET = "whsec_fuzz-never-print-me-77a1"
ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
RESOURCES = ("ats/users", "ats/candidates", "hris/employees", "ats/application-stages")
POLLED = {ACME: RESOURCES, GLOBEX: ("ats/users",)}
MAX_BODY = 4096
PATH = "/webhooks/kombo"
TALLY = tally("webhooks")


class RecordingTarget:
    """The receiver's view of the scheduler: records every call, so that an unsigned body reaching it shows."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.triggers: list[tuple[str, str]] = []
        self.paused: set[str] = set()

    def resources_of(self, integration: str) -> tuple[str, ...]:
        self.calls.append(("resources_of", integration))
        return POLLED.get(integration, ())

    def trigger(self, integration: str, resource: str, *, received_at: float | None = None) -> bool:
        self.calls.append(("trigger", integration, resource))
        if resource not in POLLED.get(integration, ()):
            return False
        self.triggers.append((integration, resource))
        return True

    def is_paused(self, integration: str) -> bool:
        self.calls.append(("is_paused", integration))
        return integration in self.paused

    def pause(self, integration: str) -> bool:
        self.calls.append(("pause", integration))
        self.paused.add(integration)
        return True

    def resume(self, integration: str) -> bool:
        self.calls.append(("resume", integration))
        self.paused.discard(integration)
        return True


@dataclass
class Endpoint:
    loop: asyncio.AbstractEventLoop
    url: str
    http: aiohttp.ClientSession
    metrics: Metrics
    target: RecordingTarget
    receiver: WebhookReceiver


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Endpoint]:
    """The real app on 127.0.0.1 for the module, on its own event loop (every example runs on that loop)."""
    loop = asyncio.new_event_loop()
    environ = {
        "RELAY_API_KEY": "k",
        "RELAY_INTEGRATIONS": ",".join(POLLED),
        "RELAY_RESOURCES": ",".join(RESOURCES),
        "RELAY_KOMBO_WEBHOOK_SECRET": SECRET,
        "RELAY_KOMBO_WEBHOOK_MAX_BODY_BYTES": str(MAX_BODY),
        "RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS": "3600",
        "RELAY_FOLLOW_INTEGRATION_STATE": "true",
    }
    settings = WebhookSettings.from_config(load_config(None, environ))
    assert settings is not None
    assert settings.path == PATH
    target = RecordingTarget()
    metrics = Metrics(RESOURCES)
    receiver = WebhookReceiver(settings, target)
    app = build_app(
        metrics,
        lambda: (True, {}),
        lambda: {},
        Heartbeat(),
        webhook=(PATH, make_handler(receiver, metrics)),
    )
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())

    async def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    http = loop.run_until_complete(session())
    try:
        yield Endpoint(loop, f"http://127.0.0.1:{runner.addresses[0][1]}{PATH}", http, metrics, target, receiver)
    finally:
        loop.run_until_complete(http.close())
        loop.run_until_complete(runner.cleanup())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# --- Generated requests ----------------------------------------------------------------------------------------------

MODELS = sorted(DEFAULT_MODEL_MAP)


def mostly(common: st.SearchStrategy[Any], odd: st.SearchStrategy[Any], one_in: int = 6) -> st.SearchStrategy[Any]:
    """``common``, and ``odd`` once in ``one_in`` draws."""
    return st.integers(1, one_in).flatmap(lambda n: odd if n == 1 else common)


integrations = mostly(
    st.sampled_from([ACME, ACME, GLOBEX]),
    st.sampled_from(["workday:unknown", "", " ", ACME.upper()]) | st.text(max_size=20),
)
ids = mostly(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=20).filter(str.strip),
    st.sampled_from(["dup-1", "dup-2", "x" * 256, "x" * 257, " ", ""]),
)
models = mostly(
    st.sampled_from(MODELS), st.sampled_from(["ats_foo_bars", "ats_join_x", "hris", ""]) | st.text(max_size=15)
)


def json_values(max_leaves: int = 4) -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=max_leaves,
    )


@st.composite
def webhooks(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            ["data-changed"] * 4
            + ["sync-finished", "integration-state-changed", "integration-deleted", "other", "unknown"]
        )
    )
    integration = draw(integrations)
    if kind == "data-changed":
        data: dict[str, Any] = {
            "integration_id": integration,
            "changed_models": [{"name": name} for name in draw(st.lists(models, max_size=4))],
        }
    elif kind == "sync-finished":
        data = {
            "integration_id": integration,
            "sync_state": draw(st.sampled_from(["SUCCEEDED", "FAILED"]) | json_values(2)),
        }
    elif kind == "integration-state-changed":
        data = {
            "integration_id": integration,
            "state": draw(st.sampled_from(["ACTIVE", "INACTIVE", "INVALID", "active"]) | st.text(max_size=8)),
        }
    elif kind == "integration-deleted":
        data = {"id": integration}
    else:
        data = draw(st.dictionaries(st.text(max_size=8), json_values(3), max_size=3))
    webhook_type = {"other": draw(st.sampled_from(OTHER_KOMBO_TYPES)), "unknown": draw(st.text(max_size=20))}.get(
        kind, kind
    )
    payload: dict[str, Any] = {"id": draw(ids), "type": webhook_type, "data": data}
    payload.update(
        draw(st.dictionaries(st.sampled_from(["extra", "delivered_at", "version"]), json_values(2), max_size=2))
    )
    return payload


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    payload: Any = draw(webhooks())
    mutation = draw(
        st.sampled_from(["none"] * 6 + ["wrong_type", "huge", "deep", "duplicate", "truncated", "bytes", "empty"])
    )
    if mutation == "wrong_type":
        where = draw(st.sampled_from(["document", "id", "type", "data", "models", "model", "name", "integration"]))
        wrong = draw(json_values(3) | st.sampled_from([None, "", 0, [], {}, [None]]))
        if where == "document":
            payload = wrong
        elif where in ("id", "type", "data"):
            payload[where] = wrong
        elif isinstance(payload["data"], dict):
            key = {"models": "changed_models", "integration": "integration_id"}.get(where)
            if key is not None:
                payload["data"][key] = wrong
            elif payload["data"].get("changed_models"):
                models_list = payload["data"]["changed_models"]
                models_list[0] = wrong if where == "model" else {"name": wrong}
    body = json.dumps(payload, ensure_ascii=draw(st.booleans())).encode()
    if mutation == "huge":
        body = body[:-1] + b', "padding": "' + b"x" * draw(st.integers(MAX_BODY - len(body) - 20, 3 * MAX_BODY)) + b'"}'
    elif mutation == "deep":
        depth = draw(st.sampled_from([1000, 1023, 1024, 1025, 1500]))
        nested = b"[" * depth + b"]" * depth
        body = body[:-1] + b', "deep": ' + nested + b"}" if body.endswith(b"}") else nested
    elif mutation == "duplicate":
        body = draw(
            st.sampled_from(
                [
                    b'{"type": "integration-deleted", ' + body[1:],
                    body.replace(b'"id": ', b'"id": 7, "id": ', 1),
                    body.replace(b'"integration_id": ', b'"integration_id": "evil", "integration_id": ', 1),
                    body[:-1] + b', "type": "data-changed"}' if body.endswith(b"}") else body,
                ]
            )
        )
    elif mutation == "truncated":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif mutation == "bytes":
        body = draw(
            st.binary(max_size=300) | st.just(b"\xff\xfe" + body) | st.just(body.replace(b'"', b'"\xc3\x28', 1))
        )
    elif mutation == "empty":
        body = b""
    return body


@st.composite
def signatures(draw: st.DrawFn, body: bytes) -> tuple[str | None, bool]:
    """A header value (None: no header) and whether it is a valid signature of ``body``."""
    valid = sign(body, SECRET)
    choice = draw(
        st.sampled_from(["valid"] * 5 + ["padded", "missing", "other_secret", "other_body", "garbage", "empty", "case"])
    )
    if choice == "valid":
        return valid, True
    if choice == "padded":
        return f" {valid}= ", True
    if choice == "missing":
        return None, False
    if choice == "other_secret":
        return sign(body, SECRET + "x"), False
    if choice == "other_body":
        return sign(body + b" ", SECRET), False
    if choice == "case":
        return (valid.swapcase(), False) if valid.swapcase() != valid else (None, False)
    if choice == "empty":
        return "", False
    # Printable Latin-1 only: an HTTP client refuses to send a control character (0x7F, 0x80-0x9F) in a header.
    garbage = draw(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=["Cc"]), max_size=100)
    )
    return garbage, garbage.strip().rstrip("=") == valid


# --- One example -----------------------------------------------------------------------------------------------------


def counted(metrics: Metrics) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "relay_webhooks_received_total":
                found[sample.labels["type"], sample.labels["outcome"]] = sample.value
    return found


def expected_triggers(body: bytes, paused: set[str]) -> list[tuple[str, str]] | None:
    """The pairs a signed body must trigger when it is a well-formed data-changed for a polled integration; None when
    it is something else (the other answers are checked by their status and outcome)."""
    try:
        document = orjson.loads(body)
        data = document["data"]
        integration, webhook_id = data["integration_id"], document["id"]
        if not isinstance(data["changed_models"], list):  # an object iterates too, by its keys: not a list
            return None
        names = [model["name"] for model in data["changed_models"]]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    well_formed = (
        document.get("type") == "data-changed"
        and isinstance(webhook_id, str)
        and webhook_id.strip()
        and len(webhook_id) <= 256
        and all(isinstance(name, str) and name.strip() for name in names)
    )
    if not well_formed or integration not in POLLED:
        return None
    if integration in paused:
        return []
    return [(integration, resource) for resource in ModelMap().affected(names, POLLED[integration])]


async def send(endpoint: Endpoint, body: bytes, signature: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    async with asyncio.timeout(10), endpoint.http.post(endpoint.url, data=body, headers=headers) as response:
        return response.status, await response.read()


def deliver(endpoint: Endpoint, body: bytes, signature: str | None, valid: bool) -> tuple[int, str, str]:
    """Send one request and check what the property says of any one; return its status, type and outcome."""
    target = endpoint.target
    target.calls.clear()
    target.triggers.clear()
    expected = expected_triggers(body, set(target.paused)) if valid and len(body) <= MAX_BODY else None
    before = counted(endpoint.metrics)
    status, answer = endpoint.loop.run_until_complete(send(endpoint, body, signature))
    after = counted(endpoint.metrics)
    changed = {
        labels: after[labels] - before.get(labels, 0.0) for labels in after if after[labels] != before.get(labels)
    }
    assert list(changed.values()) == [1.0], changed  # counted once
    ((webhook_type, outcome),) = changed
    assert webhook_type in WEBHOOK_TYPES
    assert outcome in WEBHOOK_OUTCOMES
    assert status in (200, 202, 400, 401, 413), (status, answer)  # never a 500
    if status in (200, 202, 400):
        assert isinstance(orjson.loads(answer), dict)
    if len(body) > MAX_BODY:
        assert (status, outcome) == (413, "too_large")
    elif not valid:
        assert (status, outcome) == (401, "unauthorized")
    if not valid or len(body) > MAX_BODY:
        assert target.calls == [], target.calls  # nothing unsigned reaches the scheduler
    if outcome == "duplicate":
        assert target.triggers == []
    elif expected is not None:
        assert (status, webhook_type) == (200, "data-changed")
        assert target.triggers == expected  # exactly the mapped pairs, in configured order
    return status, webhook_type, outcome


def run_example(endpoint: Endpoint, data: st.DataObject) -> str:
    body = data.draw(bodies(), label="body")
    signature, valid = data.draw(signatures(body), label="signature")
    endpoint.receiver.dedup = DedupWindow(endpoint.receiver.settings.dedup_seconds)  # a fresh window per example
    endpoint.target.paused = set(data.draw(st.lists(st.sampled_from(sorted(POLLED)), unique=True), label="paused"))
    status, webhook_type, outcome = deliver(endpoint, body, signature, valid)
    if data.draw(st.integers(0, 3), label="delivered again") == 0:
        again = deliver(endpoint, body, signature, valid)
        if status == 200 and webhook_type in HANDLED_TYPES and outcome != "ignored":
            assert again == (200, webhook_type, "duplicate")
    return outcome


@FUZZ
@given(data=st.data())
def test_every_webhook_gets_an_answer_is_counted_once_and_only_signed_ones_act(
    endpoint: Endpoint, data: st.DataObject
) -> None:
    TALLY.count(run_example(endpoint, data))

"""The /_sim/ control API: the Python API over JSON/HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from simkit import ACME, GLOBEX, USERS, Client

from relay.simulator import Simulator

Eventually = Callable[..., Awaitable[None]]
RECORDS = f"/records/{ACME}/{USERS}"


async def test_the_index_lists_the_endpoints(client: Client) -> None:
    status, body = await client.control("GET", "/")
    assert status == 200
    assert {"method": "GET", "path": "/_sim/mutations?since=N&limit=M"} in [
        {k: e[k] for k in ("method", "path")} for e in body["endpoints"]
    ]


async def test_record_mutations_over_http(sim: Simulator, client: Client) -> None:
    status, created = await client.control("POST", RECORDS, {"first_name": "Ada"})
    assert (status, created["first_name"]) == (201, "Ada")
    ident = created["id"]
    status, updated = await client.control("PATCH", f"{RECORDS}/{ident}", {"last_name": "Lovelace"})
    assert (status, updated["last_name"]) == (200, "Lovelace")
    status, randomly = await client.control("PATCH", f"{RECORDS}/{ident}", {})
    assert status == 200
    assert randomly != updated
    status, nested = await client.control("POST", f"{RECORDS}/{ident}/nested", {"value": []})
    assert (status, nested["system_roles"], nested["changed_at"]) == (200, [], randomly["changed_at"])
    assert (await client.control("POST", f"{RECORDS}/{ident}/delete"))[0] == 200
    assert (await client.control("POST", f"{RECORDS}/{ident}/delete"))[0] == 409
    status, fetched = await client.control("GET", f"{RECORDS}/{ident}")
    assert (status, fetched["remote_deleted_at"] is not None) == (200, True)
    assert (await client.control("POST", f"{RECORDS}/{ident}/restore"))[0] == 200
    assert (await client.control("DELETE", f"{RECORDS}/{ident}"))[0] == 200
    assert (await client.control("GET", f"{RECORDS}/{ident}"))[0] == 404
    status, seeded = await client.control("POST", f"{RECORDS}/seed", {"count": 3})
    assert (status, len(seeded["ids"])) == (201, 3)
    kinds = [m.kind.value for m in sim.mutations]
    assert kinds[:8] == [
        "created",
        "updated",
        "updated",
        "nested_updated",
        "deleted",
        "restored",
        "hard_deleted",
        "created",
    ]


async def test_bad_control_requests(client: Client) -> None:
    assert (await client.control("PATCH", f"{RECORDS}/nope", {"first_name": "A"}))[0] == 404
    assert (await client.control("POST", f"/records/{ACME}/ats/nothing", {}))[0] == 404
    assert (await client.control("POST", RECORDS, {"id": "mine"}))[0] == 400
    assert (await client.control("POST", "/faults", {"kind": "meteor"}))[0] == 400
    assert (await client.control("GET", "/mutations?since=x"))[0] == 400
    status, body = await client.control("GET", "/nothing-here")
    assert status == 404
    assert "error" in body


async def test_the_mutation_log_is_paged_by_sequence_number(sim: Simulator, client: Client) -> None:
    ids = sim.seed(ACME, USERS, 5)
    status, page = await client.control("GET", "/mutations?since=0&limit=2")
    assert status == 200
    assert [m["seq"] for m in page["mutations"]] == [1, 2]
    assert [m["id"] for m in page["mutations"]] == ids[:2]
    assert page["mutations"][0]["record"]["id"] == ids[0]
    assert (page["next_since"], page["last_seq"]) == (2, 5)
    status, rest = await client.control("GET", f"/mutations?since={page['next_since']}")
    assert [m["seq"] for m in rest["mutations"]] == [3, 4, 5]
    status, empty = await client.control("GET", "/mutations?since=5")
    assert (empty["mutations"], empty["next_since"]) == ([], 5)
    assert set(page["mutations"][0]) == {"seq", "time", "integration", "resource", "id", "kind", "record"}


async def test_integrations_over_http(client: Client) -> None:
    status, _ = await client.control(
        "POST", "/integrations", {"id": "workday:initech", "users": 4, "state": "setup_pending"}
    )
    assert status == 201
    assert (await client.get(USERS, integration="workday:initech")).status == 409
    assert (await client.control("PUT", "/integrations/workday:initech/state", {"state": "active"}))[0] == 200
    assert len((await client.get(USERS, integration="workday:initech")).results) == 4
    assert (await client.control("PUT", f"/integrations/{GLOBEX}/state", {"state": "inactive"}))[0] == 200
    assert (await client.get(USERS, integration=GLOBEX)).status == 403
    assert (await client.control("DELETE", "/integrations/workday:initech"))[0] == 200
    assert (await client.get(USERS, integration="workday:initech")).status == 404
    status, state = await client.control("GET", "/state")
    assert status == 200
    assert state["integrations"][ACME]["records"][USERS] == 60
    assert state["integrations"][GLOBEX]["state"] == "inactive"


async def test_faults_over_http(client: Client) -> None:
    status, fault = await client.control("POST", "/faults", {"kind": "http_503", "count": 2, "integration": ACME})
    assert (status, fault["kind"], fault["remaining"]) == (201, "http_503", 2)
    assert (await client.get(USERS)).status == 503
    status, listed = await client.control("GET", "/faults")
    assert [f["remaining"] for f in listed["faults"]] == [1]
    assert (await client.control("DELETE", f"/faults/{fault['id']}"))[0] == 200
    assert (await client.get(USERS)).status == 200
    await client.control("POST", "/faults", {"kind": "html_502", "fraction": 1.0})
    assert (await client.get(USERS)).status == 502
    assert (await client.control("DELETE", "/faults"))[1] == {"faults": []}
    assert (await client.get(USERS)).status == 200


async def test_rate_limit_over_http(client: Client) -> None:
    status, limit = await client.control("PUT", "/rate-limit", {"limit": 1, "window": 10, "retry_after": False})
    assert (status, limit) == (200, {"limit": 1, "window": 10.0, "retry_after": False})
    assert (await client.get(USERS)).status == 200
    refused = await client.get(USERS)
    assert refused.status == 429
    assert "Retry-After" not in refused.headers
    assert (await client.control("GET", "/rate-limit"))[1]["limit"] == 1


async def test_churn_over_http(sim: Simulator, client: Client, eventually: Eventually) -> None:
    status, churn = await client.control("PUT", "/churn", {"rate": 100})
    assert (status, churn["running"]) == (200, True)
    await eventually(lambda: len(sim.mutations) >= 10, message="10 churned mutations")
    status, churn = await client.control("DELETE", "/churn")
    assert (status, churn["running"]) == (200, False)
    before = len(sim.mutations)
    status, stepped = await client.control("POST", "/churn/step", {"count": 5})
    assert (status, len(stepped["mutations"]), len(sim.mutations)) == (200, 5, before + 5)


async def test_log_urls_lead_to_the_interaction(client: Client) -> None:
    reply = await client.get(USERS, api_key="wrong")
    log_url = reply.json["error"]["log_url"]
    async with client.session.get(log_url) as response:
        interaction = await response.json()
    assert (interaction["status"], interaction["code"], interaction["integration"]) == (
        401,
        "PLATFORM.AUTHENTICATION_INVALID",
        ACME,
    )
    _status, recent = await client.control("GET", "/interactions?limit=5")
    assert recent["interactions"][-1]["id"] == interaction["id"]


async def test_adding_an_integration_checks_its_state_first(sim: Simulator, client: Client) -> None:
    status, _ = await client.control("POST", "/integrations", {"id": "x:y", "sizes": {"ats/jobs": 3}, "state": "nap"})
    assert status == 400
    assert "x:y" not in sim.integrations
    body = {"id": "x:y", "sizes": {"ats/jobs": 3, "ats/users": 2}}
    assert (await client.control("POST", "/integrations", body))[0] == 201
    assert (sim.count("x:y", "ats/jobs"), sim.count("x:y", USERS)) == (3, 2)
    assert (await client.control("POST", "/integrations", body))[0] == 409

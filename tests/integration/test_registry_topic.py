"""The registry of integrations on a real broker: `relay integrations` round trips (add, list, pause, resume, remove,
add again) through the CLI's entry point, its exit codes for an unknown integration, seeding that never adds back a
removed integration, a malformed record skipped, the topic created compacted, and following the registry live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

import relay.cli
from relay.config import Config, load_config
from relay.metrics import Metrics
from relay.registry import RegistryChange
from relay.registry_cli import EXIT_UNKNOWN_INTEGRATION
from relay.registry_topic import RegistryTopic, RegistryUpdate
from relay.sink import KafkaSink
from tests.integration.harness import wait_until

pytestmark = pytest.mark.kafka

ACME = "personio:acme"
GLOBEX = "greenhouse:globex"
INITECH = "bamboohr:initech"
PARTITIONS = 3


@pytest.fixture
def environ(bootstrap_servers: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The configuration of the CLI, in its environment: Kafka and a topic prefix only (no API key, no integrations)."""
    for name in [name for name in os.environ if name.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    settings = {
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "RELAY_TOPIC_PREFIX": topic_prefix,
        "RELAY_STATE_TOPIC_PARTITIONS": str(PARTITIONS),
        "RELAY_RESOURCES": "ats/users",
        "RELAY_RESOURCES_HRIS": "hris/employees,hris/teams",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return settings


@pytest.fixture
def config(environ: dict[str, str]) -> Config:
    return load_config(environ=environ, kafka_only=True)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`relay integrations ARGV`; an edit with --no-wait: no relay runs here to acknowledge it (see
    test_registry_live.py for the wait)."""
    code = relay.cli.main(["integrations", *argv, *(["--no-wait"] if argv[0] != "list" else [])])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listed(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    code, out, _ = cli(capsys, "list", "--json")
    assert code == 0
    return {entry["integration"]: entry for entry in orjson.loads(out)}


def test_add_list_pause_resume_remove_and_add_again(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "list") == (0, f"no integrations in {config.integrations_topic}\n", "")

    code, out, _ = cli(capsys, "add", ACME, "--by", "ops@test")
    assert code == 0
    assert out.startswith(f"added {ACME} in {config.integrations_topic} (revision ")
    assert out.endswith("active, category -, resources ats/users (default)\n")
    assert cli(capsys, "add", GLOBEX, "--category", "hris")[0] == 0
    code, out, _ = cli(capsys, "add", INITECH, "--category", "hris", "--resources", "hris/employees", "--json")
    assert code == 0
    assert orjson.loads(out)["entry"]["resources"] == ["hris/employees"]

    code, out, _ = cli(capsys, "pause", ACME)
    assert (code, out.split(" (")[0]) == (0, f"paused {ACME} in {config.integrations_topic}")
    assert cli(capsys, "pause", ACME) == (0, f"{ACME} is paused already: nothing written\n", "")
    entries = listed(capsys)
    assert {name: entry["paused"] for name, entry in entries.items()} == {ACME: True, GLOBEX: False, INITECH: False}
    assert entries[GLOBEX]["effective_resources"] == ["hris/employees", "hris/teams"]
    assert entries[ACME]["added_by"] == "ops@test"
    assert str(entries[ACME]["updated_by"]).startswith("relay integrations (")

    assert cli(capsys, "resume", ACME)[0] == 0
    code, out, _ = cli(capsys, "remove", GLOBEX, "--json")
    assert code == 0
    removal = orjson.loads(out)
    assert (removal["action"], removal["changed"], removal["entry"]["removed"]) == ("removed", True, True)
    assert cli(capsys, "remove", GLOBEX) == (0, f"{GLOBEX} is removed already: nothing written\n", "")

    code, table, _ = cli(capsys, "list")
    header, *rows = table.splitlines()
    assert header.split() == ["INTEGRATION", "STATE", "CATEGORY", "RESOURCES", "ADDED", "UPDATED"]
    assert [row.split()[:4] for row in rows] == [
        [INITECH, "active", "hris", "hris/employees"],
        [GLOBEX, "removed", "hris", "hris/employees,hris/teams"],
        [ACME, "active", "-", "ats/users"],
    ]

    code, _, err = cli(capsys, "resume", GLOBEX)
    assert code == EXIT_UNKNOWN_INTEGRATION
    assert f"integration {GLOBEX!r} was removed from the registry" in err
    code, out, _ = cli(capsys, "add", GLOBEX)
    assert (code, out.split(" ")[0]) == (0, "added")
    assert listed(capsys)[GLOBEX]["removed"] is False
    code, out, _ = cli(capsys, "add", GLOBEX, "--resources", "hris/teams")
    assert (code, out.split(" ")[0]) == (0, "updated")


@pytest.mark.parametrize("action", ["remove", "pause", "resume"])
def test_an_integration_not_in_the_registry_is_a_clear_error(
    environ: dict[str, str], capsys: pytest.CaptureFixture[str], action: str
) -> None:
    code, out, err = cli(capsys, action, "personio:nobody")
    assert (code, out) == (EXIT_UNKNOWN_INTEGRATION, "")
    assert err == f"relay integrations {action}: integration 'personio:nobody' is not in the registry\n"


def test_resources_not_of_the_category_are_refused_before_anything_is_written(
    environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "add", ACME, "--category", "ats", "--resources", "hris/employees")
    assert code == 2
    assert "'hris/employees' is not a resource of an ATS integration" in err
    assert listed(capsys) == {}


async def test_seeding_never_adds_back_a_removed_integration(config: Config) -> None:
    async with RegistryTopic(config) as topic:
        await topic.ensure_topic()
        seeded = await topic.seed([ACME, GLOBEX], by="relay run (test)")
        assert [entry.integration for entry in seeded] == [ACME, GLOBEX]
        code = await asyncio.to_thread(relay.cli.main, ["integrations", "remove", ACME, "--no-wait"])
        assert code == 0
        seeded = await topic.seed([ACME, GLOBEX, INITECH], by="relay run (test)")
        assert [entry.integration for entry in seeded] == [INITECH]
        registry = await topic.read()
    assert {name: entry.state for name, entry in registry.items()} == {
        ACME: "removed",
        GLOBEX: "active",
        INITECH: "active",
    }
    assert registry[INITECH].added_by == "relay run (test)"


async def test_a_malformed_record_is_skipped_and_the_rest_read(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    async with RegistryTopic(config) as topic:
        await topic.ensure_topic()
        [good] = await topic.seed([ACME], by="test")
        producer = AIOKafkaProducer(**config.kafka_client_kwargs())
        await producer.start()
        try:
            bad = await producer.send_and_wait(config.integrations_topic, b"{oops", key=ACME.encode())
            await producer.send_and_wait(config.integrations_topic, b"{}", key=b"not an id")
        finally:
            await producer.stop()
        with caplog.at_level(logging.WARNING, logger="relay.registry"):
            registry = await topic.read()
    assert dict(registry) == {ACME: good}
    assert (
        f"registry: skipped the unreadable record at partition {bad.partition} offset {bad.offset} of "
        f"{config.integrations_topic}: the record is not JSON"
    ) in caplog.messages
    assert any("the record's key 'not an id' is not an integration id" in m for m in caplog.messages)


async def test_the_registry_topic_is_compacted_with_the_partitions_of_the_state_topic(config: Config) -> None:
    async with RegistryTopic(config) as topic:
        await topic.ensure_topic()
        await topic.ensure_topic()  # there already: nothing to do
    admin = AIOKafkaAdminClient(**config.kafka_client_kwargs())
    await admin.start()
    try:
        [described] = await admin.describe_topics([config.integrations_topic])
        resource = ConfigResource(ConfigResourceType.TOPIC, config.integrations_topic)
        [response] = await admin.describe_configs([resource])
        [(_, _, _, _, entries)] = response.resources
        policy = {entry[0]: entry[1] for entry in entries}["cleanup.policy"]
    finally:
        await admin.close()
    assert (len(described["partitions"]), policy) == (PARTITIONS, "compact")


async def test_following_the_registry_sees_each_change_as_it_is_written(config: Config) -> None:
    async with RegistryTopic(config) as topic:
        await topic.ensure_topic()
        await topic.seed([ACME], by="test")
        registry = await topic.read()
        updates: list[RegistryUpdate] = []

        async def follow() -> None:
            async with contextlib.aclosing(topic.follow(registry)) as following:
                async for update in following:
                    updates.append(update)

        following = asyncio.create_task(follow())
        try:
            for argv in (["add", GLOBEX, "--category", "hris"], ["pause", ACME], ["remove", GLOBEX]):
                assert await asyncio.to_thread(relay.cli.main, ["integrations", *argv, "--no-wait"]) == 0
            await wait_until(lambda: sum(len(update.changes) for update in updates) >= 3, what="three changes")
        finally:
            await topic.close()  # ends follow()
            await asyncio.wait_for(following, 10)
    changes: list[RegistryChange] = [change for update in updates for change in update.changes]
    assert [(c.integration, c.kind) for c in changes] == [(GLOBEX, "added"), (ACME, "paused"), (GLOBEX, "removed")]
    last = updates[-1].registry
    assert (last[ACME].paused, last[GLOBEX].removed) == (True, True)
    async with RegistryTopic(config) as reader:
        assert dict(last) == dict(await reader.read())


async def test_a_registry_topic_just_created_is_read_at_once(bootstrap_servers: str, topic_prefix: str) -> None:
    """Creating a topic returns before every broker's metadata has it: a read right after must wait for it, not take
    the topic for missing (relay integrations, relay resnapshot and relay run all create, then read)."""
    for attempt in range(3):
        config = load_config(
            environ={
                "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
                "RELAY_TOPIC_PREFIX": f"{topic_prefix}-fresh{attempt}",
                "RELAY_STATE_TOPIC_PARTITIONS": str(PARTITIONS),
            },
            kafka_only=True,
        )
        await KafkaSink(config, Metrics()).ensure_topics()  # as relay run does first: the broker has more to learn
        async with RegistryTopic(config) as topic:
            await topic.ensure_topic()
            assert len(await topic.read()) == 0


def test_resources_of_its_own_get_their_event_topics_before_the_integration_is_written(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resource no RELAY_RESOURCES* lists has no event topics that relay run creates: `add --resources` creates
    them, so the owner's first transaction does not depend on the brokers creating topics on their own."""
    own = [config.topic_for("ats/jobs", event) for event in ("created", "updated", "deleted")]
    listed_resource = config.topic_for("ats/users", "created")  # RELAY_RESOURCES: relay run creates it, not this
    assert asyncio.run(existing_topics(config)).isdisjoint([*own, listed_resource])
    code, out, _ = cli(capsys, "add", ACME, "--resources", "ats/users,ats/jobs")
    assert code == 0, out
    topics = asyncio.run(existing_topics(config))
    assert set(own) <= topics
    assert listed_resource not in topics


async def existing_topics(config: Config) -> set[str]:
    admin = AIOKafkaAdminClient(**config.kafka_client_kwargs())
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()

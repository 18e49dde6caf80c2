"""Deploy assets that need no Kafka: the compose file, the local broker's prerequisite checks, and `make run`'s tour
as the README tells it."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import relay.cli

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
LOCAL_KAFKA = REPO / "deploy" / "local-kafka" / "local_kafka.py"
RUN_LOCAL = REPO / "deploy" / "run-local.py"


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


def test_compose_file_runs_kafka_simulator_relay_and_monitoring() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"kafka", "simulator", "relay", "prometheus", "grafana"} <= set(services)
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            assert (COMPOSE.parent / volume.split(":")[0]).exists(), volume
    assert services["kafka"]["image"].startswith("apache/kafka:")
    relay_env = services["relay"]["environment"]
    assert relay_env["RELAY_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert relay_env["RELAY_SOURCE_URL"] == "http://simulator:8765/v1"
    assert services["simulator"]["command"][0] == "simulate"


@pytest.mark.skipif(not docker_compose_available(), reason="no `docker compose` client on this machine")
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def run_check(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOCAL_KAFKA), "check"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": path, "KAFKA_CACHE_DIR": "/nonexistent-cache"},
    )


def test_missing_java_is_named_with_what_to_install(tmp_path: Path) -> None:
    result = run_check(str(tmp_path))
    assert result.returncode != 0
    assert "`java` not found" in result.stderr
    assert "install a Java 17+" in result.stderr


def test_old_java_is_refused_with_its_version(tmp_path: Path) -> None:
    fake_java = tmp_path / "java"
    fake_java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake_java.chmod(0o755)
    result = run_check(str(tmp_path))
    assert result.returncode != 0
    assert "Java 11 found" in result.stderr
    assert "needs Java 17+" in result.stderr


def test_missing_maven_is_named(tmp_path: Path) -> None:
    java = shutil.which("java")
    assert java is not None
    (tmp_path / "java").symlink_to(java)
    result = run_check(str(tmp_path))
    assert result.returncode != 0
    assert "`mvn` not found" in result.stderr


def run_local_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_local", RUN_LOCAL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_tour_adds_a_customer_make_run_serves_but_does_not_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make run` seeds the relay with some integrations and has the simulator serve one more; its banner prints the
    `relay integrations add` of that one for a second terminal, and the README's quick tour shows that very command,
    which the relay's CLI accepts."""
    run_local = run_local_module()
    seeded, new = run_local.tour_integrations({})
    assert new not in seeded.split(",")
    monkeypatch.chdir(REPO)  # where `make run` runs it: the banner shows the relay as .venv/bin/relay
    command = run_local.add_command("127.0.0.1:9092", new)  # make run's broker, at its default port
    assert command in (REPO / "README.md").read_text(), command
    environment, program, *argv = shlex.split(command)
    assert environment == "RELAY_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092"
    assert program == ".venv/bin/relay"
    args = relay.cli.build_parser().parse_args(argv)
    assert (args.action, args.integration) == ("add", new)

#!/usr/bin/env python3
"""`make run`: a local Kafka, the Kombo simulator with churning data, the relay, and `relay tail`, all on loopback.

Within seconds created / updated / deleted events scroll by; metrics are at http://localhost:8080/metrics and
per-integration detail at http://localhost:8080/status. Ctrl-C (or SIGTERM) stops everything this script started.

The simulator sends signed Kombo data-changed webhooks to the relay (a secret made up for this run), so each change
shows up within a second or two; polling every RELAY_POLL_INTERVAL_SECONDS stays on as the safety net.

The relay starts with SIM_INTEGRATIONS in its registry (RELAY_INTEGRATIONS seeds it). The simulator also serves
SIM_NEW_INTEGRATION, which the relay does not poll until someone adds it: the banner prints the `relay integrations
add` command to type in a second terminal, the README's quick tour.

Environment knobs: KAFKA_PORT (9092), SIM_PORT (8765), RELAY_HTTP_PORT (8080), SIM_INTEGRATIONS, SIM_NEW_INTEGRATION
(personio:hooli), SIM_USERS, SIM_CHURN, RELAY_POLL_INTERVAL_SECONDS (60).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "deploy" / "local-kafka"))

from local_kafka import LocalKafka, port_is_open  # noqa: E402

BIN = REPO / ".venv" / "bin"
SIM_API_KEY = "sim-api-key"
DEFAULT_INTEGRATIONS = "personio:acme,greenhouse:globex,workday:initech"
DEFAULT_NEW_INTEGRATION = "personio:hooli"


def tour_integrations(environ: dict[str, str]) -> tuple[str, str]:
    """The integrations the relay starts with (comma-separated) and the one the tour adds while it runs: served by
    the simulator from the start, in the relay's registry only once added."""
    seeded = environ.get("SIM_INTEGRATIONS", DEFAULT_INTEGRATIONS)
    return seeded, environ.get("SIM_NEW_INTEGRATION", DEFAULT_NEW_INTEGRATION)


def add_command(bootstrap_servers: str, integration: str) -> str:
    """What the banner tells to type in a second terminal: `relay integrations add`, at this run's broker (the topic
    names are the defaults both sides use)."""
    relay = BIN / "relay"
    shown = os.path.relpath(relay) if relay.is_relative_to(Path.cwd()) else str(relay)
    return f"RELAY_KAFKA_BOOTSTRAP_SERVERS={bootstrap_servers} {shown} integrations add {integration}"


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # Each child leads its own process group, so stopping it also stops anything it spawned.
    return subprocess.Popen(command, env=env, start_new_session=True)


def stop(process: subprocess.Popen[bytes], timeout: float = 25.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_port(port: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_is_open(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"run-local: {what} did not open port {port} within {timeout:.0f}s")
        time.sleep(0.1)


def main() -> int:
    kafka_port = int(os.environ.get("KAFKA_PORT", "9092"))
    sim_port = int(os.environ.get("SIM_PORT", "8765"))
    integrations, new_integration = tour_integrations(dict(os.environ))
    http_port = os.environ.get("RELAY_HTTP_PORT", "8080")
    webhook_secret = secrets.token_urlsafe(24)  # in the children's environment only, never on a command line
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    kafka = LocalKafka(port=kafka_port, data_dir=os.environ.get("KAFKA_DATA_DIR") or None)
    children: list[subprocess.Popen[bytes]] = []
    try:
        print(f"run-local: starting Kafka on 127.0.0.1:{kafka_port}", file=sys.stderr, flush=True)
        kafka.start()
        children.append(
            start(
                [
                    str(BIN / "relay"),
                    "simulate",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(sim_port),
                    "--api-key",
                    SIM_API_KEY,
                    "--integrations",
                    ",".join(dict.fromkeys([*integrations.split(","), new_integration])),  # once, if seeded too
                    "--users",
                    os.environ.get("SIM_USERS", "200"),
                    "--churn",
                    os.environ.get("SIM_CHURN", "2"),
                    "--webhook-url",
                    f"http://127.0.0.1:{http_port}/webhooks/kombo",
                ],
                env={**os.environ, "SIM_WEBHOOK_SECRET": webhook_secret},
            )
        )
        wait_for_port(sim_port, "the simulator")
        env = {
            **os.environ,
            "RELAY_SOURCE_URL": f"http://127.0.0.1:{sim_port}/v1",
            "RELAY_API_KEY": SIM_API_KEY,
            "RELAY_INTEGRATIONS": integrations,
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RELAY_POLL_INTERVAL_SECONDS": os.environ.get("RELAY_POLL_INTERVAL_SECONDS", "60"),
            "RELAY_HTTP_PORT": http_port,
            "RELAY_KOMBO_WEBHOOK_SECRET": webhook_secret,
            "RELAY_OVERLAP_SECONDS": os.environ.get("RELAY_OVERLAP_SECONDS", "5"),
            "RELAY_LOG_FORMAT": os.environ.get("RELAY_LOG_FORMAT", "console"),
            "RELAY_TOPIC_PARTITIONS": os.environ.get("RELAY_TOPIC_PARTITIONS", "3"),
        }
        children.append(start([str(BIN / "relay"), "tail"], env=env))
        children.append(start([str(BIN / "relay"), "run"], env=env))
        print(
            f"run-local: simulator at http://127.0.0.1:{sim_port}/v1, metrics at http://localhost:{http_port}/metrics,"
            f" status at http://localhost:{http_port}/status; Ctrl-C stops everything\n"
            f"run-local: the relay polls {integrations}; to add the customer {new_integration} while events scroll,"
            f" type in a second terminal (in {Path.cwd()}):\n"
            f"    {add_command(kafka.bootstrap_servers, new_integration)}",
            file=sys.stderr,
            flush=True,
        )
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
        for child in children:
            if child.poll() is not None and not stopping:
                print(f"run-local: {child.args[1]} exited with code {child.returncode}", file=sys.stderr)
                return 1
        return 0
    finally:
        for child in reversed(children):
            stop(child)
        kafka.cleanup()
        print("run-local: stopped everything", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

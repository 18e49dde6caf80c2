#!/usr/bin/env python3
"""A real single-node Apache Kafka (KRaft) on 127.0.0.1, without Docker.

The broker's jars come from Maven Central through ``pom.xml`` beside this file and are cached in
``.cache/kafka/<version>/`` at the repository root (git ignores it). The broker runs as one JVM that is both
controller and broker, with single-node settings under which transactions work.

Used three ways:

* ``python deploy/local-kafka/local_kafka.py fetch``: resolve the jars (idempotent).
* ``python deploy/local-kafka/local_kafka.py run [--port P] [--data-dir D]``: run in the foreground until interrupted
  (``make kafka``).
* ``from local_kafka import LocalKafka``: the test suite starts and stops a broker with it.

This file depends on nothing but the standard library, so it works before the project is installed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
POM = HERE / "pom.xml"
MIN_JAVA = 17


class PrerequisiteMissing(SystemExit):
    """A tool the broker needs is not installed; the message says which and how to get it."""

    def __init__(self, message: str) -> None:
        super().__init__(f"local-kafka: {message}")


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    if not match:
        raise RuntimeError(f"{POM} has no <kafka.version> property")
    return match.group(1)


def cache_dir() -> Path:
    return Path(os.environ.get("KAFKA_CACHE_DIR", REPO / ".cache" / "kafka")) / kafka_version()


def check_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise PrerequisiteMissing(
            f"`java` not found: install a Java {MIN_JAVA}+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise PrerequisiteMissing(f"cannot tell the version of {java}: {out.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise PrerequisiteMissing(
            f"Java {major} found at {java}; Kafka {kafka_version()} needs Java {MIN_JAVA}+ "
            f"(e.g. `apt-get install openjdk-17-jre-headless`)"
        )
    return java


def fetch() -> Path:
    """Resolve the broker's jars into the cache once; return the folder holding them."""
    libs = cache_dir() / "libs"
    marker = cache_dir() / ".complete"
    if marker.exists():
        return libs
    check_java()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PrerequisiteMissing("`mvn` not found: install Apache Maven 3.6+ (e.g. `apt-get install maven`)")
    partial = cache_dir() / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    print(f"local-kafka: resolving Kafka {kafka_version()} jars with Maven into {libs}", file=sys.stderr)
    subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ],
        check=True,
    )
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    marker.touch()
    return libs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def random_cluster_id() -> str:
    # One id in 64 would start with "-", which the storage tool's argument parser takes for an option (and fails).
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={log_dir}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=-1
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=16777216
"""

LOG4J2 = """\
Configuration:
  status: warn
  Appenders:
    Console:
      name: STDERR
      target: SYSTEM_ERR
      PatternLayout:
        Pattern: "[kafka %d{HH:mm:ss}] %p %m (%c{1})%n"
  Loggers:
    Root:
      level: "${sys:kafka.log.level:-WARN}"
      AppenderRef:
        - ref: STDERR
"""


class LocalKafka:
    """One broker+controller process. ``start()`` returns once it answers metadata requests."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | Path | None = None,
        log_level: str = "WARN",
        log_file: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.controller_port = free_port()
        self._own_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="relay-kafka-"))
        self.log_level = log_level
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java_command(self, libs: Path, main: str, *args: str) -> list[str]:
        return [
            check_java(),
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.yaml'}",
            f"-Dkafka.log.level={self.log_level}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.yaml").write_text(LOG4J2)
        config = self.data_dir / "server.properties"
        config.write_text(
            SERVER_PROPERTIES.format(
                port=self.port, controller_port=self.controller_port, log_dir=self.data_dir / "logs"
            )
        )
        return config

    def _format_storage(self, libs: Path, config: Path) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return  # formatted by an earlier run that used the same data directory
        subprocess.run(
            self._java_command(
                libs,
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                random_cluster_id(),
                "-c",
                str(config),
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self, timeout: float = 90.0) -> LocalKafka:
        libs = fetch()
        if port_is_open(self.port):
            raise RuntimeError(f"local-kafka: port {self.port} on 127.0.0.1 is already in use")
        config = self._write_config()
        self._format_storage(libs, config)
        if self.log_file is not None:
            self._log = open(self.log_file, "ab")  # noqa: SIM115 - lives as long as the process; closed by stop()
        self.process = subprocess.Popen(
            self._java_command(libs, "kafka.Kafka", str(config)),
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        self._wait_until_ready(timeout)
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"local-kafka: broker exited with code {self.process.returncode} while starting")
            if port_is_open(self.port) and self._answers_metadata():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"local-kafka: broker did not become ready within {timeout:.0f}s")

    def _answers_metadata(self) -> bool:
        """Send a Kafka Metadata v1 request by hand and check that the broker lists itself."""
        request_body = b"\xff\xff\xff\xff"  # topics = null: all topics
        client_id = b"local-kafka-probe"
        header = (3).to_bytes(2, "big") + (1).to_bytes(2, "big") + (1).to_bytes(4, "big")
        header += len(client_id).to_bytes(2, "big") + client_id
        payload = header + request_body
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(len(payload).to_bytes(4, "big") + payload)
                size = int.from_bytes(_read_exactly(sock, 4), "big")
                response = _read_exactly(sock, size)
        except OSError:
            return False
        # correlation id (4) then the brokers array count (4): at least one broker means the node is serving.
        return len(response) >= 8 and int.from_bytes(response[4:8], "big", signed=True) >= 1

    def stop(self, timeout: float = 30.0) -> None:
        """Stop with SIGTERM (controlled shutdown); SIGKILL if it does not stop in time."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """Kill the broker at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        self._close_log()

    def cleanup(self) -> None:
        self.stop()
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks += chunk
    return bytes(chunks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="check that Java 17+ and Maven are installed")
    sub.add_parser("fetch", help="resolve the broker's jars with Maven (idempotent)")
    run = sub.add_parser("run", help="run a broker in the foreground until interrupted")
    run.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("KAFKA_PORT", "9092")),
        help="listener port on 127.0.0.1 (env KAFKA_PORT, default 9092)",
    )
    run.add_argument(
        "--data-dir",
        default=os.environ.get("KAFKA_DATA_DIR") or None,
        help="keep data here across runs (env KAFKA_DATA_DIR; default: a temporary directory)",
    )
    run.add_argument("--log-level", default=os.environ.get("KAFKA_LOG_LEVEL", "WARN"))
    args = parser.parse_args(argv)
    if args.command == "check":
        check_java()
        if shutil.which("mvn") is None and not (cache_dir() / ".complete").exists():
            raise PrerequisiteMissing("`mvn` not found: install Apache Maven 3.6+ (e.g. `apt-get install maven`)")
        return 0
    if args.command == "fetch":
        print(fetch())
        return 0
    broker = LocalKafka(port=args.port, data_dir=args.data_dir, log_level=args.log_level)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        broker.start()
        print(
            f"local-kafka: Kafka {kafka_version()} ready at {broker.bootstrap_servers} "
            f"(data in {broker.data_dir}); Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        while not stop and broker.process is not None and broker.process.poll() is None:
            time.sleep(0.2)
    finally:
        broker.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A real single-node Apache Kafka (KRaft) on 127.0.0.1, without Docker.

The broker's jars come from Maven Central through ``pom.xml`` beside this file and are cached in
``.cache/kafka/<version>/`` at the repository root (git ignores it). The broker runs as one JVM that is both
controller and broker, with single-node settings under which transactions work.

Used three ways:

* ``python deploy/local-kafka/local_kafka.py fetch``: resolve the jars (idempotent).
* ``python deploy/local-kafka/local_kafka.py run [--port P] [--data-dir D]``: run in the foreground until interrupted
  (``make kafka``).
* ``python deploy/local-kafka/local_kafka.py run --security ssl|mtls|scram|plain|all`` (``make kafka
  KAFKA_SECURITY=...``): the same broker, secured (:class:`SecuredKafka`); it prints the ``RELAY_KAFKA_*`` settings
  of the chosen listener (``all``: of each).
* ``from local_kafka import LocalKafka, SecuredKafka``: the test suite starts and stops brokers with them.

The secured broker has, in one JVM, a listener per way of connecting: ``PLAINTEXT`` (unauthenticated, as the plain
broker), ``SSL`` (TLS, server certificate only), ``MTLS`` (TLS, client certificate required, the principal is its CN),
``SASL_SSL`` (TLS with SCRAM-SHA-512 or PLAIN users); a test CA and the certificates are made at start with
``openssl``. The ``StandardAuthorizer`` enforces ACLs: ``User:relay`` may create, describe, write and read the topics
prefixed ``kombo`` and use the transactional ids prefixed ``change-relay-``; ``User:consumer`` may only read those
topics (and use the groups prefixed ``kombo``); ``User:admin`` is a super user, and so is ``User:ANONYMOUS``, the
principal of the PLAINTEXT, SSL and controller listeners (unauthenticated: a local broker only).

This file depends on nothing but the standard library, so it works before the project is installed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple

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


def check_openssl() -> str:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise PrerequisiteMissing(
            "`openssl` not found: the secured broker makes its test CA with it (e.g. `apt-get install openssl`)"
        )
    return openssl


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
        config.write_text(self._server_properties())
        return config

    def _server_properties(self) -> str:
        return SERVER_PROPERTIES.format(
            port=self.port, controller_port=self.controller_port, log_dir=self.data_dir / "logs"
        )

    def _format_arguments(self) -> list[str]:
        """More arguments of ``kafka-storage format`` (the secured broker's SCRAM users)."""
        return []

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
                *self._format_arguments(),
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
        try:
            response = _request(self.port, api_key=3, version=1, body=b"\xff\xff\xff\xff")  # topics = null: all
        except OSError:
            return False
        # The brokers array count (4): at least one broker means the node is serving.
        return len(response) >= 4 and int.from_bytes(response[0:4], "big", signed=True) >= 1

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


def _request(port: int, *, api_key: int, version: int, body: bytes) -> bytes:
    """One Kafka request (header v1) to 127.0.0.1:``port`` over PLAINTEXT; the response without its correlation id."""
    client_id = b"local-kafka"
    header = api_key.to_bytes(2, "big") + version.to_bytes(2, "big") + (1).to_bytes(4, "big")
    payload = header + len(client_id).to_bytes(2, "big") + client_id + body
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(len(payload).to_bytes(4, "big") + payload)
        size = int.from_bytes(_read_exactly(sock, 4), "big")
        return _read_exactly(sock, size)[4:]


# --- The secured broker ------------------------------------------------------------------------------------------

SECURED_PROPERTIES = """\
listeners=PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{ssl_port},MTLS://127.0.0.1:{mtls_port},\
SASL_SSL://127.0.0.1:{sasl_ssl_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SSL://localhost:{ssl_port},MTLS://localhost:{mtls_port},\
SASL_SSL://localhost:{sasl_ssl_port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL
ssl.keystore.type=PEM
ssl.keystore.location={tls}/server.pem
ssl.truststore.type=PEM
ssl.truststore.location={tls}/ca.pem
ssl.client.auth=none
listener.name.mtls.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([a-zA-Z0-9._-]+)$/$1/,DEFAULT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \
{plain_users};
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:admin
allow.everyone.if.no.acl.found=false
"""

# Kafka's wire codes (org.apache.kafka.common.resource.ResourceType, PatternType, acl.AclOperation).
RESOURCE_TYPES = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
PATTERN_TYPES = {"literal": 3, "prefixed": 4}
OPERATIONS = {"all": 2, "read": 3, "write": 4, "create": 5, "alter": 7, "describe": 8, "idempotent_write": 12}
ALLOW = 3


class Acl(NamedTuple):
    """One ALLOW binding: ``principal`` (``User:relay``) may do ``operation`` on the resource, from any host."""

    principal: str
    resource_type: str  # a key of RESOURCE_TYPES
    name: str
    pattern: str  # literal or prefixed
    operation: str  # a key of OPERATIONS

    def encoded(self) -> bytes:
        return (
            RESOURCE_TYPES[self.resource_type].to_bytes(1, "big")
            + _string(self.name)
            + PATTERN_TYPES[self.pattern].to_bytes(1, "big")
            + _string(self.principal)
            + _string("*")
            + OPERATIONS[self.operation].to_bytes(1, "big")
            + ALLOW.to_bytes(1, "big")
        )


def relay_acls(principal: str, topic_prefix: str, transactional_id_prefix: str) -> list[Acl]:
    """Every ACL a relay needs: its topics (event and state topics share the prefix) and its transactional ids."""
    topic_operations = ("create", "describe", "write", "read")
    return [Acl(principal, "topic", topic_prefix, "prefixed", op) for op in topic_operations] + [
        Acl(principal, "transactional_id", transactional_id_prefix, "prefixed", op) for op in ("describe", "write")
    ]


def consumer_acls(principal: str, topic_prefix: str, group_prefix: str) -> list[Acl]:
    """What a read_committed consumer of the relay's topics needs: read them, and its consumer group."""
    return [
        Acl(principal, "topic", topic_prefix, "prefixed", "describe"),
        Acl(principal, "topic", topic_prefix, "prefixed", "read"),
        Acl(principal, "group", group_prefix, "prefixed", "read"),
    ]


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def int(self, size: int) -> int:
        value = int.from_bytes(self.data[self.at : self.at + size], "big", signed=True)
        self.at += size
        return value

    def string(self) -> str | None:
        size = self.int(2)
        if size < 0:
            return None
        text = self.data[self.at : self.at + size].decode()
        self.at += size
        return text


class SecuredKafka(LocalKafka):
    """The same single-node broker with TLS, mutual TLS, SASL (SCRAM-SHA-512 and PLAIN) listeners and ACLs.

    ``users`` maps each user (``admin``, ``relay``, ``consumer``, ``limited``: a principal with no ACL at start, for
    tests that grant it all but one) to its password, the same for SCRAM and PLAIN; ``tls_dir`` holds ``ca.pem`` (the
    CA that signed the broker's certificate, for ``localhost`` only), ``<user>.pem``/``<user>.key`` (client
    certificates whose CN is the user), ``rogue-ca.pem`` and ``rogue-relay.pem``/``.key`` (a CA the broker does not
    trust, and a client certificate it signed), and ``<user>.password``.
    """

    USERS = ("admin", "relay", "consumer", "limited")
    LISTENERS = ("ssl", "mtls", "scram", "plain")

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | Path | None = None,
        log_level: str = "WARN",
        log_file: Path | None = None,
        *,
        topic_prefix: str = "kombo",
        transactional_id_prefix: str = "change-relay-",
    ) -> None:
        super().__init__(port, data_dir, log_level, log_file)
        self.ssl_port = free_port()
        self.mtls_port = free_port()
        self.sasl_ssl_port = free_port()
        self.topic_prefix = topic_prefix
        self.transactional_id_prefix = transactional_id_prefix
        self.tls_dir = self.data_dir / "tls"
        self.users = {user: secrets.token_urlsafe(18) for user in self.USERS}

    def bootstrap(self, listener: str) -> str:
        """``host:port`` of a listener (ssl, mtls, scram, plain), by the host name its certificate is for."""
        port = self.mtls_port if listener == "mtls" else self.ssl_port if listener == "ssl" else self.sasl_ssl_port
        return f"localhost:{port}"

    def client_settings(self, listener: str, user: str = "relay") -> dict[str, str]:
        """The ``RELAY_KAFKA_*`` settings of a relay (or ``relay tail``) connecting as ``user`` to ``listener``."""
        settings = {
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap(listener),
            "RELAY_KAFKA_SSL_CAFILE": str(self.tls_dir / "ca.pem"),
        }
        if listener == "ssl":
            settings["RELAY_KAFKA_SECURITY_PROTOCOL"] = "SSL"
        elif listener == "mtls":
            settings["RELAY_KAFKA_SECURITY_PROTOCOL"] = "SSL"
            settings["RELAY_KAFKA_SSL_CERTFILE"] = str(self.tls_dir / f"{user}.pem")
            settings["RELAY_KAFKA_SSL_KEYFILE"] = str(self.tls_dir / f"{user}.key")
        elif listener in ("scram", "plain"):
            settings["RELAY_KAFKA_SECURITY_PROTOCOL"] = "SASL_SSL"
            settings["RELAY_KAFKA_SASL_MECHANISM"] = "SCRAM-SHA-512" if listener == "scram" else "PLAIN"
            settings["RELAY_KAFKA_SASL_USERNAME"] = user
            settings["RELAY_KAFKA_SASL_PASSWORD_FILE"] = str(self.tls_dir / f"{user}.password")
        else:
            raise ValueError(f"unknown listener {listener!r}; one of {', '.join(self.LISTENERS)}")
        return settings

    def _server_properties(self) -> str:
        plain_users = " ".join(f'user_{user}="{password}"' for user, password in self.users.items())
        return super()._server_properties() + SECURED_PROPERTIES.format(
            port=self.port,
            controller_port=self.controller_port,
            ssl_port=self.ssl_port,
            mtls_port=self.mtls_port,
            sasl_ssl_port=self.sasl_ssl_port,
            tls=self.tls_dir,
            plain_users=plain_users,
        )

    def _format_arguments(self) -> list[str]:
        return [
            arg
            for user, password in self.users.items()
            for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")
        ]

    def start(self, timeout: float = 90.0) -> SecuredKafka:
        self._make_certificates()
        super().start(timeout)
        for port in (self.ssl_port, self.mtls_port, self.sasl_ssl_port):
            while not port_is_open(port):  # opened with the PLAINTEXT listener; this only makes sure
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError("local-kafka: the secured broker exited while starting")
                time.sleep(0.1)
        self.grant(
            relay_acls("User:relay", self.topic_prefix, self.transactional_id_prefix)
            + consumer_acls("User:consumer", self.topic_prefix, self.topic_prefix)
        )
        return self

    # The PLAINTEXT listener's principal (ANONYMOUS) is a super user: ACLs are created and listed through it.

    def grant(self, acls: Sequence[Acl], timeout: float = 30.0) -> None:
        """Create ``acls`` and return once the broker enforces them (its authorizer lists every one)."""
        if not acls:
            return
        body = len(acls).to_bytes(4, "big") + b"".join(acl.encoded() for acl in acls)
        response = _Reader(_request(self.port, api_key=30, version=1, body=body))  # CreateAcls v1
        response.int(4)  # throttle time
        for acl in acls[: response.int(4)]:
            code, message = response.int(2), response.string()
            if code:
                raise RuntimeError(f"local-kafka: creating {acl} failed: error {code} {message}")
        deadline = time.monotonic() + timeout
        while not set(acls) <= set(self.acls()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"local-kafka: the broker does not enforce the ACLs created after {timeout:.0f}s")
            time.sleep(0.05)

    def acls(self) -> list[Acl]:
        """Every ALLOW ACL the broker's authorizer holds (DescribeAcls v1, any resource)."""
        body = b"\x01" + b"\xff\xff" + b"\x01" + b"\xff\xff" + b"\xff\xff" + b"\x01" + b"\x01"
        response = _Reader(_request(self.port, api_key=29, version=1, body=body))
        response.int(4)  # throttle time
        code, message = response.int(2), response.string()
        if code:
            raise RuntimeError(f"local-kafka: listing ACLs failed: error {code} {message}")
        types = {value: name for name, value in RESOURCE_TYPES.items()}
        patterns = {value: name for name, value in PATTERN_TYPES.items()}
        operations = {value: name for name, value in OPERATIONS.items()}
        found = []
        for _ in range(response.int(4)):
            resource_type, name, pattern = response.int(1), response.string(), response.int(1)
            for _ in range(response.int(4)):
                principal, _host, operation, permission = (
                    response.string(),
                    response.string(),
                    response.int(1),
                    response.int(1),
                )
                if permission == ALLOW and resource_type in types and pattern in patterns:
                    found.append(
                        Acl(
                            str(principal),
                            types[resource_type],
                            str(name),
                            patterns[pattern],
                            operations.get(operation, str(operation)),
                        )
                    )
        return found

    def _make_certificates(self) -> None:
        """A test CA, the broker's certificate (for ``localhost`` only), a client certificate per user, and a rogue CA
        with a client certificate of its own; PEM files, keys unencrypted (PKCS#8), valid for two days."""
        openssl = check_openssl()
        tls = self.tls_dir
        tls.mkdir(parents=True, exist_ok=True)

        def run(*args: str | Path) -> None:
            subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)

        def new_ca(name: str, subject: str) -> None:
            run(
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", tls / f"{name}.key", "-out", tls / f"{name}.pem", "-days", "2", "-subj", subject,
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            )  # fmt: skip

        def new_leaf(name: str, ca: str, cn: str, extensions: str) -> None:
            run(
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", tls / f"{name}.key", "-out", tls / f"{name}.csr", "-subj", f"/CN={cn}",
            )  # fmt: skip
            (tls / f"{name}.ext").write_text(extensions)
            run(
                "x509", "-req", "-in", tls / f"{name}.csr", "-CA", tls / f"{ca}.pem", "-CAkey", tls / f"{ca}.key",
                "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
                "-extfile", tls / f"{name}.ext", "-out", tls / f"{name}.pem",
            )  # fmt: skip

        new_ca("ca", "/CN=change-relay local-kafka test CA")
        new_ca("rogue-ca", "/CN=a CA the local broker does not trust")
        new_leaf("broker", "ca", "localhost", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
        # Kafka's PEM key store: the private key (PKCS#8), then the certificate chain.
        (tls / "server.pem").write_text((tls / "broker.key").read_text() + (tls / "broker.pem").read_text())
        for user in self.USERS:
            new_leaf(user, "ca", user, "extendedKeyUsage=clientAuth\n")
            (tls / f"{user}.password").write_text(self.users[user])
        new_leaf("rogue-relay", "rogue-ca", "relay", "extendedKeyUsage=clientAuth\n")
        for path in tls.iterdir():
            path.chmod(0o600)


def print_settings(broker: SecuredKafka, listeners: Iterable[str]) -> None:
    for listener in listeners:
        print(f"# {listener}: connect as User:relay", flush=True)
        for name, value in broker.client_settings(listener).items():
            print(f"export {name}={value}", flush=True)
    print(
        f"# users (SCRAM-SHA-512 and PLAIN): {', '.join(broker.users)}; passwords in {broker.tls_dir}/<user>.password,"
        f" client certificates in {broker.tls_dir}/<user>.pem; PLAINTEXT stays at {broker.bootstrap_servers}",
        flush=True,
    )


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
    run.add_argument(
        "--security",
        choices=("none", "all", *SecuredKafka.LISTENERS),
        default=os.environ.get("KAFKA_SECURITY") or "none",
        help="none: PLAINTEXT only; otherwise the secured broker (every listener, ACLs), printing the RELAY_KAFKA_* "
        "settings of that listener (all: of each) (env KAFKA_SECURITY, default none)",
    )
    args = parser.parse_args(argv)
    if args.command == "check":
        check_java()
        if shutil.which("mvn") is None and not (cache_dir() / ".complete").exists():
            raise PrerequisiteMissing("`mvn` not found: install Apache Maven 3.6+ (e.g. `apt-get install maven`)")
        return 0
    if args.command == "fetch":
        print(fetch())
        return 0
    secured = args.security != "none"
    broker_class = SecuredKafka if secured else LocalKafka
    broker = broker_class(port=args.port, data_dir=args.data_dir, log_level=args.log_level)
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
        if isinstance(broker, SecuredKafka):
            print_settings(broker, broker.LISTENERS if args.security == "all" else [args.security])
        while not stop and broker.process is not None and broker.process.poll() is None:
            time.sleep(0.2)
    finally:
        broker.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

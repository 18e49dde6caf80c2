"""Whether Kafka lets this relay in, said in words an operator can act on.

aiokafka's clients retry a refused TLS handshake or SASL login like an unreachable broker and, in the end, report only
that they could not bootstrap. So before its clients start, the relay opens one connection of its own to a bootstrap
server with the configured security, and turns a refusal into :class:`~relay.errors.KafkaAuthenticationFailed` naming
the setting to fix: the CA file for an untrusted broker certificate, the bootstrap host name for a certificate made for
another name, the client certificate the broker refused, or the SASL mechanism and user whose credentials it refused
(never the password). A broker that cannot be reached is not a refusal: that stays
:class:`~relay.errors.KafkaUnavailable`, retried.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed

from relay.errors import KafkaAuthenticationFailed, KafkaUnavailable

if TYPE_CHECKING:
    from relay.config import KafkaSecurity

# OpenSSL's verify results for a certificate made for another host name (X509_V_ERR_HOSTNAME_MISMATCH) or address.
_NAME_MISMATCH = (62, 64)


async def check_kafka_access(bootstrap_servers: str, security: KafkaSecurity, timeout: float = 10.0) -> None:
    """Return once one bootstrap server accepted a connection with ``security``; raise KafkaAuthenticationFailed when
    one refused it (or the relay refused the broker's certificate), KafkaUnavailable when none could be reached."""
    kwargs = security.aiokafka_kwargs()
    unreachable: list[str] = []
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        try:
            connection = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout * 1000), **kwargs), timeout
            )
        except ssl.SSLCertVerificationError as error:
            raise KafkaAuthenticationFailed(_untrusted(server, host, security, error)) from None
        except SaslAuthenticationFailed as error:
            raise KafkaAuthenticationFailed(
                f"Kafka broker {server} refused the SASL {security.sasl_mechanism} credentials of user "
                f"{security.sasl_username!r} ({error}): check RELAY_KAFKA_SASL_USERNAME and RELAY_KAFKA_SASL_PASSWORD "
                f"(or its _FILE), and that the user exists for {security.sasl_mechanism} on the cluster"
            ) from None
        except KafkaConnectionError as error:
            cause = error.__cause__ or error.__context__
            if isinstance(cause, ssl.SSLError) and "ALERT" in str(cause.reason or ""):
                raise KafkaAuthenticationFailed(_refused_tls(server, security, cause)) from None
            unreachable.append(f"{server}: {error}")
        except (OSError, TimeoutError, KafkaError) as error:
            unreachable.append(f"{server}: {type(error).__name__}: {error}")
        else:
            connection.close()
            return
    raise KafkaUnavailable(f"no Kafka bootstrap server could be reached ({'; '.join(unreachable)})")


def _untrusted(server: str, host: str, security: KafkaSecurity, error: ssl.SSLCertVerificationError) -> str:
    if error.verify_code in _NAME_MISMATCH:
        return (
            f"the certificate of Kafka broker {server} is not for the name {host!r} ({error.verify_message}): list the "
            "brokers in RELAY_KAFKA_BOOTSTRAP_SERVERS by a name their certificate is for (the name the broker "
            "advertises); RELAY_KAFKA_SSL_CHECK_HOSTNAME=false turns the check off, which lets any certificate of "
            "that CA pose as the broker"
        )
    cafile = security.ssl_cafile or "unset, so the system's CA certificates"
    return (
        f"Kafka broker {server} presented a certificate that RELAY_KAFKA_SSL_CAFILE ({cafile}) does not trust "
        f"({error.verify_message}): set RELAY_KAFKA_SSL_CAFILE to the CA certificate that signed the brokers' "
        "certificates (Strimzi: the cluster CA, ca.crt of the <cluster>-cluster-ca-cert secret)"
    )


def _refused_tls(server: str, security: KafkaSecurity, cause: ssl.SSLError) -> str:
    if security.ssl_certfile is None:
        fix = (
            "the listener requires a client certificate: set RELAY_KAFKA_SSL_CERTFILE and RELAY_KAFKA_SSL_KEYFILE "
            "(Strimzi: user.crt and user.key of the KafkaUser's secret)"
        )
    else:
        fix = (
            f"RELAY_KAFKA_SSL_CERTFILE ({security.ssl_certfile}) is not signed by a CA the broker trusts, has "
            "expired, or is not for client authentication"
        )
    return f"Kafka broker {server} refused the TLS connection's client certificate ({cause.reason}): {fix}"

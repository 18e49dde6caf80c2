"""What an error that ended a poll means: how it is counted, and what the pair does next.

Rule: one table, :data:`VERDICTS`, read top down, maps every error a poll can end with to a :class:`Verdict`. The
pipeline counts a failed poll by its verdict's outcome, the scheduler acts on it; neither keeps a ladder of its own.
An error no specific row names is a bug of ours or a surprise from a library: it still gets a verdict
(``internal_error``, back off), so that nothing ends a pair's polling but a shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiokafka.errors import KafkaError

from relay.errors import (
    AuthenticationError,
    Fenced,
    IntegrationError,
    InvalidPage,
    KafkaAuthenticationFailed,
    KafkaAuthorizationFailed,
    KafkaUnavailable,
    PartitionLost,
    RecordTooLarge,
    SinkError,
    SourceError,
    StateError,
)

Then = Literal["back_off", "retry_soon", "stop"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The ``outcome`` a failed poll is counted and logged as, and what the pair does ``then``: back off (the
    integration's or the record's fault, waiting longer each time), retry soon (Kafka's trouble, not the
    integration's), or stop the relay (no retry can mend it; ``message`` tells the operator)."""

    outcome: str
    then: Then
    message: str = ""


INTERNAL_ERROR = Verdict("internal_error", "back_off")

# First match wins, so a subclass stands above its base.
VERDICTS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Verdict], ...] = (
    (IntegrationError, Verdict("integration_error", "back_off")),
    (AuthenticationError, Verdict("source_error", "stop", "the source refused the API key; check RELAY_API_KEY")),
    (Fenced, Verdict("kafka_error", "stop", "fenced by another instance with the same transactional id; stopping")),
    (KafkaAuthorizationFailed, Verdict("kafka_error", "stop", "Kafka refused this relay's principal; stopping")),
    (KafkaAuthenticationFailed, Verdict("kafka_error", "stop", "Kafka refused this relay's credentials; stopping")),
    (StateError, Verdict("kafka_error", "stop", "cannot read the state topic; stopping")),
    (InvalidPage, Verdict("invalid_page", "back_off")),
    (SourceError, Verdict("source_error", "back_off")),
    (RecordTooLarge, Verdict("record_too_large", "back_off")),
    (PartitionLost, Verdict("partition_lost", "retry_soon")),
    (SinkError, Verdict("kafka_error", "retry_soon")),
    ((OSError, KafkaError), Verdict("kafka_error", "retry_soon")),
    (Exception, INTERNAL_ERROR),
)


def verdict_on(error: BaseException) -> Verdict:
    for kinds, verdict in VERDICTS:
        if isinstance(error, kinds):
            return verdict
    return INTERNAL_ERROR


def as_relay_error(error: BaseException) -> BaseException:
    """Kafka's and the network's own errors, as the relay reports them."""
    return KafkaUnavailable(str(error)) if isinstance(error, (OSError, KafkaError)) else error

"""The one exception tree of change-relay, arranged by who must act.

::

    RelayError
    ├── ConfigError                 an operator must fix the configuration; start-up stops
    ├── SourceError                 something went wrong talking to the source API
    │   ├── RetryableSourceError    retry here with backoff: rate limit, 5xx, timeout, malformed body
    │   │   └── RateLimited         429 / PLATFORM.RATE_LIMIT_EXCEEDED, with the wait the source asked for
    │   ├── CursorRejected          the source no longer accepts a saved cursor: restart the poll from the watermark
    │   ├── InvalidPage             a page failed validation: this poll fails, nothing from it is published
    │   ├── IntegrationError        back off this integration only: INTEGRATION.*, setup pending, not found
    │   └── AuthenticationError     the API key is wrong: loud, an operator must act
    ├── SinkError                   Kafka did not accept a transaction
    │   ├── KafkaUnavailable        retry with backoff from the last committed state
    │   │   └── KafkaTimedOut       an operator's command gave up: Kafka did not answer within its timeout
    │   ├── Fenced                  another instance took over our transactional id: stop, never write again
    │   ├── RecordTooLarge          a record is larger than Kafka accepts: that pair backs off, Kafka is not down
    │   ├── PartitionLost           another replica owns the pair's state partition now: hand its pairs over
    │   ├── KafkaAuthorizationFailed  Kafka's ACLs refuse our principal a topic or the transactional id: stop
    │   └── KafkaAuthenticationFailed  Kafka refused our credentials or certificate, or we refused its: stop
    ├── StateError                  the state topic holds something this version cannot read, or state placed
    │                               by another RELAY_STATE_TOPIC_PARTITIONS
    └── UnknownIntegration          a command named an integration the registry does not hold (or holds as removed)

Every error carries what an operator needs to find the cause (integration, resource, error code, the source's
``log_url``) and never a secret.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error change-relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid. ``problems`` has one line per problem, each naming the key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


class SourceError(RelayError):
    """A request to the source API failed.

    ``code`` is Kombo's ``error.code`` when the source sent one (``PLATFORM.RATE_LIMIT_EXCEEDED``, ...), otherwise a
    code of ours in the same style (``RELAY.TIMEOUT``, ``RELAY.MALFORMED_BODY``, ``RELAY.HTTP_502``).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        integration: str | None = None,
        resource: str | None = None,
        status: int | None = None,
        log_url: str | None = None,
    ) -> None:
        self.code = code
        self.integration = integration
        self.resource = resource
        self.status = status
        self.log_url = log_url
        where = " ".join(f"{k}={v}" for k, v in (("integration", integration), ("resource", resource)) if v)
        super().__init__(f"{code}: {message}" + (f" ({where})" if where else ""))


class RetryableSourceError(SourceError):
    """Transient: the same request may succeed later (5xx, timeouts, malformed bodies, rate limits)."""

    retry_after: float | None = None


class RateLimited(RetryableSourceError):
    """The source's request budget is spent; ``retry_after`` is how long it asked us to wait, if it said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class CursorRejected(SourceError):
    """The source rejected a pagination cursor we resumed with; the poll restarts from its watermark."""


class InvalidPage(SourceError):
    """A page is not what the contract promises (a record without ``id``, an unparseable ``changed_at``, ...)."""


class IntegrationError(SourceError):
    """The integration cannot be served now (inactive, setup pending, not found): back it off, keep the others."""


class AuthenticationError(SourceError):
    """The API key was refused. Nothing will work until an operator fixes it."""


class SinkError(RelayError):
    """Kafka did not accept a transaction; nothing from it is visible to ``read_committed`` consumers."""


class KafkaUnavailable(SinkError):
    """Kafka is unreachable or erroring; retry from the last committed state."""


class KafkaTimedOut(KafkaUnavailable):
    """Kafka did not answer an operator's command (``relay integrations``, ``relay resnapshot``, the admin HTTP API)
    within its timeout: unavailable, as far as that command can tell. Told apart so that the admin API can answer 504
    rather than 503."""


class Fenced(SinkError):
    """Another instance with the same transactional id started; this one must stop writing for good."""


class RecordTooLarge(SinkError):
    """A record is larger than Kafka accepts (``RELAY_KAFKA_MAX_RECORD_BYTES``, or the topic's own limit). Nothing of
    its page is written; its pair backs off like after an invalid page, and every other pair goes on."""


class PartitionLost(SinkError):
    """The state partition of a pair is owned by another replica now (its producer was fenced by the new owner's, or
    it was handed over): nothing of the page was written, and this replica stops polling the partition's pairs."""


class KafkaAuthorizationFailed(SinkError):
    """Kafka refused this relay's principal (an ACL on the transactional id, a topic or the cluster). Nothing will be
    written until an operator grants it, so the relay stops, loudly, instead of retrying forever."""


class KafkaAuthenticationFailed(SinkError):
    """The TLS handshake or the SASL login failed for a reason only an operator can fix: the broker's certificate is
    not trusted or not for its name, the broker refused the client certificate, or it refused the SASL credentials.
    The message names the setting to fix and never a secret."""


class StateError(RelayError):
    """A record in the state topic cannot be read by this version, or is not in the partition where
    ``RELAY_STATE_TOPIC_PARTITIONS`` places it (the state topic's partition count or the setting changed)."""


class UnknownIntegration(RelayError):
    """A command (pause, resume, remove) named an integration that the registry of integrations does not hold, or
    holds as removed. ``integration`` is the id as given."""

    def __init__(self, message: str, *, integration: str) -> None:
        self.integration = integration
        super().__init__(message)

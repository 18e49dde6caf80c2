"""How Kafka's errors are classified: who must act decides what the relay does next."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidProducerEpoch,
    KafkaConnectionError,
    MessageSizeTooLargeError,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from prometheus_client import CollectorRegistry

from relay.errors import Fenced, KafkaAuthorizationFailed, KafkaUnavailable, RecordTooLarge
from relay.metrics import Metrics
from relay.sink import KafkaSink, OutMessage, check_record_sizes, control_retention_ms
from tests.unit.support import config_without_kafka


def sink(**environ: str) -> KafkaSink:
    config = config_without_kafka(RELAY_TRANSACTIONAL_ID="relay-test", **environ)
    return KafkaSink(config, Metrics(config.resources, registry=CollectorRegistry()))


@pytest.mark.parametrize("error", [ProducerFenced(), InvalidProducerEpoch()])
def test_a_newer_epoch_is_fencing(error: Exception) -> None:
    kafka = sink()
    assert isinstance(kafka._classify(error), Fenced)
    assert kafka.fenced


@pytest.mark.parametrize(
    ("error", "names"),
    [
        # Raised as aiokafka raises them: with the refused transactional id, or the set of refused topics.
        (TransactionalIdAuthorizationFailed("relay-test"), "Write on the transactional id 'relay-test'"),
        (TopicAuthorizationFailedError({"t.ats.users"}), "Write on the topic(s) 't.ats.users'"),
        (ClusterAuthorizationFailedError(), "a cluster operation"),
    ],
)
def test_an_acl_refusal_is_not_fencing(error: Exception, names: str) -> None:
    # No other instance is involved: calling it fencing would send the operator looking for a twin that does not exist.
    kafka = sink()
    classified = kafka._classify(error)
    assert isinstance(classified, KafkaAuthorizationFailed)
    assert not kafka.fenced
    assert names in str(classified)  # the resource and the operation refused
    assert type(error).__name__ in str(classified)


def test_anything_else_is_unavailable_and_retried() -> None:
    kafka = sink()
    kafka.reachable = True
    assert isinstance(kafka._classify(KafkaConnectionError("down")), KafkaUnavailable)
    assert not kafka.reachable
    assert not kafka.fenced


def test_a_record_over_the_limit_is_refused_by_name_key_topic_and_size() -> None:
    fits = OutMessage("t.ats.users", b"acme:small", b"x" * 1000)
    too_large = OutMessage("t.ats.users", b"acme:big", b"x" * 1100)
    check_record_sizes([fits], 1024)
    with pytest.raises(RecordTooLarge, match=r"key b'acme:big' for topic 't.ats.users' is 1108 bytes, over "):
        check_record_sizes([fits, too_large], 1024)


def test_the_brokers_own_size_refusal_is_not_kafka_being_down() -> None:
    kafka = sink()
    kafka.reachable = True
    classified = kafka._classify(MessageSizeTooLargeError())
    assert isinstance(classified, RecordTooLarge)
    assert "RELAY_KAFKA_MAX_RECORD_BYTES" in str(classified)
    assert kafka.reachable


@pytest.mark.parametrize(
    ("dedup_seconds", "retention_ms"),
    [("3600", 86_400_000), ("0", 86_400_000), ("86400", 86_400_000), ("172800.5", 172_800_500)],
)
def test_the_control_topic_keeps_its_records_for_the_whole_de_duplication_window(
    dedup_seconds: str, retention_ms: int
) -> None:
    config = config_without_kafka(RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS=dedup_seconds)

    assert control_retention_ms(config) == retention_ms

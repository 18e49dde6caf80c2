"""How Kafka's errors are classified: who must act decides what the relay does next."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidProducerEpoch,
    KafkaConnectionError,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from prometheus_client import CollectorRegistry

from relay.errors import Fenced, KafkaAuthorizationFailed, KafkaUnavailable
from relay.metrics import Metrics
from relay.sink import KafkaSink
from tests.unit.support import config_without_kafka


def sink() -> KafkaSink:
    config = config_without_kafka(RELAY_TRANSACTIONAL_ID="relay-test")
    return KafkaSink(config, Metrics(config.resources, registry=CollectorRegistry()))


@pytest.mark.parametrize("error", [ProducerFenced(), InvalidProducerEpoch()])
def test_a_newer_epoch_is_fencing(error: Exception) -> None:
    kafka = sink()
    assert isinstance(kafka._classify(error), Fenced)
    assert kafka.fenced


@pytest.mark.parametrize(
    "error",
    [TransactionalIdAuthorizationFailed(), TopicAuthorizationFailedError(), ClusterAuthorizationFailedError()],
)
def test_an_acl_refusal_is_not_fencing(error: Exception) -> None:
    # No other instance is involved: calling it fencing would send the operator looking for a twin that does not exist.
    kafka = sink()
    classified = kafka._classify(error)
    assert isinstance(classified, KafkaAuthorizationFailed)
    assert not kafka.fenced
    assert "'relay-test'" in str(classified)
    assert type(error).__name__ in str(classified)


def test_anything_else_is_unavailable_and_retried() -> None:
    kafka = sink()
    kafka.reachable = True
    assert isinstance(kafka._classify(KafkaConnectionError("down")), KafkaUnavailable)
    assert not kafka.reachable
    assert not kafka.fenced

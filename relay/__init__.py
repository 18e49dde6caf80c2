"""change-relay: one Kafka event per changed record, from APIs that can only be polled."""

__version__ = "0.1.0"

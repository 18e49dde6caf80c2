"""The label values of ``relay_webhooks_received_total``: the webhook types and the outcomes it counts.

What belongs here: those two closed lists and what each value means, nothing else. relay.metrics pre-initialises
the series from them and relay.webhooks labels every webhook with them; both import this leaf, so the lists have
one home.
"""

from __future__ import annotations

from typing import Final

# Kombo's integration lifecycle, each counted under its own type: acted on with RELAY_FOLLOW_INTEGRATIONS (the
# registry), the last two also with RELAY_FOLLOW_INTEGRATION_STATE (pauses); answered and ignored otherwise. Counted
# apart from ``other`` so that a dashboard sees customers come and go, whichever setting is on.
INTEGRATION_TYPES: Final = ("integration-created", "integration-state-changed", "integration-deleted")

# The Kombo webhook types the relay acts on (the integration ones when a setting says so).
HANDLED_TYPES: Final = ("data-changed", "sync-finished", *INTEGRATION_TYPES)

# Types: the handled ones, ``other`` for a Kombo type the relay ignores, ``unknown`` when unsigned, too large,
# unparseable or undocumented.
WEBHOOK_TYPES: Final = (*HANDLED_TYPES, "other", "unknown")

# Outcomes:
#   accepted             acted on: polls triggered, or an integration paused / resumed
#   duplicate            the same id was acted on within RELAY_KOMBO_WEBHOOK_DEDUP_SECONDS
#   unknown_integration  not an integration this relay polls (202)
#   paused               the integration is paused (it followed integration-state-changed / integration-deleted)
#   ignored              nothing to do: no configured resource affected, a type the relay ignores, state-following off
#   invalid              400: malformed JSON or an unknown shape
#   unauthorized         401: missing or wrong signature
#   too_large            413: body over RELAY_KOMBO_WEBHOOK_MAX_BODY_BYTES
#   timeout              408: the body was not read whole within relay.webhooks.BODY_READ_TIMEOUT_SECONDS
#   busy                 503: relay.webhooks.MAX_WEBHOOKS_IN_FLIGHT webhooks were being handled already
#   unavailable          503: the action could not be forwarded to the owning replica (Kafka did not acknowledge it)
#   starting             503: the relay has not read the registry of integrations yet (it is starting)
WEBHOOK_OUTCOMES: Final = (
    "accepted",
    "duplicate",
    "unknown_integration",
    "paused",
    "ignored",
    "invalid",
    "unauthorized",
    "too_large",
    "timeout",
    "busy",
    "unavailable",
    "starting",
)

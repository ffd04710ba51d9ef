"""Standard Webhooks signing, for llmq and for the people who receive its events.

A receiver verifies an event with the tenant's ``whsec_…`` secret::

    from llmq.webhooks import verify
    event = verify(secret, request.get_data(), request.headers)   # raises InvalidSignature

This is the ``standardwebhooks`` library underneath; any Standard Webhooks verifier works too.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

InvalidSignature = WebhookVerificationError


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three headers of a signed delivery: ``webhook-id``, ``-timestamp`` and ``-signature``."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def verify(secret: str, body: bytes | str, headers: Mapping[str, str]) -> Any:
    """Check the signature and the timestamp (5 minutes tolerance); return the parsed event."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return Webhook(secret).verify(body, lowered)

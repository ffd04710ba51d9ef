"""Webhook signing per Standard Webhooks, verified with the reference library, and the retry
schedule of deliveries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time

import pytest
from standardwebhooks import Webhook

from llmq.models.tenants import new_webhook_secret
from llmq.webhooks import InvalidSignature, sign, verify
from llmq.webhooks.schedule import next_delivery_delay


def test_signature_is_hmac_sha256_of_id_timestamp_body() -> None:
    secret = new_webhook_secret()
    body = json.dumps({"type": "job.completed", "data": {"id": "job_1"}})
    headers = sign(secret, "msg_1", 1_700_000_000, body)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"msg_1.1700000000.{body}".encode(), hashlib.sha256).digest()
    ).decode()
    assert headers == {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": f"v1,{expected}",
    }


def test_the_standardwebhooks_library_verifies_our_signature() -> None:
    secret = new_webhook_secret()
    body = '{"type":"job.failed"}'
    headers = sign(secret, "msg_2", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == {"type": "job.failed"}
    assert verify(secret, body.encode(), {k.title(): v for k, v in headers.items()}) == {"type": "job.failed"}


def test_tampered_body_wrong_secret_and_stale_timestamp_are_rejected() -> None:
    secret = new_webhook_secret()
    body = '{"a":1}'
    headers = sign(secret, "msg_3", int(time.time()), body)
    with pytest.raises(InvalidSignature):
        verify(secret, '{"a":2}', headers)
    with pytest.raises(InvalidSignature):
        verify(new_webhook_secret(), body, headers)
    old = sign(secret, "msg_3", int(time.time()) - 3600, body)
    with pytest.raises(InvalidSignature):
        verify(secret, body, old)


def test_secrets_are_whsec_base64_and_unique() -> None:
    secrets = {new_webhook_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 24


def test_delivery_schedule_grows_with_jitter_and_ends() -> None:
    schedule = [0, 5, 300, 1800]
    rng = random.Random(7)
    assert next_delivery_delay(schedule, 1, rng=rng) == pytest.approx(5, rel=0.1)
    assert next_delivery_delay(schedule, 2, rng=rng) == pytest.approx(300, rel=0.1)
    assert next_delivery_delay(schedule, 3, rng=rng) == pytest.approx(1800, rel=0.1)
    assert next_delivery_delay(schedule, 4, rng=rng) is None


def test_delivery_retry_after_is_a_floor() -> None:
    assert next_delivery_delay([0, 5, 300], 1, retry_after_s=60, rng=random.Random(1)) == 60
    delay = next_delivery_delay([0, 5, 300], 2, retry_after_s=1, rng=random.Random(1))
    assert delay is not None and delay >= 270

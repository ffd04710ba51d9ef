"""The Sentry scrubber: what an event keeps (where it broke) and what it loses (what a tenant sent,
what we hold secret)."""

from __future__ import annotations

import json
from typing import Any

from llmq.observability.sentry import scrub_event, scrub_text

KEY = "llmq_sk_AbCdEf0123456789_-xyz"
SECRET = "whsec_c2VjcmV0c2VjcmV0c2VjcmV0+/=="
PROMPT = "tell me my diagnosis"
SQL_ERROR = (
    "(psycopg.errors.InternalError_) injected fault\n"
    "[SQL: INSERT INTO jobs (id, messages) VALUES (%(id)s, %(messages)s)]\n"
    f"[parameters: {{'messages': '[{{\"content\": \"{PROMPT}\"}}]'}}]\n"
    "(Background on this error at: https://sqlalche.me/e/20/2j85)"
)


def _event() -> dict[str, Any]:
    return {
        "request": {
            "method": "POST",
            "url": f"http://api/v1/jobs?prompt={PROMPT}",
            "query_string": f"prompt={PROMPT}",
            "data": {"prompt": PROMPT},
            "cookies": {"llmq_ui": "abc"},
            "env": {"REMOTE_ADDR": "10.0.0.1"},
            "headers": {
                "Authorization": f"Bearer {KEY}",
                "X-Api-Key": KEY,
                "User-Agent": "curl",
                "Cookie": "a",
            },
        },
        "user": {"ip_address": "10.0.0.1"},
        "exception": {
            "values": [
                {
                    "type": "InternalError",
                    "value": SQL_ERROR,
                    "stacktrace": {"frames": [{"function": "submit", "vars": {"body": PROMPT}}]},
                }
            ]
        },
        "breadcrumbs": {"values": [{"message": f"sent with {SECRET}", "data": {"body": PROMPT}}]},
        "extra": {"note": f"key {KEY}"},
        "tags": {"job_id": "job_abc"},
    }


def test_the_event_keeps_where_it_broke() -> None:
    event = scrub_event(_event())
    assert event["request"] == {
        "method": "POST",
        "url": "http://api/v1/jobs",
        "headers": {"User-Agent": "curl"},
    }
    value = event["exception"]["values"][0]["value"]
    assert value.startswith("(psycopg.errors.InternalError_) injected fault\n[SQL: INSERT INTO jobs")
    assert "[parameters: [Filtered]]" in value and "(Background on this error" in value
    assert event["exception"]["values"][0]["stacktrace"]["frames"] == [{"function": "submit"}]
    assert event["tags"] == {"job_id": "job_abc"}


def test_nothing_a_tenant_sent_and_no_secret_is_left() -> None:
    text = json.dumps(scrub_event(_event()))
    for needle in (PROMPT, KEY, SECRET, "10.0.0.1", "llmq_ui"):
        assert needle not in text


def test_secrets_are_filtered_in_free_text() -> None:
    assert scrub_text(f"auth: Bearer {KEY} and {SECRET}.") == "auth: [Filtered] and [Filtered]."
    assert scrub_text("nothing to hide") == "nothing to hide"

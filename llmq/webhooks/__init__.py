"""Webhooks, the way out of llmq: signing, the SSRF guard, one send, the retry schedule.

- ``signing``  — Standard Webhooks ``sign`` / ``verify`` (re-exported here: ``from llmq.webhooks
  import verify`` is what a receiver writes);
- ``ssrf``     — the guard that refuses private, loopback and other non-global destinations;
- ``sender``   — one signed POST of one event, classified (aiohttp);
- ``schedule`` — the delay before the next attempt, and the ``Retry-After`` reader.

The package sits below the workers and the tasks (``.importlinter``): it imports only
``llmq.models`` and ``llmq.config``. Importing it loads the signing module only.
"""

from llmq.webhooks.signing import InvalidSignature, sign, verify

__all__ = ["InvalidSignature", "sign", "verify"]

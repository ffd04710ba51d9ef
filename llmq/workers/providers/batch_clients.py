"""The providers' batch APIs through the official SDKs: OpenAI's ``files.create`` /
``batches.create|retrieve|list`` / ``files.content`` and Anthropic's
``messages.batches.create|retrieve|results``.

Each step is its own call so that the caller (``tasks/provider_batches.py``) can record what it
got before the next step relies on it: the uploaded file's id before the batch is created, the
batch's id before it is polled. An OpenAI batch carries llmq's batch id in its ``metadata``, so a
batch created by a sender that died before recording its id is found again (:meth:`find`);
Anthropic's batches carry no metadata, and have no such lookup.

The clients are the providers' own SDK clients (``SdkProvider.sdk``): same keys, base URLs and
connection pools as the normal calls, retries off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import anthropic
import openai

from llmq.workers.providers.batch_formats import (
    OPENAI_ENDPOINT,
    BatchLine,
    LineResult,
    anthropic_requests,
    openai_jsonl,
    parse_anthropic_result,
    parse_openai_results,
)

__all__ = ["AnthropicBatchApi", "BatchApi", "BatchRefused", "OpenAIBatchApi", "RemoteBatch"]


class BatchRefused(Exception):
    """The provider answered a batch step with an error status: that step did not happen (no
    file, no batch). Any other exception leaves it unknown whether it did."""


METADATA_KEY = "llmq_batch_id"
# OpenAI batch statuses that end a batch; its files then hold every line's outcome.
_OPENAI_ENDED = {"completed", "failed", "expired", "cancelled"}


@dataclass(frozen=True)
class RemoteBatch:
    remote_id: str
    status: str  # the provider's own word (OpenAI status, Anthropic processing_status)
    ended: bool
    expires_at: datetime | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


class BatchApi(Protocol):
    """``upload`` gives the input file's id (None: the API takes the requests inline)."""

    async def upload(self, lines: list[BatchLine]) -> str | None: ...

    async def create(
        self, lines: list[BatchLine], input_file_id: str | None, batch_id: str
    ) -> RemoteBatch: ...

    async def find(self, batch_id: str) -> RemoteBatch | None: ...

    async def retrieve(self, remote_id: str) -> RemoteBatch: ...

    async def results(self, remote: RemoteBatch) -> list[LineResult]: ...

    can_find: bool  # whether find() can see a batch whose id was never recorded


def _from_unix(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


class OpenAIBatchApi:
    can_find = True

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client

    async def upload(self, lines: list[BatchLine]) -> str | None:
        try:
            uploaded = await self._client.files.create(
                file=("llmq-batch.jsonl", openai_jsonl(lines), "application/jsonl"), purpose="batch"
            )
        except openai.APIStatusError as exc:
            raise BatchRefused(f"openai files.create: HTTP {exc.status_code}: {exc.message}") from exc
        return uploaded.id

    async def create(self, lines: list[BatchLine], input_file_id: str | None, batch_id: str) -> RemoteBatch:
        assert input_file_id is not None
        try:
            batch = await self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=OPENAI_ENDPOINT,
                completion_window="24h",
                metadata={METADATA_KEY: batch_id},
            )
        except openai.APIStatusError as exc:
            raise BatchRefused(f"openai batches.create: HTTP {exc.status_code}: {exc.message}") from exc
        return self._remote(batch)

    async def find(self, batch_id: str) -> RemoteBatch | None:
        """The batch created for ``batch_id`` among the account's latest 100, if any."""
        page = await self._client.batches.list(limit=100)
        for batch in page.data:
            if (batch.metadata or {}).get(METADATA_KEY) == batch_id:
                return self._remote(batch)
        return None

    async def retrieve(self, remote_id: str) -> RemoteBatch:
        return self._remote(await self._client.batches.retrieve(remote_id))

    async def results(self, remote: RemoteBatch) -> list[LineResult]:
        out: list[LineResult] = []
        for file_id in (remote.output_file_id, remote.error_file_id):
            if file_id:
                content = await self._client.files.content(file_id)
                out += parse_openai_results(content.text)
        return out

    @staticmethod
    def _remote(batch: Any) -> RemoteBatch:
        return RemoteBatch(
            remote_id=batch.id,
            status=batch.status,
            ended=batch.status in _OPENAI_ENDED,
            expires_at=_from_unix(batch.expires_at),
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
        )


class AnthropicBatchApi:
    can_find = False

    def __init__(self, client: anthropic.AsyncAnthropic, default_max_tokens: int) -> None:
        self._client = client
        self._default_max_tokens = default_max_tokens

    async def upload(self, lines: list[BatchLine]) -> str | None:
        return None  # the requests go inline with the create

    async def create(self, lines: list[BatchLine], input_file_id: str | None, batch_id: str) -> RemoteBatch:
        requests: Any = anthropic_requests(lines, self._default_max_tokens)
        try:
            return self._remote(await self._client.messages.batches.create(requests=requests))
        except anthropic.APIStatusError as exc:
            raise BatchRefused(
                f"anthropic messages.batches.create: HTTP {exc.status_code}: {exc.message}"
            ) from exc

    async def find(self, batch_id: str) -> RemoteBatch | None:
        return None

    async def retrieve(self, remote_id: str) -> RemoteBatch:
        return self._remote(await self._client.messages.batches.retrieve(remote_id))

    async def results(self, remote: RemoteBatch) -> list[LineResult]:
        decoder = await self._client.messages.batches.results(remote.remote_id)
        return [parse_anthropic_result(item.model_dump(mode="json")) async for item in decoder]

    @staticmethod
    def _remote(batch: Any) -> RemoteBatch:
        return RemoteBatch(
            remote_id=batch.id,
            status=batch.processing_status,
            ended=batch.processing_status == "ended",
            expires_at=batch.expires_at,
        )

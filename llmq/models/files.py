"""Files of the Batch API: their bytes on disk under ``LLMQ_FILES_DIR``, their rows in ``files``.

A file is written under a temporary name and renamed into place once complete, so a reader never
sees half a file and a crash leaves only a ``.part`` to clean up. Uploads arrive through
:class:`CountingWriter`, which counts bytes and lines as they stream by and refuses the write that
would pass a limit: an upload is never held in memory whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmq.models.base import new_id
from llmq.models.batch_tables import Batch, StoredFile


class FileNotFound(LookupError):
    """No such file for this tenant."""


class UploadTooLarge(Exception):
    """The upload passed the byte or the line limit. (Not a ValueError: werkzeug's form parser
    swallows those.)"""


def new_file_id() -> str:
    return new_id("file-")


@dataclass(frozen=True)
class FileStore:
    """The directory the files live in (created on first use)."""

    root: Path

    def path(self, storage_name: str) -> Path:
        return self.root / storage_name

    def part_path(self, storage_name: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f"{storage_name}.part"

    def publish(self, storage_name: str) -> None:
        """The ``.part`` is complete: move it into place."""
        os.replace(self.part_path(storage_name), self.path(storage_name))

    def discard(self, storage_name: str) -> None:
        for path in (self.root / f"{storage_name}.part", self.path(storage_name)):
            path.unlink(missing_ok=True)


class CountingWriter:
    """A binary file that counts what is written to it and raises :class:`UploadTooLarge` before
    writing past ``max_bytes`` or ``max_lines``. A last line without a newline counts too."""

    def __init__(self, target: IO[bytes], *, max_bytes: int, max_lines: int) -> None:
        self.target = target
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        self.bytes = 0
        self.newlines = 0
        self._last = b"\n"

    @property
    def lines(self) -> int:
        return self.newlines + (0 if self._last == b"\n" else 1)

    def write(self, data: bytes) -> int:
        if not data:
            return 0
        self.bytes += len(data)
        self.newlines += data.count(b"\n")
        self._last = data[-1:]
        if self.bytes > self.max_bytes:
            raise UploadTooLarge(f"the file is larger than {self.max_bytes} bytes")
        if self.lines > self.max_lines:
            raise UploadTooLarge(f"the file has more than {self.max_lines} lines")
        return self.target.write(data)

    # What werkzeug's form parser may call on the stream it writes a file part to.
    def seek(self, offset: int, whence: int = 0) -> int:
        return self.target.seek(offset, whence)

    def tell(self) -> int:
        return self.target.tell()

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        self.target.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


def add_file(
    session: Session,
    *,
    file_id: str,
    tenant_id: str,
    purpose: str,
    filename: str,
    size: int,
    lines: int,
    now: datetime,
) -> StoredFile:
    """The row of a file already published under its id."""
    row = StoredFile(
        id=file_id,
        tenant_id=tenant_id,
        purpose=purpose,
        filename=filename[:512],
        bytes=size,
        lines=lines,
        storage_name=file_id,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get_file(session: Session, tenant_id: str, file_id: str) -> StoredFile:
    row = session.get(StoredFile, file_id)
    if row is None or row.tenant_id != tenant_id:
        raise FileNotFound(file_id)
    return row


def list_files(
    session: Session, *, tenant_id: str, purpose: str | None, after: str | None, limit: int
) -> tuple[list[StoredFile], bool]:
    """A page of the tenant's files, newest first, after the file ``after`` (its id)."""
    stmt = select(StoredFile).where(StoredFile.tenant_id == tenant_id)
    if purpose:
        stmt = stmt.where(StoredFile.purpose == purpose)
    if after:
        last = get_file(session, tenant_id, after)
        stmt = stmt.where(
            (StoredFile.created_at < last.created_at)
            | ((StoredFile.created_at == last.created_at) & (StoredFile.id < last.id))
        )
    rows = list(
        session.scalars(stmt.order_by(StoredFile.created_at.desc(), StoredFile.id.desc()).limit(limit + 1))
    )
    return rows[:limit], len(rows) > limit


class FileInUse(Exception):
    """The file is the input of a batch that has not ended."""


def delete_file(session: Session, tenant_id: str, file_id: str) -> StoredFile:
    """Forget the file (the caller removes its bytes after the commit). The input of a batch
    still running is kept: its lines are read as the batch goes."""
    row = get_file(session, tenant_id, file_id)
    open_batch = session.scalar(
        select(Batch.id).where(Batch.input_file_id == file_id, Batch.status.in_(_OPEN_BATCH_STATES)).limit(1)
    )
    if open_batch is not None:
        raise FileInUse(open_batch)
    session.delete(row)
    return row


_OPEN_BATCH_STATES = ("validating", "in_progress", "finalizing", "cancelling")


def file_public(row: StoredFile) -> dict[str, Any]:
    """OpenAI's ``file`` object."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }

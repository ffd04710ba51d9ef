"""``/v1/files``: upload a batch's JSONL input, read any file back (``/content``), list, delete.

An upload is streamed: werkzeug's multipart parser hands the file part's bytes, a buffer at a
time, to a :class:`CountingWriter` over a ``.part`` file under ``LLMQ_FILES_DIR``, which refuses
the buffer that would pass ``LLMQ_BATCH_MAX_FILE_BYTES`` or ``LLMQ_BATCH_MAX_LINES``. Only the
small text fields (``purpose``) are held in memory.
"""

from __future__ import annotations

from typing import IO

import structlog
from flask import Blueprint, Response, g, jsonify, request, send_file
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from llmq.api.auth import require_tenant
from llmq.api.batch_schemas import FileListQuery
from llmq.api.context import app_db, app_settings
from llmq.api.errors import ApiError
from llmq.api.openai_errors import use_openai_errors
from llmq.models.base import utcnow
from llmq.models.batch_tables import StoredFile
from llmq.models.files import (
    CountingWriter,
    FileInUse,
    FileNotFound,
    FileStore,
    UploadTooLarge,
    add_file,
    delete_file,
    file_public,
    get_file,
    list_files,
    new_file_id,
)

logger = structlog.get_logger(__name__)
bp = Blueprint("files", __name__)
use_openai_errors(bp)

MULTIPART_SLACK = 1024 * 1024  # the form's boundaries, headers and text fields around the file
# The most a text field of the form may hold; also bounds the decoder's buffer, which takes the
# parser's 64 KiB reads: it must be well above that.
FIELD_MEMORY = 1024 * 1024
UPLOAD_PURPOSES = {"batch"}


def _store() -> FileStore:
    return FileStore(app_settings().files_root)


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, type="invalid_request_error")


def _drain(stream: IO[bytes]) -> None:
    """Read what is left of a refused upload, so the client, still sending, reads the answer."""
    while stream.read(1 << 20):
        pass


@bp.post("/v1/files")
@require_tenant
def upload() -> Response:
    settings = app_settings()
    if request.mimetype != "multipart/form-data":
        raise _bad("send the file as multipart/form-data, with the fields 'file' and 'purpose'")
    request.max_content_length = settings.batch_max_file_bytes + MULTIPART_SLACK
    store, file_id = _store(), new_file_id()
    writers: list[CountingWriter] = []

    def stream_factory(
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        if writers:
            raise UploadTooLarge("send one file per upload")
        writer = CountingWriter(
            open(store.part_path(file_id), "w+b"),
            max_bytes=settings.batch_max_file_bytes,
            max_lines=settings.batch_max_lines,
        )
        writers.append(writer)
        return writer  # type: ignore[return-value]  # a binary file as far as werkzeug goes

    parser = FormDataParser(
        stream_factory=stream_factory,
        max_form_memory_size=FIELD_MEMORY,
        max_content_length=request.max_content_length,
        max_form_parts=16,
    )
    try:
        stream = request.stream
        _, form, files = parser.parse(
            stream, request.mimetype, request.content_length, request.mimetype_params
        )
    except UploadTooLarge as exc:
        _close(writers)
        store.discard(file_id)
        _drain(stream)
        raise _bad(
            f"{exc}: a batch's input may have at most {settings.batch_max_lines} lines and "
            f"{settings.batch_max_file_bytes} bytes"
        ) from None
    except RequestEntityTooLarge:
        _close(writers)
        store.discard(file_id)
        raise _bad(f"the upload is larger than {settings.batch_max_file_bytes} bytes") from None
    except BaseException:
        _close(writers)
        store.discard(file_id)
        raise
    _close(writers)
    upload_part = files.get("file")
    purpose = form.get("purpose")
    if upload_part is None or not writers:
        store.discard(file_id)
        raise _bad("the form has no 'file' field", "file")
    if purpose not in UPLOAD_PURPOSES:
        store.discard(file_id)
        raise _bad(f"purpose must be one of {sorted(UPLOAD_PURPOSES)}, got {purpose!r}", "purpose")
    writer = writers[0]
    if writer.lines == 0:
        store.discard(file_id)
        raise _bad("the file is empty", "file")
    store.publish(file_id)
    try:
        with app_db().transaction() as session:
            row = add_file(
                session,
                file_id=file_id,
                tenant_id=g.tenant.id,
                purpose=purpose,
                filename=upload_part.filename or "upload.jsonl",
                size=writer.bytes,
                lines=writer.lines,
                now=utcnow(),
            )
            body = file_public(row)
    except BaseException:
        store.discard(file_id)
        raise
    logger.info("file_uploaded", file_id=file_id, bytes=writer.bytes, lines=writer.lines)
    return jsonify(body)


def _close(writers: list[CountingWriter]) -> None:
    for writer in writers:
        writer.close()


def _file(file_id: str) -> StoredFile:
    with app_db().session() as session:
        try:
            return get_file(session, g.tenant.id, file_id)
        except FileNotFound:
            raise ApiError(404, f"no file {file_id!r}") from None


@bp.get("/v1/files/<file_id>")
@require_tenant
def retrieve(file_id: str) -> Response:
    return jsonify(file_public(_file(file_id)))


@bp.get("/v1/files/<file_id>/content")
@require_tenant
def content(file_id: str) -> Response:
    """The file's bytes, streamed from disk."""
    row = _file(file_id)
    path = _store().path(row.storage_name)
    if not path.exists():
        raise ApiError(404, f"the content of file {file_id!r} is gone")
    return send_file(path, mimetype="application/jsonl", download_name=row.filename, conditional=False)


@bp.delete("/v1/files/<file_id>")
@require_tenant
def delete(file_id: str) -> Response:
    try:
        with app_db().transaction() as session:
            row = delete_file(session, g.tenant.id, file_id)
            storage_name = row.storage_name
    except FileNotFound:
        raise ApiError(404, f"no file {file_id!r}") from None
    except FileInUse as exc:
        raise ApiError(
            409, f"file {file_id!r} is the input of batch {exc} (still running)", type="conflict"
        ) from None
    _store().discard(storage_name)
    return jsonify({"id": file_id, "object": "file", "deleted": True})


@bp.get("/v1/files")
@require_tenant
def list_() -> Response:
    query = FileListQuery.model_validate(request.args.to_dict())
    with app_db().session() as session:
        try:
            rows, has_more = list_files(
                session, tenant_id=g.tenant.id, purpose=query.purpose, after=query.after, limit=query.limit
            )
        except FileNotFound:
            raise ApiError(404, f"no file {query.after!r}") from None
        data = [file_public(row) for row in rows]
    return jsonify(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )

"""A local Sentry ingest for tests: a loopback HTTP server that takes the SDK's envelopes
(``POST /api/<project>/envelope/``), undoes their ``Content-Encoding`` and keeps every item.

Envelope format (develop.sentry.dev/sdk/envelopes): a JSON header line, then items, each a JSON
item-header line followed by a payload of ``length`` bytes (or up to the next newline when the
header gives no length)."""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def decode_body(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # only when the SDK found brotli

        return bytes(brotli.decompress(body))
    raise ValueError(f"unknown Content-Encoding {encoding!r}")


def parse_envelope(raw: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    header_line, _, rest = raw.partition(b"\n")
    header = json.loads(header_line)
    items: list[tuple[dict[str, Any], bytes]] = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item_header = json.loads(item_line)
        length = item_header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            rest = rest.removeprefix(b"\n")
        items.append((item_header, payload))
    return header, items


@dataclass
class SentryIngest:
    """Every envelope received, raw (decompressed) and parsed; ``events()`` are the error events."""

    port: int
    project: str = "42"
    raw: list[bytes] = field(default_factory=list)
    items: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/{self.project}"

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for h, p in self.items if h.get("type") == "event"]

    def all_bytes(self) -> bytes:
        with self._lock:
            return b"\n".join(self.raw)

    def start(self) -> SentryIngest:
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                raw = decode_body(body, self.headers.get("content-encoding", ""))
                _, items = parse_envelope(raw)
                with ingest._lock:
                    ingest.paths.append(self.path)
                    ingest.raw.append(raw)
                    ingest.items.extend(items)
                answer = b'{"id":"0"}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

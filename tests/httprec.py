"""A real HTTP server on loopback that records the requests it gets (the --ping tests: GETs, and
POSTs with their bodies), and can hang instead of answering."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    path: str
    query: dict[str, list[str]]
    at: float  # time.time() when it arrived
    method: str = "GET"
    body: bytes = b""
    content_type: str | None = None

    @property
    def rid(self) -> str | None:
        return self.query.get("rid", [None])[0]


class Recorder:
    """``Recorder(hang=True)`` accepts each request and never answers it until ``close()``;
    ``statuses`` gives the first requests' status codes (then 200)."""

    def __init__(self, hang: bool = False, statuses: list[int] | None = None) -> None:
        self.requests: list[Request] = []
        self.hang = hang
        self.statuses = list(statuses or [])  # the status of each request in turn, then 200
        self._release = threading.Event()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                rec.requests.append(
                    Request(
                        parts.path,
                        parse_qs(parts.query),
                        time.time(),
                        self.command,
                        data,
                        self.headers.get("Content-Type"),
                    )
                )
                if rec.hang:
                    rec._release.wait(60)
                    return
                body = b"OK"
                self.send_response(rec.statuses.pop(0) if rec.statuses else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, format: str, *args: object) -> None:
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/ping") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

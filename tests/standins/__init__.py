"""Local HTTP stand-ins for the services the intern talks to (arXiv, an OpenAI-compatible LLM).

Each one is a real HTTP server on 127.0.0.1 and an ephemeral port, run in a daemon thread, so
the code under test goes through its real client libraries (arxiv/requests, litellm/openai).
They record every request they receive, can inject faults (status codes, delays, hangs), and
work as context managers:

    with OpenAIStandIn(['{"a": 1}', 429, '{"a": 2}']) as llm, ArxivStandIn(FEED) as arxiv_srv:
        ...  # llm.base_url + "/v1", arxiv_srv.base_url; then inspect llm.requests
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    @property
    def params(self) -> dict[str, str]:
        """Query parameters with one value each (the last one)."""
        return {k: v[-1] for k, v in self.query.items()}

    @property
    def json(self):
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait this long before answering (stop() cuts the wait short)
    hang: bool = False  # never answer; the connection is closed when the server stops


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):  # clients that time out close on us
        pass


class StandInServer:
    """Base class: subclasses implement `respond(request) -> Reply`."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- to override
    def respond(self, request: RecordedRequest) -> Reply:
        raise NotImplementedError

    # -- lifecycle
    def start(self) -> "StandInServer":
        if self._httpd is not None:
            return self
        owner = self
        self._stopping.clear()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = RecordedRequest(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                with owner._lock:
                    owner.requests.append(req)
                try:
                    reply = owner.respond(req)
                except Exception as exc:  # a bug in a scripted responder: answer 500, visibly
                    reply = Reply(500, json.dumps({"error": {"message": f"stand-in: {exc!r}"}}).encode())
                if reply.hang:
                    owner._stopping.wait()
                    return
                if reply.delay_s > 0 and owner._stopping.wait(reply.delay_s):
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up (timeout) and closed the socket
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"{type(self).__name__}:{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases delayed and hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("stand-in server not started")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__ = ["RecordedRequest", "Reply", "StandInServer", "closed_port"]

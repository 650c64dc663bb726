"""A stand-in for the arXiv query API (GET /api/query) that serves a fixture Atom feed.

    with ArxivStandIn(FIXTURES / "post_training.xml") as srv:
        search_papers("all:GRPO", base_url=srv.base_url)
        srv.requests[-1].params  # {'search_query': ..., 'start': '0', 'max_results': ..., ...}

Faults: `status=503` answers that status with an HTML body (as arXiv's front end does),
`delay_s=2` answers late, `hang=True` never answers, `body=b"<html>..."` serves any 200 body.
All attributes may be changed between requests (e.g. set `status = 503` after a first search).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import RecordedRequest, Reply, StandInServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "arxiv"
ATOM = "application/atom+xml; charset=utf-8"


class ArxivStandIn(StandInServer):
    def __init__(
        self,
        feed: str | Path | bytes | None = None,
        *,
        status: int = 200,
        delay_s: float = 0.0,
        hang: bool = False,
        body: bytes | None = None,
        responder: Callable[[RecordedRequest], Reply] | None = None,
    ):
        """feed: a fixture path (absolute, or a name under tests/fixtures/arxiv/) or the XML
        bytes; responder, when given, answers every request instead."""
        super().__init__()
        self.feed = feed
        self.status = status
        self.delay_s = delay_s
        self.hang = hang
        self.body = body
        self.responder = responder

    def _feed_bytes(self) -> bytes:
        if isinstance(self.feed, bytes):
            return self.feed
        if self.feed is None:
            return (FIXTURES / "empty.xml").read_bytes()
        path = Path(self.feed)
        return (path if path.is_absolute() else FIXTURES / path).read_bytes()

    @property
    def queries(self) -> list[dict[str, str]]:
        """The query parameters of every /api/query request, in order."""
        return [r.params for r in self.requests if r.path == "/api/query"]

    def respond(self, request: RecordedRequest) -> Reply:
        if self.responder is not None:
            return self.responder(request)
        if self.hang:
            return Reply(hang=True)
        if request.path != "/api/query" or request.method != "GET":
            return Reply(404, b"<html><body>Not Found</body></html>", "text/html", delay_s=self.delay_s)
        if self.status != 200:
            page = f"<html><body><h1>{self.status}</h1>stand-in arXiv error</body></html>".encode()
            return Reply(self.status, page, "text/html", delay_s=self.delay_s)
        if self.body is not None:
            return Reply(200, self.body, "text/html; charset=utf-8", delay_s=self.delay_s)
        return Reply(200, self._feed_bytes(), ATOM, delay_s=self.delay_s)

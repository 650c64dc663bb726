"""A scripted OpenAI-compatible chat server (POST /v1/chat/completions) for LLM tests.

    with OpenAIStandIn(['{"technique": "GRPO", ...}', 500, Answer(content="{...}", delay_s=1)]) as srv:
        llm = LLMClient(model="openai/stand-in", api_base=srv.api_base)
        ...
        srv.chat_requests[0]["messages"]  # what the client sent

Scripted answers are served in order, one per chat request. Each is one of:
- str: the assistant message content (status 200, finish_reason "stop");
- int: an HTTP status code (e.g. 429, 500) with an OpenAI-style error body;
- dict: a complete JSON response body, served as is;
- Answer: content or status with a delay, headers, finish_reason or tool_calls.
`answers` may instead be a callable taking the RecordedRequest and returning one of these.
When the script runs out the server answers 500 ("no scripted answer left"), or repeats the
last answer with `when_exhausted="repeat_last"`. `delay_s` delays every answer.
Requests with "stream": true get server-sent events ending with a finish_reason chunk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from . import RecordedRequest, Reply, StandInServer


@dataclass
class Answer:
    content: str | None = None
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] | None = None
    finish_reason: str = "stop"
    tool_calls: list[dict] | None = None


Scripted = Union[str, int, dict, Answer]

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class OpenAIStandIn(StandInServer):
    def __init__(
        self,
        answers: Sequence[Scripted] | Callable[[RecordedRequest], Scripted] = (),
        *,
        delay_s: float = 0.0,
        model: str = "stand-in",
        when_exhausted: Literal["error", "repeat_last"] = "error",
    ):
        super().__init__()
        self._script: list[Scripted] | None = None if callable(answers) else list(answers)
        self._responder = answers if callable(answers) else None
        self._last: Scripted | None = None
        self.delay_s = delay_s
        self.model = model
        self.when_exhausted = when_exhausted

    @property
    def api_base(self) -> str:
        """What to give litellm/openai as api_base."""
        return self.base_url + "/v1"

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of the chat completion requests received, in order."""
        return [r.json for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def remaining(self) -> int:
        return len(self._script) if self._script is not None else 0

    def add(self, *answers: Scripted) -> None:
        """Append answers to the script."""
        with self._lock:
            if self._script is None:
                raise TypeError("this stand-in answers through a callable")
            self._script.extend(answers)

    def _next(self, request: RecordedRequest) -> Scripted:
        if self._responder is not None:
            return self._responder(request)
        with self._lock:
            if self._script:
                self._last = self._script.pop(0)
                return self._last
            if self.when_exhausted == "repeat_last" and self._last is not None:
                return self._last
        return Answer(status=500, content="stand-in: no scripted answer left")

    def respond(self, request: RecordedRequest) -> Reply:
        path = request.path.rstrip("/")
        if request.method == "GET" and path.endswith("/models"):
            body = {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "stand-in"}]}
            return Reply(200, json.dumps(body).encode())
        if request.method != "POST" or not path.endswith("/chat/completions"):
            return _error(404, f"stand-in: no route {request.method} {request.path}")
        scripted = self._next(request)
        if isinstance(scripted, Answer):
            answer = scripted
        elif isinstance(scripted, bool) or not isinstance(scripted, (str, int, dict)):
            raise TypeError(f"unsupported scripted answer {scripted!r}")
        elif isinstance(scripted, int):
            answer = Answer(status=scripted)
        elif isinstance(scripted, dict):
            return Reply(200, json.dumps(scripted).encode(), delay_s=self.delay_s)
        else:
            answer = Answer(content=scripted)
        delay = self.delay_s + answer.delay_s
        if answer.status != 200:
            reply = _error(answer.status, answer.content or f"stand-in: scripted HTTP {answer.status}")
            reply.delay_s, reply.headers = delay, dict(answer.headers or {})
            return reply
        req = request.json or {}
        model = req.get("model") or self.model
        if req.get("stream"):
            body = _sse(answer, model)
            return Reply(200, body, "text/event-stream", dict(answer.headers or {}), delay_s=delay)
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in req.get("messages", [])) // 4 + 1
        completion_tokens = len(answer.content or "") // 4 + 1
        body = {
            "id": f"chatcmpl-standin-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return Reply(200, json.dumps(body).encode(), headers=dict(answer.headers or {}), delay_s=delay)


def _error(status: int, message: str) -> Reply:
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"), "param": None,
                      "code": str(status)}}
    return Reply(status, json.dumps(body).encode())


def _sse(answer: Answer, model: str) -> bytes:
    base = {"id": "chatcmpl-standin-stream", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": answer.content or ""},
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}]},
    ]
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


__all__ = ["Answer", "OpenAIStandIn"]

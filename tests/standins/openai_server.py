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

`server` picks whose structured-output rules it enforces, before any scripted answer is used:
- "openai" (default): hosted OpenAI. `response_format` json_schema with `strict: true` must
  follow the strict-mode rules (`openai_strict_errors`); a breaking schema gets HTTP 400 with
  OpenAI's body (code "invalid_json_schema"). json_object needs the word "json" in the
  messages; unknown keys inside response_format are refused ("unknown_parameter").
- "llama-cpp-python": `python -m llama_cpp.server` 0.3.x. json_schema gets HTTP 500 "Input
  should be 'text' or 'json_object'"; json_object with an optional `schema` is accepted; a
  schema with a string maxLength of 1000 or more kills the server (its grammar fails to parse:
  the connection drops and later connections are refused), as the real one did at 2000.
- "plain": a server without structured output: any response_format gets HTTP 400.
"""

from __future__ import annotations

import json
import re
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
        server: Literal["openai", "llama-cpp-python", "plain"] = "openai",
    ):
        super().__init__()
        self.server = server
        self.dead = False
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
        if self.dead:
            return Reply(hang=True)
        refusal = self._check_response_format(request.json or {})
        if refusal is not None:
            return refusal
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


    # -- structured-output rules of the imitated server
    def _check_response_format(self, req: dict) -> Reply | None:
        fmt = req.get("response_format")
        if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
            return None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if self.server == "plain":
            return _error(400, "response_format is not supported by this server", param="response_format", code=None)
        if self.server == "llama-cpp-python":
            if kind != "json_object":
                return _llama_literal_error(kind)
            if _longest_max_length(fmt.get("schema") or {}) >= 1000:
                self._die()
                return Reply(hang=True)
            return None
        # hosted OpenAI
        allowed = {"json_schema": {"type", "json_schema"}, "json_object": {"type"}}.get(kind)
        if allowed is None:
            return _error(400, f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
                          param="response_format.type", code="invalid_value")
        unknown = sorted(set(fmt) - allowed)
        if unknown:
            return _error(400, f"Unknown parameter: 'response_format.{unknown[0]}'.",
                          param=f"response_format.{unknown[0]}", code="unknown_parameter")
        if kind == "json_object":
            text = json.dumps(req.get("messages", [])).lower()
            if "json" not in text:
                return _error(400, "'messages' must contain the word 'json' in some form, to use 'response_format' of "
                                   "type 'json_object'.", param="messages", code=None)
            return None
        spec = fmt.get("json_schema") or {}
        name = spec.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name):
            return _error(400, "Missing required parameter: 'response_format.json_schema.name'." if name is None else
                          f"Invalid 'response_format.json_schema.name': string does not match pattern. Expected a "
                          f"string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                          param="response_format.json_schema.name",
                          code="missing_required_parameter" if name is None else "invalid_value")
        if spec.get("strict") is True:
            problems = openai_strict_errors(spec.get("schema"))
            if problems:
                return _error(400, f"Invalid schema for response_format '{name}': {problems[0]}",
                              param="response_format", code="invalid_json_schema")
        return None

    def _die(self) -> None:
        """Imitate the llama-cpp-python process dying: drop this connection, refuse later ones."""
        import threading

        self.dead = True

        def kill():
            self._stopping.set()
            if self._httpd is not None:
                self._httpd.shutdown()
                self._httpd.server_close()

        threading.Thread(target=kill, daemon=True).start()


# OpenAI strict mode (Structured Outputs "Supported schemas"): the keywords it accepts.
_OPENAI_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "$ref", "$defs",
    "definitions", "description", "title", "pattern", "format", "multipleOf", "maximum", "exclusiveMaximum",
    "minimum", "exclusiveMinimum", "minItems", "maxItems",
}
_OPENAI_FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
_OPENAI_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
_MAX_DEPTH, _MAX_PROPERTIES, _MAX_ENUM = 10, 5000, 1000


def openai_strict_errors(schema: Any) -> list[str]:
    """What OpenAI's strict mode says about `schema` (empty: accepted). Messages follow the API's
    wording, e.g. "In context=('properties', 'x'), 'default' is not permitted."."""
    if not isinstance(schema, dict):
        return ["schema must be a JSON Schema of 'type: \"object\"', got 'null'."]
    if schema.get("type") != "object" or "anyOf" in schema:
        got = "anyOf" if "anyOf" in schema else schema.get("type")
        return [f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{got}\"'."]
    errors: list[str] = []
    counts = {"properties": 0}
    defs = {**schema.get("$defs", {}), **schema.get("definitions", {})}

    def visit(node: Any, context: tuple, depth: int) -> None:
        where = f"In context={context!r}, "
        if not isinstance(node, dict):
            errors.append(where + "schema must be an object.")
            return
        if depth > _MAX_DEPTH:
            errors.append(where + f"schema has more than {_MAX_DEPTH} levels of nesting.")
            return
        for key in node:
            if key not in _OPENAI_KEYWORDS:
                errors.append(where + f"'{key}' is not permitted.")
        if "$ref" in node:
            ref = node["$ref"]
            if not (isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/"))
                    and ref.split("/")[-1] in defs):
                errors.append(where + f"reference '{ref}' can't be resolved.")
            return
        if "anyOf" in node:
            for i, member in enumerate(node["anyOf"]):
                visit(member, context + ("anyOf", str(i)), depth + 1)
            return
        kind = node.get("type")
        if kind is None and "enum" not in node and "const" not in node:
            errors.append(where + "schema must have a 'type' key.")
            return
        kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
        for k in kinds:
            if k not in _OPENAI_TYPES:
                errors.append(where + f"'{k}' is not a valid type.")
        if "format" in node and node["format"] not in _OPENAI_FORMATS:
            errors.append(where + f"'{node['format']}' is not a valid format.")
        if "enum" in node and len(node["enum"]) > _MAX_ENUM:
            errors.append(where + f"enum has more than {_MAX_ENUM} values.")
        if "object" in kinds:
            props = node.get("properties", {})
            counts["properties"] += len(props)
            if node.get("additionalProperties") is not False:
                errors.append(where + "'additionalProperties' is required to be supplied and to be false.")
            required = node.get("required")
            missing = [p for p in props if not isinstance(required, list) or p not in required]
            if missing:
                errors.append(where + "'required' is required to be supplied and to be an array including every "
                                      f"key in properties. Missing '{missing[0]}'.")
            extra = [r for r in (required or []) if r not in props]
            if extra:
                errors.append(where + f"'required' names '{extra[0]}', which is not in properties.")
            for name, sub in props.items():
                visit(sub, context + ("properties", name), depth + 1)
        if "array" in kinds:
            if "items" not in node:
                errors.append(where + "'items' must be supplied for an array.")
            else:
                visit(node["items"], context + ("items",), depth + 1)

    visit({k: v for k, v in schema.items() if k not in ("$defs", "definitions")}, (), 0)
    for name, sub in defs.items():
        visit(sub, ("$defs", name), 1)
    if counts["properties"] > _MAX_PROPERTIES:
        errors.append(f"schema has {counts['properties']} object properties; at most {_MAX_PROPERTIES} are permitted.")
    return errors


def _longest_max_length(node: Any) -> int:
    if isinstance(node, dict):
        own = node.get("maxLength", 0) if node.get("type") in ("string", None) else 0
        return max([own if isinstance(own, int) else 0] + [_longest_max_length(v) for v in node.values()])
    if isinstance(node, list):
        return max([0] + [_longest_max_length(v) for v in node])
    return 0


def _llama_literal_error(kind: Any) -> Reply:
    detail = {"type": "literal_error", "loc": ("body", "response_format", "type"),
              "msg": "Input should be 'text' or 'json_object'", "input": kind,
              "ctx": {"expected": "'text' or 'json_object'"}}
    message = (f"1 validation error:\n  {detail!r}\n\n  File \"llama_cpp/server/app.py\", line 376, in "
               "create_chat_completion\n    POST /v1/chat/completions")
    body = {"error": {"message": message, "type": "internal_server_error", "param": None, "code": None}}
    return Reply(500, json.dumps(body).encode())


def _error(status: int, message: str, *, param: str | None = None, code: str | None = "") -> Reply:
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"), "param": param,
                      "code": str(status) if code == "" else code}}
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


__all__ = ["Answer", "OpenAIStandIn", "openai_strict_errors"]

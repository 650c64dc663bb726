"""Structured LLM calls through litellm that work with real servers.

- Structured output in the mode the server supports, tried in this order and remembered per
  model and api_base for the process: "json_schema" (OpenAI strict json_schema: hosted APIs,
  vLLM, llama.cpp's llama-server, Ollama, LM Studio), "json_object" (json_object plus a
  `schema`: llama-cpp-python's server), "prompted" (no response_format: the prompt carries the
  schema, the answer is validated and repaired once). A server that refuses a mode (HTTP
  400/415/422, or a 5xx naming response_format/schema/grammar) is asked in the next one.
- The schema sent is `strict_schema(model)`: inside every provider's strict subset; pydantic
  applies defaults, lengths and bounds to the answer.
- Our own bounded retry with exponential backoff (honouring Retry-After) on timeouts,
  connection errors, 408/409/429/5xx; litellm's retry (which needs tenacity) is off. Errors
  quote the server's status and body, never the API key.
- A spend guard per goal: this client's spend plus `external_dollars` (spent by experiments'
  own LLM calls) against `budget_dollars`.
- Every HTTP exchange is recorded as an `LLMCall` for the audit trail (`take_calls`).

By concern: `mlintern.llm_http` reads the server's failures and redacts the key,
`mlintern.llm_parse` reads answers into models, `mlintern.llm_records` holds the audit records;
this module holds the client and the structured-output modes, and re-exports their public names.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from mlintern.llm_http import (
    _api_key,
    _cost,
    _describe,
    _refuses_mode,
    _retry_after,
    _retryable,
    _safe_url,
    redact,
    safe_url,
)
from mlintern.llm_parse import _errors, parse_json_model, salvage_json_model
from mlintern.llm_records import LLMCall, LLMTranscript
from mlintern.prompts import render
from mlintern.settings import get_settings
from mlintern.structured import strict_schema

__all__ = ["MODES", "LLMBudgetExceeded", "LLMCall", "LLMClient", "LLMError", "LLMOutputInvalid", "LLMTranscript",
           "Mode", "forget_modes", "parse_json_model", "redact", "run_log", "safe_url", "salvage_json_model",
           "working_mode"]

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)

Mode = Literal["json_schema", "json_object", "prompted"]
MODES: tuple[Mode, ...] = ("json_schema", "json_object", "prompted")

_mode_lock = threading.Lock()
_working_modes: dict[tuple[str, str], Mode] = {}


def run_log() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run (so the UI shows it), else this module's."""
    if "prefect" not in sys.modules:  # not imported: no run (and no need to import it)
        return log
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # MissingContextError outside a run
        return log


def working_mode(model: str, api_base: str | None) -> Mode | None:
    """The structured-output mode that last worked for this model and server in this process."""
    with _mode_lock:
        return _working_modes.get((model, api_base or ""))


def forget_modes() -> None:
    with _mode_lock:
        _working_modes.clear()


class LLMError(RuntimeError):
    """An LLM call failed; the message names the model, the server's answer and what to do."""


class LLMBudgetExceeded(LLMError):
    pass


class LLMOutputInvalid(LLMError):
    def __init__(self, message: str, raw_outputs: list[str]):
        super().__init__(message)
        self.raw_outputs = raw_outputs


class _ModeRefused(Exception):
    def __init__(self, status: int | None, detail: str):
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status


@dataclass
class LLMClient:
    model: str
    api_base: str | None = None
    budget_dollars: float = 1.0
    spent_dollars: float = 0.0
    external_dollars: float = 0.0  # the same goal's spend counted elsewhere (experiments' own calls)
    timeout_s: float = field(default_factory=lambda: get_settings().llm_timeout_s)
    retries: int = field(default_factory=lambda: get_settings().llm_retries)
    backoff_s: float = 1.0
    max_tokens: int = 2048
    temperature: float = 0.7
    calls: list[LLMCall] = field(default_factory=list)

    # ------------------------------------------------------------------ public
    def structured(self, messages: list[dict], schema: type[T], *, json_schema: dict | None = None,
                   purpose: str = "answer", salvage: bool = False) -> T:
        """Ask for a `schema` object; repair once on invalid output, then raise LLMOutputInvalid.

        The messages must show the model the schema (or an example): the prompted mode and the
        repair round rely on it. `json_schema`: the schema to send (default
        `strict_schema(schema)`); the answer is always validated by `schema` itself.
        `salvage`: if the repaired answer is still invalid only in fields that have defaults,
        reset those fields to their defaults (noted in the call's `notes`) instead of failing."""
        sent = json_schema or strict_schema(schema)
        raw = self._structured_call(messages, schema.__name__, sent, purpose)
        try:
            return parse_json_model(raw, schema)
        except (ValidationError, ValueError) as exc:
            first_error = _errors(exc)
            run_log().warning("LLM %s gave an invalid %s; asking for a repair: %s", self.model, schema.__name__, first_error)
        repair = messages + [
            {"role": "assistant", "content": raw},
            {"role": "user", "content": render("repair.md", errors=first_error, schema_name=schema.__name__)},
        ]
        raw2 = self._structured_call(repair, schema.__name__, sent, "repair")
        try:
            return parse_json_model(raw2, schema)
        except (ValidationError, ValueError) as exc:
            if salvage and isinstance(exc, ValidationError):
                try:
                    answer, notes = salvage_json_model(raw2, schema)
                except (ValidationError, ValueError):
                    pass
                else:
                    run_log().warning("LLM %s: repaired %s still invalid; reset to defaults: %s", self.model,
                                schema.__name__, "; ".join(notes))
                    self.calls[-1].notes.extend(notes)
                    return answer
            raise LLMOutputInvalid(
                f"LLM {self.model} returned an invalid {schema.__name__} twice (after one repair "
                f"round): {_errors(exc)}", [raw, raw2]
            ) from None

    def text(self, messages: list[dict]) -> str:
        return self._complete(messages, "prompted", None, "text")

    def take_calls(self) -> list[LLMCall]:
        """The calls recorded since the last take (and forget them)."""
        calls, self.calls = self.calls, []
        return calls

    @property
    def total_dollars(self) -> float:
        return self.spent_dollars + self.external_dollars

    # ------------------------------------------------------------------ modes
    def _structured_call(self, messages: list[dict], name: str, schema: dict, purpose: str) -> str:
        known = working_mode(self.model, self.api_base)
        order = [known] + [m for m in MODES if m != known] if known else list(MODES)
        refusals: list[str] = []
        for mode in order:
            try:
                content = self._complete(messages, mode, (name, schema), purpose)
            except _ModeRefused as exc:
                refusals.append(f"{mode}: {exc}")
                run_log().warning("LLM server for %s refused structured output mode %s (%s); trying the next mode",
                            self.model, mode, exc)
                continue
            if known != mode:
                with _mode_lock:
                    _working_modes[(self.model, self.api_base or "")] = mode
                run_log().info("LLM %s at %s: structured output mode %s%s", self.model, _safe_url(self.api_base) or "provider",
                         mode, f" (refused: {'; '.join(refusals)})" if refusals else "")
            return content
        raise LLMError(f"LLM server for {self.model} refused every structured output mode: {'; '.join(refusals)}")

    @staticmethod
    def _response_format(mode: str, spec: tuple[str, dict] | None) -> dict | None:
        if spec is None or mode == "prompted":
            return None
        name, schema = spec
        if mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}
        return {"type": "json_object", "schema": schema}

    # ------------------------------------------------------------------ one request, retried
    def _complete(self, messages: list[dict], mode: str, spec: tuple[str, dict] | None, purpose: str) -> str:
        import litellm

        litellm.suppress_debug_info = True
        if self.total_dollars >= self.budget_dollars:
            raise LLMBudgetExceeded(
                f"LLM budget spent: ${self.total_dollars:.4f} of ${self.budget_dollars:.2f} for this goal "
                f"({self.model}); raise goal.budget.llm_dollars to plan further"
            )
        kwargs: dict[str, Any] = dict(model=self.model, messages=messages, timeout=self.timeout_s,
                                      num_retries=0, max_retries=0,  # ours below; litellm's needs tenacity
                                      temperature=self.temperature, max_tokens=self.max_tokens)
        response_format = self._response_format(mode, spec)
        if response_format is not None:
            kwargs["response_format"] = response_format
        if self.api_base:
            kwargs["api_base"] = self.api_base
        key = _api_key()
        if key:
            kwargs["api_key"] = key
        elif self.api_base and self.model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            # A local OpenAI-compatible server needs no key, but the openai client refuses to
            # send a request without one ("Missing credentials").
            kwargs["api_key"] = "no-key"
        attempt = 0
        while True:
            start = time.monotonic()
            call = LLMCall(purpose=purpose, mode=mode, messages=[dict(m) for m in messages])
            try:
                response = litellm.completion(**kwargs)
            except Exception as exc:  # litellm maps provider errors to its own exception types
                status, detail = _describe(exc)
                call.error, call.seconds = f"HTTP {status}: {detail}" if status else detail, time.monotonic() - start
                self.calls.append(call)
                if response_format is not None and _refuses_mode(exc, status, detail):
                    raise _ModeRefused(status, detail) from None
                retryable = _retryable(exc, status)
                if not retryable or attempt >= self.retries:
                    tries = (f"after {attempt + 1} attempts" if attempt else
                             "at once (not retryable)" if not retryable else "(INTERN_LLM_RETRIES=0)")
                    raise LLMError(
                        f"LLM call to {self.model}{' at ' + _safe_url(self.api_base) if self.api_base else ''} failed "
                        f"{tries}: {call.error}. Check the model name, INTERN_LLM_API_BASE and the provider's API "
                        "key variable, or run with planner=search."
                    ) from None
                delay = _retry_after(exc) or self.backoff_s * 2 ** attempt
                delay = min(delay, 30.0)
                run_log().warning("LLM call to %s failed (%s); retry %d of %d in %.1f s", self.model, call.error[:200],
                            attempt + 1, self.retries, delay)
                time.sleep(delay)
                attempt += 1
                continue
            call.seconds = time.monotonic() - start
            usage = getattr(response, "usage", None)
            call.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
            call.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
            call.dollars = _cost(response)
            choice = response.choices[0]
            call.finish_reason = getattr(choice, "finish_reason", None)
            call.answer = choice.message.content
            self.spent_dollars += call.dollars
            self.calls.append(call)
            if not call.answer:
                raise LLMError(f"LLM {self.model} returned an empty answer (finish_reason {call.finish_reason})")
            return call.answer

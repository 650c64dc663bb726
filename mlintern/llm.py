"""Structured LLM calls through litellm, with a timeout, bounded retries, a spend guard,
and one repair round for output that fails validation."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from mlintern.prompts import render
from mlintern.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)


class LLMError(RuntimeError):
    """An LLM call failed; the message names the model and what to do."""


class LLMBudgetExceeded(LLMError):
    pass


class LLMOutputInvalid(LLMError):
    def __init__(self, message: str, raw_outputs: list[str]):
        super().__init__(message)
        self.raw_outputs = raw_outputs


@dataclass
class LLMClient:
    model: str
    api_base: str | None = None
    budget_dollars: float = 1.0
    spent_dollars: float = 0.0
    timeout_s: float = field(default_factory=lambda: get_settings().llm_timeout_s)
    retries: int = field(default_factory=lambda: get_settings().llm_retries)

    def _api_key(self) -> str | None:
        key = get_settings().llm_api_key
        return key.get_secret_value() if key else None

    def _call(self, messages: list[dict], response_format: type[BaseModel] | None) -> str:
        import litellm

        if self.spent_dollars >= self.budget_dollars:
            raise LLMBudgetExceeded(
                f"LLM budget spent: ${self.spent_dollars:.4f} of ${self.budget_dollars:.2f} for "
                f"{self.model}; raise goal.budget.llm_dollars to plan further"
            )
        kwargs: dict = dict(
            model=self.model,
            messages=messages,
            timeout=self.timeout_s,
            num_retries=self.retries,
            temperature=0.7,
        )
        if response_format is not None:
            kwargs["response_format"] = response_format
        if self.api_base:
            kwargs["api_base"] = self.api_base
        key = self._api_key()
        if key:
            kwargs["api_key"] = key
        try:
            response = litellm.completion(**kwargs)
        except Exception as exc:  # litellm maps provider errors to its own exception types
            raise LLMError(
                f"LLM call to {self.model} failed after {self.retries} retries "
                f"({type(exc).__name__}: {_redact(str(exc))[:300]}). Check the model name, "
                "INTERN_LLM_API_BASE and the provider's API key variable, or run with planner=search."
            ) from None
        self.spent_dollars += _cost(response)
        content = response.choices[0].message.content
        if not content:
            raise LLMError(f"LLM {self.model} returned an empty answer")
        return content

    def structured(self, messages: list[dict], schema: type[T]) -> T:
        """Ask for a `schema` object; repair once on invalid output, then raise."""
        raw = self._call(messages, schema)
        try:
            return parse_json_model(raw, schema)
        except (ValidationError, ValueError) as exc:
            first_error = _errors(exc)
            log.warning("LLM %s gave invalid %s; asking for a repair: %s", self.model, schema.__name__, first_error)
        repair = messages + [
            {"role": "assistant", "content": raw},
            {"role": "user", "content": render("repair.md", errors=first_error, schema_name=schema.__name__,
                                               schema=json.dumps(schema.model_json_schema()))},
        ]
        raw2 = self._call(repair, schema)
        try:
            return parse_json_model(raw2, schema)
        except (ValidationError, ValueError) as exc:
            raise LLMOutputInvalid(
                f"LLM {self.model} returned an invalid {schema.__name__} twice (after one repair "
                f"round): {_errors(exc)}", [raw, raw2]
            ) from None

    def text(self, messages: list[dict]) -> str:
        return self._call(messages, None)


def parse_json_model(raw: str, schema: type[T]) -> T:
    """Parse a model's answer, tolerating a ```json fence around the object."""
    text = raw.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[text.find("{"):]
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("answer holds no JSON object")
    return schema.model_validate_json(text[start : end + 1])


def _errors(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10])
    return str(exc)


def _cost(response) -> float:
    try:
        import litellm

        return float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:  # unknown model: no price registered
        return 0.0


def _redact(text: str) -> str:
    key = get_settings().llm_api_key
    if key and key.get_secret_value():
        text = text.replace(key.get_secret_value(), "**********")
    return text

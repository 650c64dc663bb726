"""Audit records of LLM exchanges: each call, and a plan's transcript with its tokens and dollars."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class LLMCall(BaseModel):
    """One request to the LLM server and what came back (audit trail)."""

    purpose: str
    mode: str
    messages: list[dict[str, Any]]
    answer: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dollars: float = 0.0
    seconds: float = 0.0
    notes: list[str] = Field(default_factory=list, description="Fields of this answer reset to defaults.")


class LLMTranscript(BaseModel):
    """How one plan was made: every LLM exchange, the mode, tokens, dollars and prompt hashes.
    Logged to the plan's MLflow run as llm_transcript.json; holds no API key."""

    planner: str
    model: str
    api_base: str | None = None
    source: Literal["llm", "llm-repaired", "llm-salvaged", "llm-revised", "llm-clamped", "rule-fix",
                    "search-fallback"] = "llm"
    mode: str | None = None
    calls: list[LLMCall] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    error: str | None = Field(None, description="Why the LLM did not make this plan (search-fallback).")
    prompt_sha256: dict[str, str] = Field(default_factory=dict, description="Template name -> sha256 of its source.")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dollars: float = 0.0
    goal_dollars_spent: float = Field(0.0, description="LLM dollars the goal had spent when this plan was made.")
    budget_left_dollars: float | None = Field(None, description="LLM dollars left to the goal (caps the experiment's own LLM calls).")

    def add(self, calls: list[LLMCall]) -> None:
        self.calls.extend(calls)
        self.prompt_tokens = sum(c.prompt_tokens for c in self.calls)
        self.completion_tokens = sum(c.completion_tokens for c in self.calls)
        self.dollars = sum(c.dollars for c in self.calls)

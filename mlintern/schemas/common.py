"""Pieces every schema module shares: the strict base model and the training method."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

BUILTIN_BASE_MODEL = "builtin:smollm2-135m-instruct"


class _Model(BaseModel):
    """Unknown keys are errors (a typo never passes silently) and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Method(str, Enum):
    """Training method: sft (supervised fine-tuning on prompt/completion rows), dpo (preference
    pairs: chosen vs rejected completion), grpo (online RL: sampled completions scored by the
    benchmark's own scorer)."""

    sft = "sft"
    dpo = "dpo"
    grpo = "grpo"


class EvalScore(_Model):
    """One evaluation of a model on one split."""

    task: str = Field(description="The benchmark task (and split) scored.")
    metric: str = Field(description="The metric's name, e.g. score, acc or exact_match.")
    value: float = Field(description="The metric's value, 0 to 1 (higher is better).")
    stderr: float | None = Field(None, description="Standard error of value.")
    n: int = Field(0, description="Items scored.")

"""Pieces every schema module shares: the strict base model and the training method."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

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

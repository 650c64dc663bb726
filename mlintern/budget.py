"""Turn an accelerator budget into experiment sizes.

A user gives the loop accelerator-seconds; this module says how many optimizer steps and fresh rows
an experiment of a given configuration can afford. It starts from a prior (model size, device, a
conservative utilisation) and replaces it with what the finished experiments measured:

    job seconds  =  fixed_s  +  steps * (step_overhead_s + example_s * examples_per_step)
                 +  dev checks * dev_items * eval_item_s

`fixed_s` is what a job pays outside its optimizer loop and dev checks (model load, trainer build,
save); `step_overhead_s` is the host-bound part of a step (launches, logging), `example_s` the part
that grows with the batch. Everything here is pure arithmetic on pydantic models, so planners,
the controller and the CLI's dry run all size plans the same way.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pydantic import BaseModel, Field

from mlintern.schemas import ExperimentPlan, ExperimentResult, Goal, Hyperparameters, Method

# Throughput priors, replaced by measurements after the first experiment. Conservative: a first
# trial that is too short wastes little; one that is too long can eat the budget.
GPU_EFFECTIVE_FLOPS = 0.10 * 700e12  # 10% MFU of an H100/H200-class bf16 peak
CPU_EFFECTIVE_FLOPS = 2.0e10
GPU_STEP_OVERHEAD_S = 0.15  # host-bound per-step cost: 0.165 s at batch 8 for SmolLM2-135M on H200
CPU_STEP_OVERHEAD_S = 0.5
# The first steps of a job pay one-off costs (kernel selection, allocator growth, data workers):
# 8 steps at batch 32 took 3.6 s on H200 where a step takes 0.18 s. The throughput fit uses the
# steps after these, and counts the rest as the job's fixed cost.
WARMUP_STEPS = 5
METHOD_COST = {Method.sft: 1.0, Method.dpo: 2.5, Method.grpo: 12.0}  # per example, relative to SFT


class Throughput(BaseModel):
    """Seconds a job costs, by configuration; `measured` = experiments it was fitted on (0 = prior)."""

    step_overhead_s: float = Field(ge=0)
    example_s: float = Field(gt=0)
    fixed_s: float = Field(ge=0)
    eval_item_s: float = Field(gt=0)
    tokens_per_example: float = Field(gt=0)
    measured: int = 0
    source: str = "prior"

    def examples_per_step(self, hp: Hyperparameters) -> float:
        """Examples an optimizer step sees: the micro-batch times accumulation, or for packed rows the
        examples that fit in them (the cost model is per example)."""
        rows = hp.per_device_batch_size * hp.gradient_accumulation_steps
        return rows * hp.max_length / self.tokens_per_example if hp.packing else float(rows)

    def step_seconds(self, examples_per_step: float, method: Method = Method.sft) -> float:
        return self.step_overhead_s + self.example_s * examples_per_step * METHOD_COST[Method(method)]

    def steps_in(self, train_seconds: float, examples_per_step: int, method: Method = Method.sft) -> int:
        return max(0, int(train_seconds / self.step_seconds(examples_per_step, method)))

    def train_seconds(self, steps: int, examples_per_step: int, method: Method = Method.sft) -> float:
        return steps * self.step_seconds(examples_per_step, method)

    def eval_seconds(self, items: int) -> float:
        return items * self.eval_item_s

    def tokens_per_second(self, examples_per_step: int) -> float:
        return examples_per_step * self.tokens_per_example / self.step_seconds(examples_per_step)

    def describe(self) -> str:
        eg = (8, 32)
        per = ", ".join(f"batch {b}: {self.step_seconds(b):.3f} s/step, {self.tokens_per_second(b):,.0f} tok/s"
                        for b in eg)
        return (f"{per}; fixed {self.fixed_s:.1f} s/job; dev scoring {self.eval_item_s * 1000:.1f} ms/item "
                f"({self.source}, {self.measured} experiments measured)")


def model_params(model_path: str) -> float:
    """Parameter count from a local folder's config.json (or its safetensors size); 135M if unknown."""
    folder = Path(model_path)
    cfg_file = folder / "config.json"
    if cfg_file.exists():
        cfg = json.loads(cfg_file.read_text())
        cfg = cfg.get("text_config", cfg)
        h, layers = cfg.get("hidden_size"), cfg.get("num_hidden_layers")
        vocab, inter = cfg.get("vocab_size", 32_000), cfg.get("intermediate_size")
        if h and layers:
            inter = inter or 4 * h
            heads, kv = cfg.get("num_attention_heads", 1), cfg.get("num_key_value_heads") or cfg.get("num_attention_heads", 1)
            head_dim = cfg.get("head_dim") or h // max(heads, 1)
            attn = h * head_dim * (heads + 2 * kv) + heads * head_dim * h
            mlp = 3 * h * inter
            embed = vocab * h * (1 if cfg.get("tie_word_embeddings", True) else 2)
            return float(layers * (attn + mlp) + embed)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
    return weights / 4 if weights else 135e6


def tokens_per_example(dev_file: str | None) -> float:
    """Prompt + answer + chat-template tokens of an evaluation item, from the dev file (4 chars a token)."""
    if not dev_file or not Path(dev_file).exists():
        return 200.0
    lengths = []
    with open(dev_file) as f:
        for i, line in enumerate(f):
            if i >= 200:
                break
            row = json.loads(line)
            lengths.append(len(str(row.get("question", ""))) + len(str(row.get("answer", ""))))
    return (statistics.mean(lengths) / 4 if lengths else 150.0) + 20.0


def prior_throughput(params: float, on_gpu: bool, tok_per_example: float) -> Throughput:
    flops = GPU_EFFECTIVE_FLOPS if on_gpu else CPU_EFFECTIVE_FLOPS
    return Throughput(
        step_overhead_s=GPU_STEP_OVERHEAD_S if on_gpu else CPU_STEP_OVERHEAD_S,
        example_s=6 * params * tok_per_example / flops,
        fixed_s=15.0 if on_gpu else 8.0,  # H200, a job's first step, load, data prep and save: 22 s measured
        eval_item_s=0.02 if on_gpu else 0.3,  # H200: 300 dev items in 3-8 s through lm-eval
        tokens_per_example=tok_per_example,
        source="prior " + ("gpu" if on_gpu else "cpu"),
    )


def fit_throughput(prior: Throughput, history: list[ExperimentResult]) -> Throughput:
    """Refit the cost model on finished experiments (succeeded or pruned, with timings)."""
    runs = [r for r in history if r.status != "failed" and r.steps > 0 and r.train_loop_seconds > 0]
    if not runs:
        return prior
    points = []  # (examples per step, steady seconds per step, weight, method cost)
    for r in runs:
        eps = prior.examples_per_step(r.plan.hyperparameters)
        points.append((eps, _steady_step_seconds(r), r.steps, METHOD_COST[r.plan.method]))
    a, b = _fit_line(prior, points)
    fixed = [max(0.0, r.job_seconds - r.steps * _steady_step_seconds(r) - r.eval_seconds)
             for r in runs if r.job_seconds > 0]  # the first steps' one-off cost counts as fixed
    items = sum(len(r.curve) * (r.dev.n if r.dev else 0) for r in runs)
    evals = sum(r.eval_seconds for r in runs)
    tokens = [r.tokens / r.examples for r in runs if r.tokens and r.examples]
    return Throughput(
        step_overhead_s=a, example_s=b,
        fixed_s=statistics.median(fixed) if fixed else prior.fixed_s,
        eval_item_s=evals / items if items and evals > 0 else prior.eval_item_s,
        tokens_per_example=statistics.median(tokens) if tokens else prior.tokens_per_example,
        measured=len(runs), source="measured",
    )


def _steady_step_seconds(r: ExperimentResult) -> float:
    """Seconds a step takes after the first ones (their one-off costs belong to the job's fixed part)."""
    if r.warmup_seconds is not None and r.steps > 2 * WARMUP_STEPS:
        return (r.train_loop_seconds - r.warmup_seconds) / (r.steps - WARMUP_STEPS)
    return r.train_loop_seconds / r.steps


def _fit_line(prior: Throughput, points: list[tuple[int, float, int, float]]) -> tuple[float, float]:
    """step_s = a + b * eps * method_cost, weighted least squares; one batch size scales the prior."""
    xs = {p[0] * p[3] for p in points}
    if len(xs) < 2:
        eps, step_s, _, cost = points[-1]
        scale = step_s / (prior.step_overhead_s + prior.example_s * eps * cost)
        return prior.step_overhead_s * scale, prior.example_s * scale
    w = [p[2] for p in points]
    x = [p[0] * p[3] for p in points]
    y = [p[1] for p in points]
    sw = sum(w)
    mx, my = sum(wi * xi for wi, xi in zip(w, x)) / sw, sum(wi * yi for wi, yi in zip(w, y)) / sw
    var = sum(wi * (xi - mx) ** 2 for wi, xi in zip(w, x))
    b = sum(wi * (xi - mx) * (yi - my) for wi, xi, yi in zip(w, x, y)) / var
    a = my - b * mx
    if b <= 0 or a < 0:  # noise (host-bound runs): keep a positive per-example cost
        b = max(b, prior.example_s * 0.05, 1e-6)
        a = max(0.0, my - b * mx)
    return a, b


# --------------------------------------------------------------------------- sizing


class Sizing(BaseModel):
    """What one experiment of a configuration can afford; every planner's plans are held to it."""

    budget_s: float = Field(description="The goal's whole accelerator budget.")
    used_s: float
    left_s: float
    throughput: Throughput
    dev_items: int
    batch_sizes: list[int]
    min_steps: int
    max_steps: int = Field(description="Most steps any plan may take now (smallest batch, all budget left).")

    def job_seconds(self, steps: int, examples_per_step: int, method: Method = Method.sft, dev_checks: int = 1) -> float:
        t = self.throughput
        return t.fixed_s + t.train_seconds(steps, examples_per_step, method) + t.eval_seconds(self.dev_items * dev_checks)

    def plan_job_seconds(self, plan: ExperimentPlan, dev_checks: int = 1) -> float:
        """Predicted accounted seconds of a plan."""
        hp = plan.hyperparameters
        return self.job_seconds(hp.max_steps, self.throughput.examples_per_step(hp), plan.method, dev_checks)

    def train_seconds_for_job(self, job_s: float, dev_checks: int = 1) -> float:
        """Training-clock seconds a job of `job_s` accounted seconds leaves after its fixed part and dev checks."""
        t = self.throughput
        return max(0.0, job_s - t.fixed_s - t.eval_seconds(self.dev_items * dev_checks))

    def steps_for_job(self, job_s: float, examples_per_step: int, method: Method = Method.sft, dev_checks: int = 1) -> int:
        return self.throughput.steps_in(self.train_seconds_for_job(job_s, dev_checks), examples_per_step, method)


def default_batch_sizes(on_gpu: bool) -> list[int]:
    return [8, 16, 32, 64] if on_gpu else [4, 8]


def sizing(goal: Goal, used_s: float, throughput: Throughput, on_gpu: bool) -> Sizing:
    space = goal.search_space
    budget_s = goal.budget.gpu_hours * 3600
    left = max(0.0, budget_s - used_s)
    batches = sorted(space.batch_sizes or default_batch_sizes(on_gpu))
    dev_items = goal.benchmark.dev_size
    probe = Sizing(budget_s=budget_s, used_s=used_s, left_s=left, throughput=throughput, dev_items=dev_items,
                   batch_sizes=batches, min_steps=1, max_steps=1)
    max_steps = probe.steps_for_job(left, batches[0])
    min_steps = min(goal.schedule.min_trial_steps, max(1, max_steps))
    if space.max_steps is not None:  # pinned by the goal (e.g. the CPU demo)
        min_steps, max_steps = space.max_steps[0], min(space.max_steps[1], max(max_steps, space.max_steps[0]))
    return probe.model_copy(update={"min_steps": min_steps, "max_steps": max(min_steps, max_steps)})


def rung_seconds(goal: Goal, sz: Sizing, batch: int) -> list[float]:
    """Training-clock seconds of the dev checks of an exploration trial.

    An exploration trial is sized to train R = explore budget / 3 seconds (the first trial, with
    nothing to compare against, runs to R; later ones are mostly pruned at the first rung). Its
    checks sit at R / eta**k, the first no earlier than `min_trial_steps` steps; with a small budget
    there are fewer rungs. Fixed from the goal's total budget so rungs line up across trials."""
    sched = goal.schedule
    eta = sched.reduction_factor
    explore_s = sched.explore_fraction * sz.budget_s
    trial_job_s = explore_s / 3
    full = sz.train_seconds_for_job(trial_job_s, dev_checks=sched.rungs)
    floor = max(sz.throughput.train_seconds(sched.min_trial_steps, batch), sched.min_rung_fraction * sz.budget_s)
    rungs = sched.rungs
    while rungs > 1 and full / eta ** (rungs - 1) < floor:
        rungs -= 1
    full = max(full, floor)
    return [round(full / eta ** (rungs - 1 - k), 3) for k in range(rungs)]


def fresh_rows(steps: int, examples_per_step: int) -> int:
    """One epoch of fresh rows: every optimizer step sees new examples."""
    return max(8, steps * examples_per_step)


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.0f} s"



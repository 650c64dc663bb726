"""Turn an accelerator budget into experiment sizes.

A user gives the loop accelerator-seconds; this module says how many optimizer steps and fresh rows
an experiment of a given configuration can afford. It starts from a prior (model size, device, a
conservative utilisation) and replaces it with what the finished experiments measured:

    job seconds  =  fixed_s  +  steps * (step_overhead_s + example_s * examples_per_step)
                 +  dev checks * dev_items * eval_item_s

`fixed_s` is what a job pays outside its optimizer loop and dev checks (model load, trainer build,
save); `step_overhead_s` is the host-bound part of a step (launches, logging), `example_s` the part
that grows with the batch. Everything here is pure arithmetic on pydantic models, so planners,
the controller and the CLI's dry run all size plans the same way. The cost model's types, its prior
and the sizing rule live in mlintern/schemas/sizing.py (planners' `PlanningContext` carries them);
this module measures and refits them.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mlintern.schemas import ExperimentResult, Goal
from mlintern.schemas.sizing import (  # noqa: F401  (re-exported: mlintern.budget is their home for callers)
    CPU_EFFECTIVE_FLOPS,
    CPU_STEP_OVERHEAD_S,
    GPU_EFFECTIVE_FLOPS,
    GPU_STEP_OVERHEAD_S,
    MEASURED_PACE_HEADROOM,
    METHOD_COST,
    PACE_AT_STEP,
    PACE_HEADROOM,
    WARMUP_STEPS,
    Sizing,
    Throughput,
    default_batch_sizes,
    explore_budget_s,
    final_reserve_s,
    prior_throughput,
    sizing,
)

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


def fit_throughput(prior: Throughput, history: list[ExperimentResult]) -> Throughput:
    """Refit the cost model on finished experiments (succeeded or pruned, with timings)."""
    runs = [r for r in history if r.status != "failed" and r.steps > 0 and r.train_loop_seconds > 0]
    if not runs:
        return prior
    # Step costs come only from runs with steady steps to time: a run of a few steps is all one-off
    # costs (on one H200 shared by four arms, a 2-step trial took 7.7 s, and a fit on it priced a step
    # at 3.8 s against 0.15 s: the loop stopped at 18% of its budget, bench/RESULTS.md part 9).
    steady = {id(r): _steady_step_seconds(r) for r in runs}
    timed = [r for r in runs if steady[id(r)] is not None]
    if timed:
        a, b = _fit_line(prior, [(prior.examples_per_step(r.plan.hyperparameters), steady[id(r)], r.steps,
                                  METHOD_COST[r.plan.method]) for r in timed])
    else:
        a, b = prior.step_overhead_s, prior.example_s
    fitted = prior.model_copy(update={"step_overhead_s": a, "example_s": b})
    for r in runs:  # a run too short to time its steps is priced at the fitted step cost
        if steady[id(r)] is None:
            steady[id(r)] = fitted.step_seconds(prior.examples_per_step(r.plan.hyperparameters), r.plan.method)
    fixed = [max(0.0, r.job_seconds - r.steps * steady[id(r)] - r.eval_seconds)
             for r in runs if r.job_seconds > 0]  # the first steps' one-off cost counts as fixed
    items = sum(len(r.curve) * (r.dev.n if r.dev else 0) for r in runs)
    evals = sum(r.eval_seconds for r in runs)
    tokens = [r.tokens / r.examples for r in runs if r.tokens and r.examples]
    return Throughput(
        step_overhead_s=a, example_s=b,
        fixed_s=statistics.median(fixed) if fixed else prior.fixed_s,
        eval_item_s=evals / items if items and evals > 0 else prior.eval_item_s,
        tokens_per_example=statistics.median(tokens) if tokens else prior.tokens_per_example,
        measured=len(timed), source="measured" if timed else prior.source,
    )


def _steady_step_seconds(r: ExperimentResult) -> float | None:
    """Seconds a step takes after the first ones (their one-off costs belong to the job's fixed part);
    None for a run too short to have steady steps."""
    if r.steps <= 2 * WARMUP_STEPS:
        return None
    if r.warmup_seconds is None:  # a result recorded before the warmup was timed
        return r.train_loop_seconds / r.steps
    return (r.train_loop_seconds - r.warmup_seconds) / (r.steps - WARMUP_STEPS)


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


def rung_seconds(goal: Goal, sz: Sizing, batch: int, lanes: int = 1) -> list[float]:
    """Training-clock seconds of the dev checks of an exploration trial.

    An exploration trial is sized to train R = explore budget / 3 seconds (the first trial, with
    nothing to compare against, runs to R; later ones are mostly pruned at the first rung). Its
    checks sit at R / eta**k, the first no earlier than `min_trial_steps` steps; with a small budget
    there are fewer rungs. Fixed from the goal's total budget so rungs line up across trials."""
    sched = goal.schedule
    eta = sched.reduction_factor
    explore_s = explore_budget_s(goal, lanes)
    trial_job_s = explore_s / 3
    full = sz.train_seconds_for_job(trial_job_s, dev_checks=sched.rungs)
    floor = max(sz.throughput.train_seconds(sched.min_trial_steps, batch), sched.min_rung_fraction * sz.budget_s)
    rungs = sched.rungs
    while rungs > 1 and full / eta ** (rungs - 1) < floor:
        rungs -= 1
    full = max(full, floor)
    return [round(full / eta ** (rungs - 1 - k), 3) for k in range(rungs)]


def paced_steps(stage: str, steps: int, throughput: Throughput | None = None, packing: bool = False) -> int:
    """The most steps a plan may train: a budget-sized run (any stage but exploration) long enough to
    time itself is paced (mlintern.training.pruning), and may re-time itself to PACE_HEADROOM times its
    planned steps, MEASURED_PACE_HEADROOM where `throughput` was fitted on measured runs and the plan's
    rows are not packed (no trial times packed rows); its fresh rows must cover that. Other plans train
    exactly their steps."""
    if stage == "explore" or steps < 2 * PACE_AT_STEP:
        return steps
    measured = throughput is not None and throughput.measured > 0 and not packing
    return int(steps * (MEASURED_PACE_HEADROOM if measured else PACE_HEADROOM))


def fresh_rows(steps: int, examples_per_step: int) -> int:
    """One epoch of fresh rows: every optimizer step sees new examples."""
    return max(8, steps * examples_per_step)


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.0f} s"



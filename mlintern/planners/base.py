"""The planner protocol and the checks every plan passes (`validate_plan`, `validate_proposal`,
`clamp_plan`). Nothing here imports a concrete planner: `make_planner` lives in
mlintern/planners/factory.py, above them. `PlanningContext` and `PaperDigest` are shared types
from mlintern.schemas, re-exported here for callers that import them from this module."""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

from mlintern.budget import fresh_rows
from mlintern.llm import LLMClient
from mlintern.schemas import ExperimentPlan, PaperDigest, PlanningContext

__all__ = [
    "PaperDigest", "PlanningContext", "PlannerDone", "PlanRejected", "Planner", "validate_plan",
    "PlanBounds", "plan_bounds", "validate_proposal", "clamp_plan",
]


class PlannerDone(Exception):
    """The planner has nothing left worth running (e.g. the budget cannot fund another experiment)."""


class PlannerWaiting(PlannerDone):
    """Nothing to plan until a running experiment finishes (the controller asks again after each one)."""


class PlanRejected(ValueError):
    """A plan broke the goal's search space or budget; the message names the field."""


class Planner(Protocol):
    """What the flows use of a planner; nothing else is read from it."""

    name: str

    @property
    def client(self) -> LLMClient | None:
        """The LLM client the planner asks (paper digests share it), or None without an LLM."""

    def propose(self, ctx: PlanningContext) -> ExperimentPlan: ...

    def summary(self) -> str:
        """The planner line of the report."""


def validate_plan(plan: ExperimentPlan, ctx: PlanningContext) -> ExperimentPlan:
    """Check a plan against the goal's search space and the budget-derived bounds before any GPU work."""
    space = ctx.goal.search_space
    sz = ctx.size()
    hp = plan.hyperparameters
    problems = []
    if plan.method not in space.methods:
        problems.append(f"method: {plan.method.value!r} not allowed; allowed: {[m.value for m in space.methods]}")
    eps = sz.throughput.examples_per_step(hp)
    most = sz.max_steps if space.max_steps is not None else max(sz.min_steps, sz.steps_for_job(sz.left_s, eps, plan.method))
    if not sz.min_steps <= hp.max_steps <= (most if plan.stage != "scale_up" else max(most, hp.max_steps)):
        problems.append(f"hyperparameters.max_steps: {hp.max_steps} outside the budgeted range [{sz.min_steps}, {most}] "
                        f"at {eps:g} examples a step ({sz.left_s:.0f} accelerator-seconds left)")
    lo, hi = space.learning_rate
    if not lo / 10 <= hp.learning_rate <= hi * 10:
        problems.append(f"hyperparameters.learning_rate: {hp.learning_rate} far outside [{lo}, {hi}]")
    eps = hp.per_device_batch_size * hp.gradient_accumulation_steps
    if space.batch_sizes is not None and eps not in space.batch_sizes:
        problems.append(f"hyperparameters: effective batch {eps} (per_device_batch_size x gradient_accumulation_steps) "
                        f"not in {space.batch_sizes}")
    if hp.max_length > space.max_length:
        problems.append(f"hyperparameters.max_length: {hp.max_length} exceeds {space.max_length}")
    limit = (space.num_examples[1] * 4 if space.num_examples is not None
             else 2 * fresh_rows(sz.max_steps, max(sz.batch_sizes)))
    if plan.dataset.num_examples > limit:
        problems.append(f"dataset.num_examples: {plan.dataset.num_examples} exceeds {limit}")
    if plan.dataset.source.startswith("hf:") and _touches(plan.dataset.source[3:], ctx.eval_files):
        problems.append(f"dataset.source: {plan.dataset.source!r} is evaluation data; plans may not train on it")
    if plan.plan_id() in ctx.seen_plan_ids():
        problems.append(f"plan {plan.plan_id()} was already run; change the data or hyperparameters")
    if problems:
        raise PlanRejected("; ".join(problems))
    return plan


class PlanBounds(NamedTuple):
    """The numeric limits `validate_plan` holds a plan to, as ranges a plan can be clamped into.
    None: that dimension has no fixed limit here (nothing to clamp)."""

    max_steps: tuple[int, int] | None
    learning_rate: tuple[float, float]  # the goal's range (validate_plan allows 10x either side)
    batch_sizes: list[int] | None
    max_length: int
    num_examples: tuple[int, int] | None  # the goal's range (validate_plan allows 4x the top)


def plan_bounds(ctx: PlanningContext) -> PlanBounds:
    """The one place that turns the goal (and context) into clampable limits; keep it in step with
    `validate_plan`."""
    space = ctx.goal.search_space
    sz = ctx.size()  # budget-derived: the same bounds validate_plan holds every planner to
    rows = tuple(space.num_examples) if space.num_examples is not None else (8, 2 * fresh_rows(sz.max_steps, max(sz.batch_sizes)))
    return PlanBounds(
        max_steps=(sz.min_steps, sz.max_steps),
        learning_rate=tuple(space.learning_rate),
        batch_sizes=sorted(space.batch_sizes) if space.batch_sizes else sz.batch_sizes,
        max_length=space.max_length,
        num_examples=rows,
    )


def _batch_limit(ctx: PlanningContext, bounds: PlanBounds) -> int | None:
    """The largest effective batch (micro-batch x accumulation) a proposed plan may use: the
    goal's largest batch size, or the failed plan's when fixing it (an OOM fix keeps it)."""
    if bounds.batch_sizes is None:
        return None
    limit = bounds.batch_sizes[-1]
    if ctx.failure_plan is not None:
        hp = ctx.failure_plan.hyperparameters
        limit = max(limit, hp.per_device_batch_size * hp.gradient_accumulation_steps)
    return limit


def validate_proposal(plan: ExperimentPlan, ctx: PlanningContext) -> ExperimentPlan:
    """`validate_plan`, plus the batch limits a free-form (LLM) proposal must also respect: no
    micro-batch above the goal's largest batch size, no effective batch above `_batch_limit`
    (search plans and rule fixes keep them by construction)."""
    problems = []
    try:
        validate_plan(plan, ctx)
    except PlanRejected as exc:
        problems.append(str(exc))
    hp = plan.hyperparameters
    bounds = plan_bounds(ctx)
    limit = _batch_limit(ctx, bounds)
    if limit is not None and hp.per_device_batch_size > bounds.batch_sizes[-1]:
        problems.append(f"hyperparameters.per_device_batch_size: {hp.per_device_batch_size} exceeds the goal's "
                        f"largest batch size {bounds.batch_sizes[-1]}")
    elif limit is not None and hp.per_device_batch_size * hp.gradient_accumulation_steps > limit:
        problems.append(f"hyperparameters.gradient_accumulation_steps: {hp.gradient_accumulation_steps} makes an "
                        f"effective batch of {hp.per_device_batch_size * hp.gradient_accumulation_steps}, above {limit}")
    if problems:
        raise PlanRejected("; ".join(problems))
    return plan


def clamp_plan(plan: ExperimentPlan, ctx: PlanningContext) -> tuple[ExperimentPlan, list[str]]:
    """Move the numeric fields that `validate_proposal` rejects into `plan_bounds`; returns the
    plan and one note per change (empty: nothing to clamp). Non-numeric problems (method, data
    source, a repeated plan) are left for `validate_plan` to reject."""
    bounds = plan_bounds(ctx)
    hp = plan.hyperparameters.model_dump()
    data = plan.dataset.model_dump()
    notes: list[str] = []

    def clamp(where: dict, key: str, label: str, lo: float, hi: float, ok_lo: float, ok_hi: float) -> None:
        value = where[key]
        if ok_lo <= value <= ok_hi:
            return
        where[key] = type(value)(min(max(value, lo), hi))
        notes.append(f"clamped {label} {value} -> {where[key]}")

    limit = _batch_limit(ctx, bounds)
    if limit is not None:
        largest = bounds.batch_sizes[-1]
        clamp(hp, "per_device_batch_size", "hyperparameters.per_device_batch_size", 1, largest, 1, largest)
        accum = max(1, limit // hp["per_device_batch_size"])
        clamp(hp, "gradient_accumulation_steps", "hyperparameters.gradient_accumulation_steps", 1, accum, 1, accum)
        _snap_batch(hp, [b for b in bounds.batch_sizes if b <= limit] or bounds.batch_sizes[:1], ctx, notes)
    if bounds.max_steps is not None:
        lo, hi = bounds.max_steps
        clamp(hp, "max_steps", "hyperparameters.max_steps", lo, hi, lo, hi)
    lo, hi = bounds.learning_rate
    clamp(hp, "learning_rate", "hyperparameters.learning_rate", lo, hi, lo / 10, hi * 10)
    shortest = _shortest_max_length(ctx, bounds)
    clamp(hp, "max_length", "hyperparameters.max_length", shortest, bounds.max_length, shortest, bounds.max_length)
    if bounds.num_examples is not None:
        lo, hi = bounds.num_examples
        clamp(data, "num_examples", "dataset.num_examples", lo, hi, 0, hi * 4)
    if not notes:
        return plan, []
    clamped = ExperimentPlan.model_validate({**plan.model_dump(), "hyperparameters": hp, "dataset": data})
    return clamped, notes


def _snap_batch(hp: dict, allowed: list[int], ctx: PlanningContext, notes: list[str]) -> None:
    """An effective batch the goal does not allow moves to the nearest one it does, keeping the
    micro-batch where it divides (a failed plan's own batch stays allowed: an OOM fix keeps it)."""
    eps = hp["per_device_batch_size"] * hp["gradient_accumulation_steps"]
    failed = ctx.failure_plan.hyperparameters if ctx.failure_plan is not None else None
    if eps in allowed or (failed and eps == failed.per_device_batch_size * failed.gradient_accumulation_steps):
        return
    target = min(allowed, key=lambda b: (abs(b - eps), b))
    micro = max(d for d in range(1, min(hp["per_device_batch_size"], target) + 1) if target % d == 0)
    hp["per_device_batch_size"], hp["gradient_accumulation_steps"] = micro, target // micro
    notes.append(f"clamped hyperparameters: effective batch {eps} -> {target} ({micro} x {target // micro})")


def _shortest_max_length(ctx: PlanningContext, bounds: PlanBounds) -> int:
    """The shortest max_length a proposal may use: 1.5 times a training example's mean length
    (measured, or the prior's), so that most answers are not truncated away, within the goal's
    max_length. A 16-token limit left SmolLM2's plans nothing to learn from."""
    mean = ctx.size().throughput.tokens_per_example
    return int(min(bounds.max_length, max(16, math.ceil(1.5 * mean))))


def _touches(source: str, eval_files: list[str]) -> bool:
    """True if a local dataset path is, or contains, one of the evaluation files."""
    from pathlib import Path

    path = Path(source).expanduser()
    if not path.exists():
        return False
    path = path.resolve()
    for f in eval_files:
        ef = Path(f).resolve()
        if path == ef or path in ef.parents or ef.parent == path.parent:
            return True
    return False

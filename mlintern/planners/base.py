from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from mlintern.budget import Sizing, fresh_rows, prior_throughput, sizing
from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Failure, Goal, Method


class PaperDigest(BaseModel):
    """An LLM's short digest of one arXiv paper, handed to the planner."""

    paper_id: str
    title: str
    technique: str = ""
    reported_gains: str = ""
    hyperparameters: str = ""
    relevance: float = 0.0


class PlanningContext(BaseModel):
    """Everything a planner may see. Held-out test scores are deliberately absent."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    goal: Goal
    metric: str
    baseline: EvalScore
    history: list[ExperimentResult] = Field(default_factory=list)
    champion: ExperimentResult | None = None
    experiments_left: int
    hours_left: float
    literature: list[PaperDigest] = Field(default_factory=list)
    failure: Failure | None = None
    failure_plan: ExperimentPlan | None = None
    pending: list[ExperimentPlan] = Field(default_factory=list, description="Planned, not yet finished.")
    eval_files: list[str] = Field(default_factory=list, description="Dev/test files no plan may train on.")
    sizing: Sizing | None = Field(None, description="Budget-derived bounds and the measured throughput.")
    on_gpu: bool = False
    rungs: list[float] = Field(default_factory=list, description="Training-clock seconds of exploration dev checks.")
    slots: int = Field(1, ge=1, description="Experiments that can start now, this one included (free GPUs).")

    def seen_plan_ids(self) -> set[str]:
        return {r.plan_id for r in self.history} | {p.plan_id() for p in self.pending}

    def size(self) -> Sizing:
        """The loop's sizing, or (planners called on their own, e.g. in tests) one from the CPU prior."""
        if self.sizing is not None:
            return self.sizing
        prior = prior_throughput(135e6, self.on_gpu, 40.0)
        used = (self.goal.budget.gpu_hours - self.hours_left) * 3600
        return sizing(self.goal, used, prior, self.on_gpu)

    def batch_sizes(self) -> list[int]:
        return self.size().batch_sizes


class PlannerDone(Exception):
    """The planner has nothing left worth running (e.g. the budget cannot fund another experiment)."""


class PlanRejected(ValueError):
    """A plan broke the goal's search space or budget; the message names the field."""


class Planner(Protocol):
    name: str

    def propose(self, ctx: PlanningContext) -> ExperimentPlan: ...


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


def make_planner(goal: Goal) -> Planner:
    """auto/llm: multi-fidelity search (LLM configurations when an LLM is configured, else Optuna TPE);
    search/random: plain Optuna search over budget-sized plans; single: one default run sized to the budget."""
    from mlintern.planners.llm import LLMPlanner
    from mlintern.planners.multifidelity import MultiFidelityPlanner
    from mlintern.planners.search import SearchPlanner, SingleRunPlanner
    from mlintern.settings import get_settings

    settings = get_settings()
    llm_model = goal.llm_model or settings.llm_model
    if goal.planner == "single":
        return SingleRunPlanner()
    if goal.planner in ("search", "random"):
        return SearchPlanner(sampler="tpe" if goal.planner == "search" else "random")
    if goal.planner == "llm" or (goal.planner == "auto" and llm_model):
        if not llm_model:
            raise ValueError("planner='llm' needs llm_model (or INTERN_LLM_MODEL), e.g. openai/gpt-4o-mini")
        return MultiFidelityPlanner(proposer=LLMPlanner(model=llm_model, api_base=goal.llm_api_base or settings.llm_api_base,
                                                        budget_dollars=goal.budget.llm_dollars))
    return MultiFidelityPlanner()

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

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

    def seen_plan_ids(self) -> set[str]:
        return {r.plan_id for r in self.history} | {p.plan_id() for p in self.pending}


class PlanRejected(ValueError):
    """A plan broke the goal's search space or budget; the message names the field."""


class Planner(Protocol):
    name: str

    def propose(self, ctx: PlanningContext) -> ExperimentPlan: ...


def validate_plan(plan: ExperimentPlan, ctx: PlanningContext) -> ExperimentPlan:
    """Check a plan against the goal's search space and budget before any GPU work."""
    space = ctx.goal.search_space
    hp = plan.hyperparameters
    problems = []
    if plan.method not in space.methods:
        problems.append(f"method: {plan.method.value!r} not allowed; allowed: {[m.value for m in space.methods]}")
    lo, hi = space.max_steps
    if not lo <= hp.max_steps <= hi:
        problems.append(f"hyperparameters.max_steps: {hp.max_steps} outside the budgeted range [{lo}, {hi}]")
    lo, hi = space.learning_rate
    if not lo / 10 <= hp.learning_rate <= hi * 10:
        problems.append(f"hyperparameters.learning_rate: {hp.learning_rate} far outside [{lo}, {hi}]")
    if hp.max_length > space.max_length:
        problems.append(f"hyperparameters.max_length: {hp.max_length} exceeds {space.max_length}")
    lo, hi = space.num_examples
    if plan.dataset.num_examples > hi * 4:
        problems.append(f"dataset.num_examples: {plan.dataset.num_examples} exceeds {hi * 4}")
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
    """The LLM planner when an LLM is configured (goal or INTERN_LLM_MODEL), else Optuna TPE."""
    from mlintern.planners.llm import LLMPlanner
    from mlintern.planners.search import SearchPlanner
    from mlintern.settings import get_settings

    settings = get_settings()
    llm_model = goal.llm_model or settings.llm_model
    if goal.planner == "llm" or (goal.planner == "auto" and llm_model):
        if not llm_model:
            raise ValueError("planner='llm' needs llm_model (or INTERN_LLM_MODEL), e.g. openai/gpt-4o-mini")
        return LLMPlanner(model=llm_model, api_base=goal.llm_api_base or settings.llm_api_base,
                          budget_dollars=goal.budget.llm_dollars)
    if goal.planner == "random":
        return SearchPlanner(sampler="random")
    return SearchPlanner(sampler="tpe")

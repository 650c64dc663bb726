"""`make_planner`: the goal's planner. It sits above the concrete planners (base.py imports none
of them), so nothing in the planners package needs a lazy import to build one."""

from __future__ import annotations

from mlintern.planners.base import Planner
from mlintern.planners.fallback import FallbackPlanner
from mlintern.planners.llm import LLMPlanner
from mlintern.planners.multifidelity import MultiFidelityPlanner
from mlintern.planners.search import SearchPlanner, SingleRunPlanner
from mlintern.schemas import Goal
from mlintern.settings import get_settings


def make_planner(goal: Goal) -> Planner:
    """auto/llm: multi-fidelity search (LLM configurations when an LLM is configured, else Optuna TPE);
    search/random: plain Optuna search over budget-sized plans; single: one default run sized to the budget.
    An LLM proposer comes wrapped in `FallbackPlanner`: rounds the LLM fails are planned by the same
    policy with Optuna TPE, so a failing LLM never ends the loop while budget remains."""
    settings = get_settings()
    llm_model = goal.llm_model or settings.llm_model
    if goal.planner == "single":
        return SingleRunPlanner()
    if goal.planner in ("search", "random"):
        return SearchPlanner(sampler="tpe" if goal.planner == "search" else "random")
    if goal.planner == "llm" or (goal.planner == "auto" and llm_model):
        if not llm_model:
            raise ValueError("planner='llm' needs llm_model (or INTERN_LLM_MODEL), e.g. openai/gpt-4o-mini")
        llm = LLMPlanner(model=llm_model, api_base=goal.llm_api_base or settings.llm_api_base,
                         budget_dollars=goal.budget.llm_dollars)
        return FallbackPlanner(primary=MultiFidelityPlanner(proposer=llm), fallback=MultiFidelityPlanner(), llm=llm)
    return MultiFidelityPlanner()

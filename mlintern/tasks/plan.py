from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlintern.planners.base import Planner
from mlintern.schemas import ExperimentPlan, PlanningContext


@task(name="plan-experiment", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, timeout_seconds=900)
def plan_next(planner: Planner, ctx: PlanningContext) -> ExperimentPlan:
    """Ask the planner for the next plan. The LLM planner already retries transport errors and
    repairs invalid output once; one more task retry covers a provider outage of a few seconds."""
    return planner.propose(ctx)

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from mlintern.llm import LLMBudgetExceeded
from mlintern.planners.base import Planner, PlannerDone, PlannerWaiting
from mlintern.schemas import ExperimentPlan, PlanningContext


class NoPlan(BaseModel):
    """The planner's answer when it has no plan: nothing left worth funding (PlannerDone), or nothing until a
    running experiment finishes (`waiting`, PlannerWaiting). An answer, not a failure: the task run completes
    with it. Raised through the task, it marked a Failed (red) task run in the Prefect UI, and logged an
    ERROR, every time a GPU lane had room while the planner waited, many times in a night."""

    reason: str
    waiting: bool = False


def _worth_retrying(task, task_run, state) -> bool:
    """A spent LLM budget comes back at once (retrying it held the controller 10 s, while an experiment that
    had finished waited for its GPU's next one); a failure gets its retry."""
    try:
        state.result()
    except LLMBudgetExceeded:
        return False
    except Exception:
        return True
    return True


@task(name="plan-experiment", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, timeout_seconds=900,
      retry_condition_fn=_worth_retrying)
def plan_next(planner: Planner, ctx: PlanningContext) -> ExperimentPlan | NoPlan:
    """Ask the planner for the next plan, or its reason for none (NoPlan). The LLM planner already retries
    transport errors and repairs invalid output once; one more task retry covers a provider outage of a few
    seconds."""
    try:
        return planner.propose(ctx)
    except PlannerDone as exc:
        get_run_logger().info("no plan: %s", exc)
        return NoPlan(reason=str(exc), waiting=isinstance(exc, PlannerWaiting))

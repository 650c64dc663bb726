from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlintern.llm import LLMBudgetExceeded
from mlintern.planners.base import Planner, PlannerDone
from mlintern.schemas import ExperimentPlan, PlanningContext


def _worth_retrying(task, task_run, state) -> bool:
    """An answer is not a failure: "nothing left to fund", "wait for the running ones" (PlannerDone,
    PlannerWaiting) and a spent LLM budget come back at once. Retrying them held the controller 10 s
    each time, while an experiment that had finished waited for its GPU's next one."""
    try:
        state.result()
    except (PlannerDone, LLMBudgetExceeded):
        return False
    except Exception:
        return True
    return True


@task(name="plan-experiment", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, timeout_seconds=900,
      retry_condition_fn=_worth_retrying)
def plan_next(planner: Planner, ctx: PlanningContext) -> ExperimentPlan:
    """Ask the planner for the next plan. The LLM planner already retries transport errors and
    repairs invalid output once; one more task retry covers a provider outage of a few seconds."""
    return planner.propose(ctx)

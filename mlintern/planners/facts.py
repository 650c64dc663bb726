"""The budget facts every planner works from, in the form the LLM planner's prompt shows them."""

from __future__ import annotations

from pydantic import BaseModel

from mlintern.budget import fmt_seconds
from mlintern.schemas import PlanningContext


class BatchCost(BaseModel):
    batch: int
    step_seconds: float
    steps_affordable: int  # with everything that is left


class BudgetFacts(BaseModel):
    total_s: float
    used_s: float
    left_s: float
    phase: str  # "exploration" or "scale-up"
    phase_note: str
    throughput: str
    fixed_s: float
    dev_check_s: float
    batches: list[BatchCost]


def budget_facts(ctx: PlanningContext) -> BudgetFacts:
    """What the loop knows about its accelerator budget and throughput, and which phase it is in."""
    from mlintern.planners.multifidelity import MultiFidelityPlanner

    sz = ctx.size()
    t = sz.throughput
    batches = [BatchCost(batch=b, step_seconds=round(t.step_seconds(b), 4),
                         steps_affordable=sz.steps_for_job(sz.left_s, b)) for b in sz.batch_sizes]
    exploring = MultiFidelityPlanner().exploring(ctx, sz)
    if exploring:
        r = ctx.rungs[-1] if ctx.rungs else 0.0
        note = (f"exploration: the first {ctx.goal.schedule.explore_fraction:.0%} of the budget tries configurations. "
                f"Size an exploration run to about {fmt_seconds(r)} of training (steps = seconds / step seconds at "
                f"its batch); it is checked on dev at {', '.join(fmt_seconds(x) for x in ctx.rungs)} of training "
                "and stopped there unless it is in the top third of the runs that reached that check.")
    else:
        note = ("scale-up: exploration is over. Propose the run that should get the rest of the budget: usually the "
                "best configuration so far, continued from the champion (init_from: champion) on fresh rows. The "
                "schedule sizes it to everything that is left; its size in your plan is replaced.")
    return BudgetFacts(total_s=sz.budget_s, used_s=sz.used_s, left_s=sz.left_s, phase="exploration" if exploring else "scale-up",
                       phase_note=note, throughput=t.describe(), fixed_s=round(t.fixed_s, 2),
                       dev_check_s=round(t.eval_seconds(sz.dev_items), 2), batches=batches)

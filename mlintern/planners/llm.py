"""The LLM planner: litellm with structured output, history and literature in the prompt."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from mlintern.llm import LLMClient, LLMError
from mlintern.planners.base import PlanningContext, PlanRejected, validate_plan
from mlintern.planners.rules import fix_plan
from mlintern.prompts import render
from mlintern.schemas import ExperimentPlan

log = logging.getLogger(__name__)


@dataclass
class LLMPlanner:
    model: str
    api_base: str | None = None
    budget_dollars: float = 1.0
    name: str = "llm"
    client: LLMClient = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"llm:{self.model}"
        self.client = LLMClient(model=self.model, api_base=self.api_base, budget_dollars=self.budget_dollars)

    @property
    def spent_dollars(self) -> float:
        return self.client.spent_dollars

    def messages(self, ctx: PlanningContext) -> list[dict]:
        system = render("planner_system.md", schema=json.dumps(ExperimentPlan.model_json_schema()),
                        max_steps_hint=ctx.goal.search_space.max_steps[1])
        user = render(
            "planner_user.md", goal=ctx.goal, metric=ctx.metric, baseline=ctx.baseline,
            champion=ctx.champion, history=ctx.history, literature=ctx.literature,
            experiments_left=ctx.experiments_left, hours_left=ctx.hours_left,
            failure=ctx.failure, failure_plan_id=ctx.failure_plan.plan_id() if ctx.failure_plan else None,
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def propose(self, ctx: PlanningContext) -> ExperimentPlan:
        messages = self.messages(ctx)
        plan = self.client.structured(messages, ExperimentPlan)
        try:
            return validate_plan(plan, ctx)
        except PlanRejected as exc:
            problems = str(exc)
            log.warning("LLM plan rejected (%s); asking once for a plan within the limits", problems)
        messages += [
            {"role": "assistant", "content": plan.model_dump_json()},
            {"role": "user", "content": render("plan_rejected.md", problems=problems)},
        ]
        plan = self.client.structured(messages, ExperimentPlan)
        try:
            return validate_plan(plan, ctx)
        except PlanRejected as exc:
            if ctx.failure is not None and ctx.failure_plan is not None:
                log.warning("LLM fix rejected (%s); falling back to the rule-based fix", exc)
                return validate_plan(fix_plan(ctx.failure_plan, ctx.failure), ctx)
            raise PlanRejected(f"LLM {self.model} proposed an invalid plan twice: {exc}") from None


__all__ = ["LLMPlanner", "LLMError"]

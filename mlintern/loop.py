"""The controller's bookkeeping, free of Prefect and MLflow so it is easy to test."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Failure, Goal
from mlintern.selection import beats


@dataclass
class LoopState:
    goal: Goal
    baseline: EvalScore
    history: list[ExperimentResult] = field(default_factory=list)
    champion: ExperimentResult | None = None
    since_improvement: int = 0
    started: float = field(default_factory=time.time)
    llm_exhausted: bool = False
    planner_error: str | None = None

    @property
    def best(self) -> EvalScore:
        return self.champion.dev if self.champion else self.baseline

    @property
    def hours_used(self) -> float:
        return sum(r.accelerator_hours for r in self.history)

    @property
    def experiments_left(self) -> int:
        return max(0, self.goal.budget.max_experiments - len(self.history))

    @property
    def hours_left(self) -> float:
        return max(0.0, self.goal.budget.gpu_hours - self.hours_used)

    def wall_left_s(self) -> float:
        return self.goal.budget.wall_time_minutes * 60 - (time.time() - self.started)

    def needs_confirmation(self, result: ExperimentResult) -> bool:
        """A candidate that beats the champion on dev is checked on the confirmation set."""
        return (result.status == "succeeded" and result.dev is not None and result.confirmed is None
                and beats(result.dev, self.best, self.goal.stop.noise_z))

    def record(self, result: ExperimentResult) -> bool:
        """Add a finished experiment; returns True if it became the champion."""
        self.history.append(result)
        if result.status == "succeeded" and result.dev is not None and result.confirmed is not False and beats(
            result.dev, self.best, self.goal.stop.noise_z
        ):
            self.champion = result
            self.since_improvement = 0
            return True
        if result.status == "succeeded":  # a failure says nothing about the idea: budget, not patience
            self.since_improvement += 1
        return False

    def stop_reason(self) -> str | None:
        goal = self.goal
        if goal.target_score is not None and self.best.value >= goal.target_score:
            return f"target reached: dev {self.best.value:.4f} >= {goal.target_score}"
        if self.experiments_left <= 0:
            return f"experiment budget spent ({goal.budget.max_experiments})"
        if self.hours_left <= 0:
            return f"accelerator budget spent ({self.hours_used:.3f} of {goal.budget.gpu_hours} h)"
        if self.wall_left_s() <= 0:
            return f"wall-time budget spent ({goal.budget.wall_time_minutes} min)"
        if self.since_improvement >= goal.stop.patience:
            return f"no improvement in {self.since_improvement} experiments (patience {goal.stop.patience})"
        if self.llm_exhausted:
            return "LLM budget spent"
        if self.planner_error:
            return f"planner failed ({self.planner_error[:300]}); fix it and run the goal again to resume"
        if self.history and self.history[-1].failure is not None and self.history[-1].failure.kind.value == "disk_full":
            return "disk full: free space under INTERN_WORK_DIR, then run again to resume"
        return None

    def pending_failure(self) -> tuple[Failure, ExperimentPlan] | None:
        """The last failed plan, if it should be fixed and retried (bounded per lineage)."""
        if not self.history or self.history[-1].status != "failed" or self.history[-1].failure is None:
            return None
        last = self.history[-1]
        depth, plan = 0, last.plan
        by_id = {r.plan_id: r for r in self.history}
        while plan.retry_of and plan.retry_of in by_id and depth < 100:
            depth += 1
            plan = by_id[plan.retry_of].plan
        if depth >= self.goal.max_retries_per_plan:
            return None
        return last.failure, last.plan

"""A failing LLM never ends the loop while budget remains.

`FallbackPlanner` asks its `primary` planner first: the LLM planner, or a policy that asks the
LLM planner (`llm`) for configurations. A round the LLM fails (server down, invalid output
twice, a plan outside the limits that cannot be clamped) is planned by `fallback` (Optuna
search, or the same policy without the LLM) instead, and said so in the log, the plan's
transcript and the report. After `max_failures` failed rounds in a row the LLM is benched: the
fallback plans alone, and the LLM is tried again every `retry_every` rounds. Only a spent LLM
budget (LLMBudgetExceeded) and the planners' own stop signals go up to the loop.

Each plan's transcript waits here (`take_transcript`) until the loop hands it to the
experiment that runs the plan, which logs it to the plan's MLflow run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from mlintern.llm import LLMBudgetExceeded, LLMClient, LLMError, LLMTranscript, run_log
from mlintern.planners.base import Planner, PlanRejected
from mlintern.planners.llm import LLMPlanner
from mlintern.planners.search import SearchPlanner
from mlintern.schemas import ExperimentPlan, PlanningContext

_transcripts: dict[str, LLMTranscript] = {}
_lock = threading.Lock()


def remember_transcript(plan: ExperimentPlan, transcript: LLMTranscript) -> None:
    with _lock:
        _transcripts[plan.plan_id()] = transcript


def take_transcript(plan: ExperimentPlan) -> LLMTranscript | None:
    """The transcript of how `plan` was made, once (None for plans no LLM planner touched)."""
    with _lock:
        return _transcripts.pop(plan.plan_id(), None)


@dataclass
class FallbackPlanner:
    primary: Planner  # plans with the LLM: the LLM planner itself, or a policy holding it
    fallback: Planner = field(default_factory=SearchPlanner)
    llm: LLMPlanner | None = None  # the LLM planner inside `primary` (default: primary itself)
    max_failures: int = 2  # failed LLM rounds in a row before the LLM is benched
    retry_every: int = 3  # while benched, ask the LLM again every this many rounds
    name: str = ""
    failures: int = 0
    since_try: int = 0
    llm_plans: int = 0
    fallback_plans: int = 0
    last_error: str | None = None

    def __post_init__(self) -> None:
        if self.llm is None:
            self.llm = self.primary
        self.name = self.primary.name

    @property
    def client(self) -> LLMClient:
        """The LLM client (paper digests share it, so their spend is counted with planning)."""
        return self.llm.client

    @property
    def benched(self) -> bool:
        return self.failures >= self.max_failures

    def propose(self, ctx: PlanningContext) -> ExperimentPlan:
        log = run_log()
        # One spend counter per goal (LoopState.llm_dollars, durable in the ledger): it is the base,
        # and this round's calls add to it (they reach the ledger with the plan's transcript).
        self.llm.client.external_dollars, self.llm.client.spent_dollars = ctx.llm_dollars, 0.0
        if not self.benched or self.since_try >= self.retry_every - 1:
            self.since_try = 0
            self.llm.last_transcript = None
            try:
                plan = self.primary.propose(ctx)
            except LLMBudgetExceeded:
                raise
            except (LLMError, PlanRejected) as exc:
                self.failures += 1
                error = f"{type(exc).__name__}: {exc}"
                transcript = self.llm.last_transcript or self.llm.new_transcript()
                log.warning("LLM planner failed (%d in a row): %s", self.failures, error[:500])
            else:
                if self.benched:
                    log.info("LLM planner %s answers again: it plans from now on", self.llm.name)
                self.failures = 0
                self.llm_plans += 1
                if self.llm.last_transcript is not None:  # None: the policy planned without the LLM
                    remember_transcript(plan, self.llm.last_transcript)
                return plan
        else:
            self.since_try += 1
            error = (f"LLM benched after {self.failures} failed rounds in a row (tried again every "
                     f"{self.retry_every} rounds); last error: {self.last_error}")
            transcript = self.llm.new_transcript()
        self.last_error = error[:1000]
        plan = self.fallback.propose(ctx)  # PlanRejected here (space exhausted) goes to the loop
        self.fallback_plans += 1
        transcript.source, transcript.error = "search-fallback", error[:2000]
        transcript.planner = f"{self.fallback.name} (fallback from {self.name})"
        transcript.budget_left_dollars = max(0.0, self.llm.budget_dollars - self.llm.client.total_dollars)
        remember_transcript(plan, transcript)
        when = ("benched: retried every " + str(self.retry_every) + " rounds") if self.benched else "this round"
        log.warning("planning with %s instead of the LLM (%s): plan %s", self.fallback.name, when, plan.plan_id())
        return plan

    def summary(self) -> str:
        """The planner line of the report: says when and why search planned instead of the LLM."""
        if not self.fallback_plans:
            return self.name
        total = self.fallback_plans + self.llm_plans
        return (f"{self.name}; {self.fallback_plans} of {total} plans made by {self.fallback.name} because the "
                f"LLM failed (last error: {(self.last_error or '')[:300]})")


__all__ = ["FallbackPlanner", "remember_transcript", "take_transcript"]

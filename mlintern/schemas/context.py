"""What a planner is shown: the `PlanningContext`, and the `PaperDigest`s the literature step makes.

Shared types: the controller and the literature step produce them, every planner reads them, so they
live here rather than in the planners package (which the producers then need not import).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mlintern.schemas.goal import Goal
from mlintern.schemas.plan import ExperimentPlan
from mlintern.schemas.results import EvalScore, ExperimentResult, Failure
from mlintern.schemas.sizing import Sizing, prior_throughput, sizing


class PaperDigest(BaseModel):
    """An LLM's short digest of one arXiv paper, handed to the planner."""

    paper_id: str = Field(description="The arXiv id, e.g. 2501.12345.")
    title: str
    technique: str = Field("", description="The training technique the paper proposes or uses.")
    reported_gains: str = Field("", description="What improved, on which benchmark, by how much.")
    hyperparameters: str = Field("", description="Settings the paper reports (learning rate, steps, beta, ...).")
    relevance: float = Field(0.0, description="Relevance to the goal, 0 to 1.")


class PlanningContext(BaseModel):
    """Everything a planner may see. Held-out test scores are deliberately absent."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    goal: Goal
    metric: str
    baseline: EvalScore | None = Field(
        description="The base model's dev score; None while it is measured beside the first experiments.")
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
    lanes: int = Field(1, ge=1, description="Experiments the loop runs at once (GPUs it dispatches to).")
    gpu_free_in_s: float = Field(0.0, ge=0, description=(
        "Seconds until the GPU this plan goes to frees: the jobs queued there before it (0: free now)."))
    wall_left_s: float | None = Field(
        None, description="Wall-clock seconds an experiment started now may take: what is left of "
        "budget.wall_time_minutes, less the final test. None: no wall-clock cap (a planner called on its own).")
    llm_dollars: float = Field(0.0, ge=0, description="The goal's LLM spend so far, in US dollars (LoopState.llm_dollars, the one counter).")
    provisional: bool = Field(False, description=(
        "Plan for a GPU's queue slot on the likely outcome of the job training there: `sizing` counts running "
        "exploration trials at the cost of their first rung, and a scale-up need not wait for them. The loop "
        "releases the plan when that job ends only if the planner still wants it then (`still_wanted`)."))

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

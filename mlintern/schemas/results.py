"""What comes back: scores, failures, an `ExperimentResult` per run and the loop's `LoopReport`.

One name per concept, shared with the job's `TrainOutcome` (mlintern/training/job.py) so a result is
filled from an outcome by field name: `train_loss`, `recent_loss`, `model_path`, `job_seconds`, `train_seconds`,
`train_loop_seconds`, `eval_seconds`, `steps`, `examples`, `tokens`, `curve`, `pruned_at`.
Results stored by older versions still load: retired names are accepted (see `_RETIRED`).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import AliasChoices, Field, model_validator

from mlintern.schemas.common import EvalScore, _Model  # noqa: F401  (EvalScore: re-exported)
from mlintern.schemas.goal import Goal
from mlintern.schemas.plan import ExperimentPlan


class FailureKind(str, Enum):
    oom = "oom"
    nan = "nan_or_divergence"
    bad_data = "bad_data"
    timeout = "timeout"
    disk_full = "disk_full"
    crash = "crash"


class Failure(_Model):
    """Why a run failed, classified so a planner can fix it (e.g. a smaller batch after an OOM)."""

    kind: FailureKind = Field(description="The failure's class: oom, nan_or_divergence, bad_data, timeout, "
                              "disk_full or crash.")
    message: str = Field(description="The error message.")
    log_tail: str = Field("", description="The last lines of the job's log.")


class LossTail(_Model):
    """Training loss over the last quarter of a run's logged steps. Every training row is fresh (one
    epoch), so each logged loss was taken on rows the model had not trained on yet: their mean
    estimates the held-out loss at the end of the run, with far less noise than an exact-match dev
    score near the floor. Runs of the same method and training time compare on it."""

    value: float = Field(description="Mean training loss over the last quarter of the logged steps (lower is better).")
    stderr: float = Field(ge=0, description="Standard error of that mean (spread of the logged losses / sqrt(n)).")
    n: int = Field(ge=1, description="Logged losses averaged.")


class CurvePoint(_Model):
    """One dev check during or at the end of training."""

    step: int = Field(description="Optimizer steps done at this check.")
    examples: int = Field(description="Training rows seen at this check.")
    train_seconds: float = Field(description="Training-clock seconds (evaluations excluded) at this check.")
    value: float = Field(description="The dev score.")
    rung: int | None = Field(None, description="Successive-halving rung index of this check (None: the final check).")


# Field names of older versions -> today's; a stored result that has both keeps today's.
_RETIRED = {"train_wall_seconds": "job_seconds"}


class ExperimentResult(_Model):
    """One run's outcome, as recorded in MLflow (the `result.json` artifact) and read back on resume."""

    plan_id: str
    plan: ExperimentPlan
    status: Literal["succeeded", "failed", "pruned"]
    dev: EvalScore | None = Field(None, description="Score on the dev set at the end of training.")
    confirm: EvalScore | None = Field(None, description="Score on the confirmation dev set, if checked.")
    confirmed: bool | None = Field(None, description="False: beat the champion on dev but not on confirmation.")
    model_path: str | None = Field(None, description="Folder of the trained weights (None: failed or pruned).")
    mlflow_run_id: str | None = None
    failure: Failure | None = None
    train_seconds: float = Field(0.0, description="Trainer build, training and save inside the job, in seconds.")
    eval_seconds: float = Field(0.0, description="Dev checks and the final dev score inside the job, in seconds.")
    accelerator_hours: float = Field(0.0, description="What the budget counts: job_seconds / 3600.")
    train_loss: float | None = Field(None, description="Training loss at the last logged step.")
    recent_loss: LossTail | None = Field(
        None, description="Mean training loss on fresh rows over the last quarter of the run (None: too few logged steps).")
    decontaminated: int = Field(0, description="Training rows removed for overlapping the evaluation sets.")
    steps: int = Field(0, description="Optimizer steps done.")
    examples: int = Field(0, description="Training rows seen (steps x effective batch).")
    tokens: int = Field(0, description="Training tokens seen.")
    train_loop_seconds: float = Field(0.0, description="Optimizer-loop seconds, dev checks excluded.")
    warmup_seconds: float | None = Field(None, description="Optimizer-loop seconds of the first steps (one-off costs).")
    phases: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds per phase inside the job (load, build, train_call, final_eval, save): where its fixed "
        "cost went; and outside it: benchmark (preparing the benchmark's files in the flow run), data (sourcing, "
        "building and logging the training rows), gpu_wait (waiting for the "
        "GPU's job before it to end), worker_start (starting the training worker, when the job found none running), "
        "release (the persistent worker's cleanup after the job, after job_seconds, before the GPU is handed over).")
    job_seconds: float = Field(
        0.0, validation_alias=AliasChoices("job_seconds", "train_wall_seconds"),
        description="Wall seconds the job held its accelerator (load, train, eval, save; a fresh process's "
        "imports too).")
    job_started_at: float | None = Field(
        None, description="Unix time the job got its accelerator (after the job before it on that GPU ended).")
    curve: list[CurvePoint] = Field(default_factory=list, description="Dev checks during training (rungs) and at the end.")
    pruned_at: float | None = Field(None, description="Training-clock seconds at which the pruner stopped it.")
    llm_dollars: float = Field(0.0, ge=0, description="LLM spend of this experiment, in US dollars: planning it (its transcript) and its hub column maps.")

    @model_validator(mode="before")
    @classmethod
    def _retired_names(cls, data: Any) -> Any:
        """Accept results stored under retired field names (MLflow artifacts of older runs)."""
        if isinstance(data, dict) and any(old in data for old in _RETIRED):
            data = dict(data)
            for old, new in _RETIRED.items():
                if old in data and new in data:
                    data.pop(old)  # both stored: today's name wins (AliasChoices takes the rest)
        return data


class LoopReport(_Model):
    """The research loop's final report (rendered by agent_prompts/report.md.j2, logged to MLflow)."""

    goal: Goal
    goal_id: str
    planner: str = Field(description="The planner's name, e.g. multifidelity or llm:openai/gpt-4o-mini.")
    stop_reason: str
    baseline_dev: EvalScore
    baseline_test: EvalScore | None = None
    champion_plan_id: str | None = None
    champion_dev: EvalScore | None = None
    champion_test: EvalScore | None = None
    experiments: list[ExperimentResult] = Field(default_factory=list)
    llm_dollars: float = Field(0.0, description="LLM spend of the whole loop, in US dollars.")
    wall_seconds: float = Field(0.0, description="Wall-clock seconds of the whole loop.")
    budget_seconds: float = Field(0.0, description="The accelerator budget, in seconds.")
    used_seconds: float = Field(0.0, description="Accelerator seconds the experiments used.")
    throughput: str = Field("", description="The throughput the loop measured (what sized its plans).")
    markdown: str = ""

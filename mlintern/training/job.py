"""The contract between the controller and a training job (JSON each way, over a file or a socket)."""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import AliasChoices, BaseModel, Field

from mlintern.evaluation.lmeval import EvalSpec
from mlintern.schemas import CurvePoint, EvalScore, ExperimentPlan, Failure, Fidelity, LossTail


class JobWithdrawn(Exception):
    """The controller withdrew a provisional job before it took the GPU: what it was planned on changed
    (the trial before it ran to its end and spent the exploration budget, or a new champion came in)."""


class GateOpened(NamedTuple):
    """A job built ahead of its GPU has it now (`at`, Unix time). `fidelity`: the limits the controller set
    when it released the job (a provisional one), replacing those it was dispatched with; None: unchanged."""

    at: float
    fidelity: Fidelity | None = None


class TrainJob(BaseModel):
    plan: ExperimentPlan
    model_path: str
    data_path: str
    output_dir: str
    device: str = "auto"
    seed: int = 0
    # Scorer context for GRPO rewards (the benchmark's own scorer).
    benchmark_kind: str = "reasoning_gym"
    benchmark_metric: str = "score"
    fidelity: Fidelity = Field(default_factory=Fidelity)
    evaluation: EvalSpec | None = Field(
        None, description="Score dev in the job, from the weights in memory (rungs and the final check).")
    confirmation: EvalSpec | None = Field(
        None, description="The confirmation set, scored in the job after the final dev check when that beats "
        "fidelity.confirm_above.")
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    # Fault injection for tests and drills (never set by a planner), e.g. {"oom_above_batch": 4}.
    faults: dict | None = None


class TrainOutcome(BaseModel):
    """What a training job measured. Its field names are ExperimentResult's (one name per concept), so
    the experiment flow fills a result from an outcome by name (mlintern.flows.experiment.record_outcome).
    The retired names (model_dir, final_loss, wall_seconds) are still read, e.g. from an older worker."""

    status: Literal["succeeded", "failed", "pruned"]
    model_path: str | None = Field(None, validation_alias=AliasChoices("model_path", "model_dir"))
    train_loss: float | None = Field(None, validation_alias=AliasChoices("train_loss", "final_loss"))
    recent_loss: LossTail | None = None
    steps: int = 0
    examples: int = 0
    tokens: int = 0
    train_seconds: float = 0.0  # trainer build + train + save, inside the job
    train_loop_seconds: float = 0.0  # optimizer loop only, dev checks excluded
    warmup_seconds: float | None = None  # training clock after the first WARMUP_STEPS steps
    eval_seconds: float = 0.0  # dev checks and the final dev score, inside the job
    job_seconds: float = Field(  # the whole job as its runner saw it (fresh process: imports too)
        0.0, validation_alias=AliasChoices("job_seconds", "wall_seconds"))
    job_started_at: float | None = None  # Unix time the job got its GPU (set by the train task)
    dev: EvalScore | None = None
    confirm: EvalScore | None = None  # scored in the job when dev beat fidelity.confirm_above
    curve: list[CurvePoint] = Field(default_factory=list)
    pruned_at: float | None = None
    stopped_by_time_limit: bool = False
    failure: Failure | None = None
    phases: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds per phase inside the job (load, build, train_call, final_eval, save): where a "
        "job's fixed cost goes (bench/worker_overhead.py reports it).")

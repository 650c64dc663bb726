"""The contract between the controller and a training process (a JSON file each way)."""

from __future__ import annotations

from pydantic import BaseModel

from mlintern.schemas import ExperimentPlan, Failure


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
    # Fault injection for tests and drills: "oom" | "nan" | "crash" (never set by a planner).
    inject_fault: str | None = None


class TrainOutcome(BaseModel):
    status: str  # "succeeded" | "failed"
    model_dir: str | None = None
    final_loss: float | None = None
    steps: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # the whole child process: imports, model load, save (GPU held)
    failure: Failure | None = None

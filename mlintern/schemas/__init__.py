"""Pydantic models for everything that crosses a process, an LLM or a UI.

A `Goal` comes from the CLI, the Prefect UI form or Python; an `ExperimentPlan` comes
from a planner (an LLM or Optuna); an `ExperimentResult` comes back from a training and
evaluation job (possibly on another host). All of them are validated before any GPU work.

Every field is documented (`Field(description=...)`): the planner LLM reads the plan's
descriptions in its JSON schema, users read the goal's in `ml-intern budget` and the Prefect UI.

Modules, by concern (import from `mlintern.schemas`; the split is an implementation detail):

- `goal`: Goal, Budget, StopRule, BenchmarkSpec, SearchSpace, Schedule, Retention
- `plan`: ExperimentPlan, DatasetRecipe, Hyperparameters (with LoraSettings, DPOSettings, GRPOSettings), Fidelity
- `results`: EvalScore, Failure, FailureKind, CurvePoint, LossTail, ExperimentResult, LoopReport
- `sizing`: Throughput, Sizing (the cost model's types and its prior)
- `context`: PlanningContext, PaperDigest (what planners see)
"""

from mlintern.schemas.common import BUILTIN_BASE_MODEL, Method
from mlintern.schemas.goal import BenchmarkSpec, Budget, Goal, Retention, Schedule, SearchSpace, StopRule
from mlintern.schemas.plan import (
    DatasetRecipe, DPOSettings, ExperimentPlan, Fidelity, GRPOSettings, Hyperparameters, LoraSettings,
)
from mlintern.schemas.results import (
    CurvePoint, EvalScore, ExperimentResult, Failure, FailureKind, LoopReport, LossTail,
)
from mlintern.schemas.sizing import Sizing, Throughput
from mlintern.schemas.context import PaperDigest, PlanningContext  # noqa: E402  (needs the modules above)

__all__ = [
    "BUILTIN_BASE_MODEL", "Method",
    "BenchmarkSpec", "Budget", "Goal", "Retention", "Schedule", "SearchSpace", "StopRule",
    "DatasetRecipe", "DPOSettings", "ExperimentPlan", "Fidelity", "GRPOSettings", "Hyperparameters", "LoraSettings",
    "CurvePoint", "EvalScore", "ExperimentResult", "Failure", "FailureKind", "LoopReport", "LossTail",
    "Sizing", "Throughput",
    "PaperDigest", "PlanningContext",
]

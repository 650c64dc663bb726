"""Planners propose the next ExperimentPlan from what the loop has seen (never test scores).

`base` holds the protocol and the plan checks; the concrete planners build on it; `factory`
(`make_planner`) sits above them. `PlanningContext` is a shared type from mlintern.schemas."""

from mlintern.planners.base import Planner, PlanRejected, validate_plan
from mlintern.planners.factory import make_planner
from mlintern.schemas import PaperDigest, PlanningContext

__all__ = ["PaperDigest", "PlanningContext", "Planner", "PlanRejected", "validate_plan", "make_planner"]

"""Planners propose the next ExperimentPlan from what the loop has seen (never test scores)."""

from mlintern.planners.base import PlanningContext, Planner, PlanRejected, validate_plan, make_planner

__all__ = ["PlanningContext", "Planner", "PlanRejected", "validate_plan", "make_planner"]

"""Checks of a goal that need no server, no network and no GPU, run before anything starts, so a
typo fails in seconds with the message that names it instead of after Prefect retries."""

from __future__ import annotations

from mlintern.errors import GoalError
from mlintern.models import check_model_name
from mlintern.schemas import Goal


def check_goal(goal: Goal) -> list[str]:
    """Every deterministic problem with the goal (empty when none was found)."""
    problems: list[str] = []
    try:
        check_model_name(goal.base_model)
    except GoalError as exc:
        problems.append(f"base_model: {exc}")
    if goal.benchmark.kind == "reasoning_gym":
        from mlintern.benchmarks.rgym import check_task

        try:
            check_task(goal.benchmark.name)
        except GoalError as exc:
            problems.append(f"benchmark.name: {exc}")
    return problems

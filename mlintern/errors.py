"""Errors that retrying cannot fix, and the retry rule that keeps Prefect from trying anyway."""

from __future__ import annotations

from typing import Any


class GoalError(ValueError):
    """The goal itself is wrong (an unknown benchmark task, a model folder that does not exist):
    the same input fails the same way every time. Tasks do not retry it, and `ml-intern run`
    checks for it before it starts a Prefect server."""


def retry_unless_goal_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry transient failures (a flaky hub read), never a GoalError."""
    return not isinstance(state.data, GoalError)

"""Nightly sweep: resume the research loop from the current MLflow champion with a nightly budget.

The champion is the registry alias `champion` of model `intern-<goal.name>` (set by the
research loop). When it exists its weights are downloaded once into the work dir (shared
storage in scale-out mode) and become tonight's `base_model`, so tonight's loop starts from
the best model so far and promotes only what beats it. Without a champion the goal's own base
model is used.

A night whose starting model did not change resumes the same MLflow experiment (same goal id):
its finished experiments are not re-run, and the budget carried over is what was already
spent plus tonight's `budget`, with a fresh patience window.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlintern.flows.research_loop import research_loop
from mlintern.loop import LoopState
from mlintern.schemas import Budget, EvalScore, Goal, LoopReport
from mlintern.settings import get_settings
from mlintern.tracking import experiment_name, find_run, init_tracking, load_history

CHAMPION_ALIAS = "champion"
NIGHTLY_BUDGET = Budget(max_experiments=4, gpu_hours=4.0, llm_dollars=1.0, wall_time_minutes=360.0)


def registered_model_name(goal: Goal) -> str:
    return f"intern-{goal.name}"  # the name mlintern.tracking.register_champion uses


@dataclass
class Champion:
    version: str
    run_id: str | None
    path: str


@task(name="fetch-champion", retries=2, retry_delay_seconds=15, cache_policy=NO_CACHE)
def fetch_champion(goal: Goal) -> Champion | None:
    """Download the champion's weights (once per model version); None if there is none yet."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    init_tracking()
    name = registered_model_name(goal)
    try:
        mv = MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as exc:  # no such registered model or alias yet
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    target = get_settings().work_dir.resolve() / "champions" / goal.name / f"v{mv.version}"
    if not (target / "config.json").exists():
        source = f"runs:/{mv.run_id}/model" if mv.run_id else mv.source
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp)))
            if not (local / "config.json").exists():
                raise FileNotFoundError(f"champion {name} v{mv.version} ({source}) has no config.json")
            try:
                local.rename(target)
            except OSError:  # another nightly got there first
                if not (target / "config.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Champion(version=str(mv.version), run_id=mv.run_id, path=str(target))


def carried_budget(goal: Goal, tonight: Budget) -> tuple[Budget, int]:
    """Budget and patience for `goal`: what its MLflow experiment already spent plus tonight's."""
    import mlflow

    init_tracking()
    patience = goal.stop.patience
    exp = mlflow.get_experiment_by_name(experiment_name(goal))
    history = load_history(exp.experiment_id) if exp is not None else []
    if not history:
        return tonight, patience
    hours = sum(r.accelerator_hours for r in history)
    baseline_run = find_run(exp.experiment_id, "baseline-dev")
    if baseline_run is not None and "intern.score" in baseline_run.data.tags:
        state = LoopState(goal=goal, baseline=EvalScore.model_validate_json(baseline_run.data.tags["intern.score"]))
        for result in history:
            state.record(result)
        patience = min(100, state.since_improvement + goal.stop.patience)
    budget = Budget(
        max_experiments=min(500, len(history) + tonight.max_experiments),
        gpu_hours=min(10_000.0, hours + tonight.gpu_hours),
        llm_dollars=tonight.llm_dollars,
        wall_time_minutes=tonight.wall_time_minutes,
    )
    return budget, patience


def nightly_goal(goal: Goal, champion: Champion | None, tonight: Budget) -> Goal:
    data = goal.model_dump(mode="json")
    if champion is not None:
        data["base_model"] = champion.path
    start = Goal.model_validate(data)
    budget, patience = carried_budget(start, tonight)
    data["budget"] = budget.model_dump(mode="json")
    data["stop"]["patience"] = patience
    return Goal.model_validate(data)


@flow(name="nightly-sweep", log_prints=True, validate_parameters=True)
def nightly_sweep(goal: Goal = Goal(), budget: Budget = NIGHTLY_BUDGET) -> LoopReport:
    logger = get_run_logger()
    champion = fetch_champion(goal)
    if champion is None:
        logger.info("no champion registered for %s yet: starting from %s", registered_model_name(goal), goal.base_model)
    else:
        logger.info("resuming from champion %s v%s (run %s): %s", registered_model_name(goal),
                    champion.version, champion.run_id, champion.path)
    tonight = nightly_goal(goal, champion, budget)
    print(f"nightly budget for goal {tonight.goal_id()}: {tonight.budget.model_dump_json()} "
          f"(patience {tonight.stop.patience})")
    return research_loop(tonight)

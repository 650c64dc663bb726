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
from mlintern.ledger import GoalLedger
from mlintern.schemas import Budget, Goal, LoopReport
from mlintern.settings import get_settings
from mlintern.tracking import registry_name

NIGHTLY_BUDGET = Budget(max_experiments=4, gpu_hours=4.0, llm_dollars=1.0, wall_time_minutes=360.0)


@dataclass
class LocalChampion:
    version: str
    run_id: str | None
    path: str


@task(name="fetch-champion", retries=2, retry_delay_seconds=15, cache_policy=NO_CACHE)
def fetch_champion(goal: Goal) -> LocalChampion | None:
    """Download the champion's weights (once per model version); None if there is none yet."""
    import mlflow

    champion = GoalLedger.open(goal).champion()
    if champion is None:
        return None
    target = get_settings().work_dir.resolve() / "champions" / goal.name / f"v{champion.version}"
    if not (target / "config.json").exists():
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=champion.source, dst_path=str(tmp)))
            if not (local / "config.json").exists():
                raise FileNotFoundError(f"champion {registry_name(goal)} v{champion.version} ({champion.source}) "
                                        "has no config.json")
            try:
                local.rename(target)
            except OSError:  # another nightly got there first
                if not (target / "config.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return LocalChampion(version=champion.version, run_id=champion.run_id, path=str(target))


def carried_budget(goal: Goal, tonight: Budget) -> tuple[Budget, int]:
    """Budget and patience for `goal`: what its MLflow experiment already spent plus tonight's."""
    patience = goal.stop.patience
    ledger = GoalLedger.find(goal)
    history, state = ledger.replay() if ledger is not None else ([], None)
    if not history:
        return tonight, patience
    hours = sum(r.accelerator_hours for r in history)
    if state is not None:
        patience = min(100, state.since_improvement + goal.stop.patience)
    budget = Budget(
        max_experiments=min(500, len(history) + tonight.max_experiments),
        gpu_hours=min(10_000.0, hours + tonight.gpu_hours),
        llm_dollars=tonight.llm_dollars,
        wall_time_minutes=tonight.wall_time_minutes,
    )
    return budget, patience


def nightly_goal(goal: Goal, champion: LocalChampion | None, tonight: Budget) -> Goal:
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
        logger.info("no champion registered for %s yet: starting from %s", registry_name(goal), goal.base_model)
    else:
        logger.info("resuming from champion %s v%s (run %s): %s", registry_name(goal),
                    champion.version, champion.run_id, champion.path)
    tonight = nightly_goal(goal, champion, budget)
    print(f"nightly budget for goal {tonight.goal_id()}: {tonight.budget.model_dump_json()} "
          f"(patience {tonight.stop.patience})")
    return research_loop(tonight)

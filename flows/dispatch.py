"""Dispatch one experiment to the `experiment` deployment (a GPU work pool) and wait for it."""

from __future__ import annotations

from prefect.deployments import run_deployment

from mlintern.schemas import ExperimentPlan, ExperimentResult, Failure, FailureKind, Fidelity, Goal
from mlintern.settings import get_settings
from mlintern.tracking import ensure_experiment, find_run, RESULT_ARTIFACT


def dispatch_experiment(goal: Goal, plan: ExperimentPlan, init_model: str, timeout_s: float,
                        fidelity: Fidelity | None = None) -> ExperimentResult:
    """Idempotent per (goal, plan): a retried or resumed controller never starts a duplicate."""
    import mlflow

    name = get_settings().experiment_deployment
    plan_id = plan.plan_id()
    flow_run = run_deployment(
        name,
        parameters={"goal": goal.model_dump(mode="json"), "plan": plan.model_dump(mode="json"),
                    "init_model": init_model, "timeout_s": timeout_s,
                    "fidelity": (fidelity or Fidelity()).model_dump(mode="json")},
        idempotency_key=f"{goal.goal_id()}-{plan_id}",
        timeout=None,
        as_subflow=True,
    )
    run = find_run(ensure_experiment(goal), "experiment", plan_id, done=True)
    if run is not None:
        text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{RESULT_ARTIFACT}")
        return ExperimentResult.model_validate_json(text)
    state = flow_run.state.name if flow_run.state else "unknown"
    return ExperimentResult(
        plan_id=plan_id, plan=plan, status="failed",
        failure=Failure(kind=FailureKind.crash,
                        message=f"experiment flow run {flow_run.id} on deployment {name} ended {state} "
                                "without recording a result (worker died?); check the worker's logs"),
    )

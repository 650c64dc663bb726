"""Dispatch one experiment to the `experiment` deployment (a GPU work pool) and wait for it."""

from __future__ import annotations

from prefect.deployments import run_deployment

from mlintern.llm import LLMTranscript
from mlintern.schemas import ExperimentPlan, ExperimentResult, Failure, FailureKind, Fidelity, Goal
from mlintern.settings import get_settings
from mlintern.ledger import GoalLedger


def dispatch_experiment(goal: Goal, plan: ExperimentPlan, init_model: str, timeout_s: float,
                        fidelity: Fidelity | None = None,
                        llm_transcript: LLMTranscript | None = None) -> ExperimentResult:
    """Idempotent per (goal, plan): a retried or resumed controller never starts a duplicate.
    `fidelity` (the schedule's dev checks and time cap) and `llm_transcript` (how the plan was made)
    travel with the run; the worker applies the one and logs the other."""
    name = get_settings().experiment_deployment
    plan_id = plan.plan_id()
    parameters = {"goal": goal.model_dump(mode="json"), "plan": plan.model_dump(mode="json"),
                  "init_model": init_model, "timeout_s": timeout_s,
                  "fidelity": (fidelity or Fidelity()).model_dump(mode="json")}
    if llm_transcript is not None:  # only when there is one: older deployments lack the parameter
        parameters["llm_transcript"] = llm_transcript.model_dump(mode="json")
    flow_run = run_deployment(
        name,
        parameters=parameters,
        idempotency_key=f"{goal.goal_id()}-{plan_id}",
        timeout=None,
        poll_interval=1,  # Prefect's default 5 s left a GPU idle 2.5 s on average after each experiment
        as_subflow=True,
    )
    result = GoalLedger.open(goal).result(plan_id)
    if result is not None:
        return result
    state = flow_run.state.name if flow_run.state else "unknown"
    return ExperimentResult(
        plan_id=plan_id, plan=plan, status="failed",
        failure=Failure(kind=FailureKind.crash,
                        message=f"experiment flow run {flow_run.id} on deployment {name} ended {state} "
                                "without recording a result (worker died?); check the worker's logs"),
    )

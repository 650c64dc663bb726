"""One experiment: build data -> train -> evaluate on dev -> record in MLflow.

Runs as a subflow of the controller on the embedded default, or as the `experiment`
deployment on a GPU work pool. Every outcome, failure included, ends as an ExperimentResult
in MLflow, so nothing is lost if the controller dies meanwhile.
"""

from __future__ import annotations

import os
import time
import traceback

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from mlintern.ledger import GoalLedger
from mlintern.llm import LLMClient, LLMTranscript
from mlintern.schemas import ExperimentPlan, ExperimentResult, Failure, FailureKind, Fidelity, Goal
from mlintern.settings import get_settings
from mlintern.training.failures import classify
from mlintern.training.job import JobWithdrawn, TrainJob, TrainOutcome
from mlintern.tasks.data import build_data
from mlintern.tasks.evaluate import eval_spec
from mlintern.tasks.setup import prepare
from mlintern.tasks.train import train, use_worker
from mlintern.worker.warm import warm_in_background


def _column_mapper(goal: Goal, transcript: LLMTranscript | None) -> LLMClient | None:
    """The LLM that proposes hub column maps, when one is configured. Its spend comes out of the
    goal's LLM budget: capped at what the goal had left when the plan was made (from the plan's
    transcript), and returned in ExperimentResult.llm_dollars for the loop to count."""
    model = goal.llm_model or get_settings().llm_model
    if not model or goal.planner in ("search", "random"):
        return None
    left = goal.budget.llm_dollars
    if transcript is not None and transcript.budget_left_dollars is not None:
        left = min(left, transcript.budget_left_dollars)
    return LLMClient(model=model, api_base=goal.llm_api_base or get_settings().llm_api_base, budget_dollars=left)


@flow(name="experiment", log_prints=True, validate_parameters=True)
def experiment(
    goal: Goal, plan: ExperimentPlan, init_model: str, timeout_s: float | None = None,
    fidelity: Fidelity | None = None,
    llm_transcript: LLMTranscript | None = None,
    hold: str | None = None,
    hold_s: float = 0.0,
) -> ExperimentResult:
    """Data, then one training job that also checks dev at the schedule's rungs (the pruner may stop
    it there) and scores dev from the weights in memory; everything lands in MLflow.

    `hold`: a provisional experiment (mlintern.release). Its rows and trainer are built, then it waits up to
    `hold_s` for the controller's word before it takes the GPU. If the controller withdraws it, its MLflow run
    is deleted (it never trained: no result, no budget spent) and the result returned says so."""
    logger = get_run_logger()
    settings = get_settings()
    ledger = GoalLedger.open(goal)
    plan_id = plan.plan_id()
    run_id = ledger.start_run(plan, flow_run.get_id(), gpu=os.environ.get("INTERN_GPU_ID"))
    out_dir = settings.work_dir.resolve() / "runs" / goal.goal_id() / plan_id
    result = ExperimentResult(plan_id=plan_id, plan=plan, status="failed", mlflow_run_id=run_id)
    if llm_transcript is not None:  # how the plan was made: the audit trail sits with its run
        ledger.log_transcript(run_id, llm_transcript)
    mapper = _column_mapper(goal, llm_transcript)
    try:
        if use_worker():  # the worker starts and loads the model while the data is built
            warm_in_background(init_model, plan.hyperparameters.packing, goal.device)
        began = time.time()
        bench = prepare(goal.benchmark)
        data_start = time.time()
        built = build_data(plan, bench, settings.work_dir.resolve(), run_id, mapper)
        data_s = time.time() - data_start
        benchmark_s = data_start - began
        result.decontaminated = built.removed_contaminated
        job = TrainJob(plan=plan, model_path=init_model, data_path=built.path, output_dir=str(out_dir),
                       device=goal.device, seed=goal.seed, benchmark_kind=goal.benchmark.kind,
                       benchmark_metric=bench.metric, fidelity=fidelity or Fidelity(),
                       evaluation=eval_spec(bench, "dev", goal.device),
                       confirmation=eval_spec(bench, "confirm", goal.device) if bench.confirm_task else None)
        outcome = train(job, run_id, ledger.tracking_uri, timeout_s or settings.train_timeout_s, hold, hold_s)
        result = record_outcome(result, outcome)
        result.phases.update(benchmark=round(benchmark_s, 3), data=round(data_s, 3))
    except JobWithdrawn as exc:
        logger.info("provisional experiment %s withdrawn before it took the GPU: %s", plan_id, exc)
        ledger.withdraw_run(run_id)
        result.failure = Failure(kind=FailureKind.crash, message=f"withdrawn: {exc}")
        return result
    except Exception as exc:  # bad data, a dead evaluation: recorded, never fatal to the loop
        logger.error("experiment %s failed: %s", plan_id, exc)
        result.failure = classify(exc, traceback.format_exc())
    # this experiment's share of the goal's one LLM spend counter: planning it, and its column maps
    result.llm_dollars = (llm_transcript.dollars if llm_transcript else 0.0) + (mapper.spent_dollars if mapper else 0.0)
    ledger.finish_run(run_id, result)
    if result.dev is not None:
        logger.info("plan %s (%s): %s, dev %s = %.4f, %d steps, %.0f accelerator-seconds", plan_id, plan.stage,
                    result.status, result.dev.metric, result.dev.value, result.steps, result.accelerator_hours * 3600)
    return result


# What a job measured, under the same names in TrainOutcome and ExperimentResult (status, dev,
# model_path, train_loss, timings, counts, curve, failure): copied by name, never by hand.
MEASURED = frozenset(TrainOutcome.model_fields) & frozenset(ExperimentResult.model_fields)


def record_outcome(result: ExperimentResult, outcome: TrainOutcome) -> ExperimentResult:
    """`result` with what the job measured. The budget counts what held the accelerator: the whole job
    (dev checks and save included; a fresh process's imports and model load too, bench/RESULTS.md section 3;
    on the persistent worker, a job built ahead of its GPU counts from when it got it)."""
    job_seconds = max(outcome.job_seconds, outcome.train_seconds)
    return ExperimentResult.model_validate({
        **result.model_dump(), **outcome.model_dump(include=MEASURED),
        "job_seconds": job_seconds, "accelerator_hours": job_seconds / 3600,
    })

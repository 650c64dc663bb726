"""The controller: baseline -> loop { plan -> run -> evaluate on dev -> decide } -> final test -> report.

Reads like the research loop it runs. All durable state lives in MLflow, so a controller
killed at any point and started again for the same goal picks up where it stopped.
"""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.experiment import experiment
from mlintern.benchmarks import PreparedBenchmark
from mlintern.llm import LLMBudgetExceeded, LLMError
from mlintern.loop import LoopState
from mlintern.planners import PlanningContext, PlanRejected, make_planner
from mlintern.planners.base import PaperDigest
from mlintern.planners.fallback import planner_summary, take_transcript, total_llm_dollars
from mlintern.report import render_report
from mlintern.selection import beats, pooled
from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Goal, LoopReport
from mlintern.settings import get_settings
from mlintern.tracking import (
    ensure_experiment,
    get_or_log_baseline,
    load_history,
    log_report,
    register_champion,
    update_result,
)
from tasks.evaluate import evaluate
from tasks.literature import gather_literature
from tasks.plan import plan_next
from tasks.setup import prepare, resolve


class IntegrityError(RuntimeError):
    pass


@flow(name="research-loop", log_prints=True, validate_parameters=True)
def research_loop(goal: Goal) -> LoopReport:
    logger = get_run_logger()
    started = time.time()
    experiment_id = ensure_experiment(goal)
    bench = prepare(goal.benchmark)
    fingerprint = bench.fingerprint()
    base_model = resolve(goal.base_model)
    baseline = get_or_log_baseline(experiment_id, goal, "dev",
                                   lambda: evaluate(base_model, bench, "dev", goal.device))
    state = LoopState(goal=goal, baseline=baseline, started=started)
    for result in load_history(experiment_id):  # resume: finished plans are never re-run
        state.record(result)
    if state.history:
        logger.info("resuming goal %s with %d finished experiments", goal.goal_id(), len(state.history))
        if state.champion is not None:  # the crash may have come before the registry update
            register_champion(goal, state.champion)

    planner = make_planner(goal)
    if planner.name.startswith("optuna"):
        print(f"No LLM configured: planning with the Optuna search planner ({planner.name}). "
              "Set INTERN_LLM_MODEL (e.g. openai/gpt-4o-mini) to use the LLM planner.")
    literature = gather_literature(goal, planner) if goal.use_literature else []

    while (reason := state.stop_reason()) is None:
        try:
            plans = plan_round(planner, state, bench, literature)
        except LLMBudgetExceeded as exc:
            logger.warning(str(exc))
            state.llm_exhausted = True
            continue
        except (LLMError, PlanRejected) as exc:  # an outage overnight ends in a report, resumable
            logger.error("planning failed: %s", exc)
            state.planner_error = str(exc)
            continue
        for result in run_experiments(goal, plans, state, base_model):
            if state.needs_confirmation(result) and bench.confirm_task:
                confirm(result, state, bench, base_model, experiment_id)
            promoted = state.record(result)
            if promoted:
                register_champion(goal, result)
                print(f"new champion {result.plan_id}: dev {result.dev.value:.4f}")
    logger.info("stopping: %s", reason)

    check_integrity(bench, fingerprint)
    report = final_report(goal, state, bench, base_model, planner, reason)
    return report


def plan_round(planner, state: LoopState, bench: PreparedBenchmark,
               literature: list[PaperDigest]) -> list[ExperimentPlan]:
    """Plan up to goal.parallel_experiments experiments (one if the last one failed)."""
    pending_failure = state.pending_failure()
    width = 1 if pending_failure else min(state.goal.parallel_experiments, state.experiments_left)
    plans: list[ExperimentPlan] = []
    for _ in range(width):
        ctx = PlanningContext(
            goal=state.goal, metric=bench.metric, baseline=state.baseline, history=state.history,
            champion=state.champion, experiments_left=state.experiments_left - len(plans),
            hours_left=state.hours_left, literature=literature, pending=plans,
            eval_files=[str(f) for f in bench.eval_files()],
            failure=pending_failure[0] if pending_failure else None,
            failure_plan=pending_failure[1] if pending_failure else None,
        )
        plans.append(plan_next(planner, ctx))
    return plans


def run_experiments(goal: Goal, plans: list[ExperimentPlan], state: LoopState,
                    base_model: str) -> list[ExperimentResult]:
    settings = get_settings()
    timeout = max(60.0, min(settings.train_timeout_s, state.wall_left_s()))

    def init_model(plan: ExperimentPlan) -> str:
        if plan.init_from == "champion" and state.champion is not None:
            return state.champion.model_path
        return base_model

    if settings.experiment_deployment:
        from flows.dispatch import dispatch_experiment

        with ThreadPoolExecutor(max_workers=len(plans)) as pool:
            # copy the Prefect run context so dispatched runs are linked as this flow's subflows
            futures = [pool.submit(contextvars.copy_context().run, dispatch_experiment, goal, p, init_model(p), timeout,
                                   take_transcript(p)) for p in plans]
            return [f.result() for f in futures]
    return [experiment(goal, plan, init_model(plan), timeout, llm_transcript=take_transcript(plan)) for plan in plans]


def confirm(result: ExperimentResult, state: LoopState, bench: PreparedBenchmark, base_model: str,
            experiment_id: str) -> None:
    """Re-evaluate a promising candidate on a second dev set drawn with another seed. Selecting
    on dev alone is optimistic, so it is promoted only if it still beats the champion, beyond the
    noise margin, on dev and confirmation items pooled (twice the items of a dev-only check)."""
    goal = state.goal
    if state.champion is not None:
        champion = state.champion.confirm or evaluate(state.champion.model_path, bench, "confirm", goal.device)
    else:
        champion = get_or_log_baseline(experiment_id, goal, "confirm",
                                       lambda: evaluate(base_model, bench, "confirm", goal.device))
    result.confirm = evaluate(result.model_path, bench, "confirm", goal.device)
    candidate_pooled, champion_pooled = pooled(result.dev, result.confirm), pooled(state.best, champion)
    result.confirmed = beats(candidate_pooled, champion_pooled, goal.stop.noise_z)
    if not result.confirmed:
        print(f"plan {result.plan_id} beat the champion on dev ({result.dev.value:.4f}) but not on dev and "
              f"confirmation pooled ({candidate_pooled.value:.4f} vs {champion_pooled.value:.4f}): not promoted")
    update_result(result)


@task(name="check-integrity", cache_policy=NO_CACHE)
def check_integrity(bench: PreparedBenchmark, fingerprint: str) -> None:
    """The evaluation data and task definitions must be byte-identical to the start of the loop."""
    now = bench.fingerprint()
    if now != fingerprint:
        raise IntegrityError(
            f"evaluation data or task definitions under {bench.include_path} changed during the loop "
            f"(sha256 {fingerprint[:12]} -> {now[:12]}): the final test is refused; restore them and rerun"
        )


def final_report(goal: Goal, state: LoopState, bench: PreparedBenchmark, base_model: str,
                 planner, reason: str) -> LoopReport:
    """The held-out test set is touched here, once, for base and champion only."""
    experiment_id = ensure_experiment(goal)
    base_test = get_or_log_baseline(experiment_id, goal, "test",
                                    lambda: evaluate(base_model, bench, "test", goal.device))
    champion_test: EvalScore | None = None
    if state.champion is not None:
        champion_test = evaluate(state.champion.model_path, bench, "test", goal.device)
    report = LoopReport(
        goal=goal, goal_id=goal.goal_id(), planner=planner_summary(planner), stop_reason=reason,
        baseline_dev=state.baseline, baseline_test=base_test,
        champion_plan_id=state.champion.plan_id if state.champion else None,
        champion_dev=state.champion.dev if state.champion else None, champion_test=champion_test,
        experiments=state.history, llm_dollars=total_llm_dollars(planner, state.history),
        wall_seconds=time.time() - state.started,
    )
    report.markdown = render_report(report)
    create_markdown_artifact(markdown=report.markdown, key=f"report-{goal.name.lower().replace('_', '-').replace('.', '-')}",
                             description=f"ml-intern report for {goal.name}")
    log_report(experiment_id, goal, report, state.champion)
    print(report.markdown)
    return report

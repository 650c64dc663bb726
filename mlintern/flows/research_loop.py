"""The controller: baseline (scored beside the first experiments) -> loop { plan -> run -> evaluate on
dev -> decide } -> final test -> report.

Reads like the research loop it runs. All durable state lives in MLflow, so a controller
killed at any point and started again for the same goal picks up where it stopped.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from mlintern.benchmarks import PreparedBenchmark
from mlintern.budget import fmt_seconds
from mlintern.flows.dispatch import dispatch_experiment, gpu_lanes
from mlintern.flows.experiment import experiment
from mlintern.ledger import GoalLedger
from mlintern.llm import LLMBudgetExceeded, LLMError
from mlintern.loop import LoopState
from mlintern.planners import Planner, PlanRejected, make_planner
from mlintern.planners.fallback import take_transcript
from mlintern.planners.multifidelity import fidelity_for
from mlintern.preview import wall_warning
from mlintern.progress import markdown_image, progress_png
from mlintern.release import Release, release_name
from mlintern.release import clear as clear_release
from mlintern.release import give as give_release
from mlintern.report import render_report
from mlintern.retention import enforce as enforce_retention
from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Goal, LoopReport, PaperDigest, PlanningContext
from mlintern.selection import beats, pooled
from mlintern.settings import get_settings
from mlintern.tasks.budget import budget_facts, loop_lanes
from mlintern.tasks.evaluate import evaluate, timed_evaluate
from mlintern.tasks.literature import gather_literature
from mlintern.tasks.plan import NoPlan, plan_next
from mlintern.tasks.setup import prepare, resolve
from mlintern.tasks.train import use_worker
from mlintern.worker.warm import warm_in_background


class IntegrityError(RuntimeError):
    pass


@flow(name="research-loop", log_prints=True, validate_parameters=True)
def research_loop(goal: Goal) -> LoopReport:
    logger = get_run_logger()
    started = time.time()
    ledger = GoalLedger.open(goal)
    if use_worker() and ledger.baseline("dev") is None:  # its imports overlap the benchmark's preparation
        warm_in_background()
    bench = prepare(goal.benchmark)
    fingerprint = bench.fingerprint()
    base_model = resolve(goal.base_model)
    state = LoopState(goal=goal, baseline=ledger.baseline("dev"), started=started,
                      literature_dollars=ledger.literature_dollars(), **budget_facts(goal, base_model, bench))
    if state.baseline is None:
        state.pending_baseline, state.pending_base_test = base_scores_beside(ledger, base_model, bench)
    try:
        return research(state, ledger, bench, fingerprint, base_model)
    finally:  # a loop that failed leaves no base-model evaluation running behind the flow
        for measuring in (state.pending_baseline, state.pending_base_test):
            if measuring is not None and not measuring.cancel():
                wait([measuring])


def research(state: LoopState, ledger: GoalLedger, bench: PreparedBenchmark, fingerprint: str,
             base_model: str) -> LoopReport:
    """Resume what the ledger holds, plan and run experiments until a stop reason holds, then the report."""
    logger = get_run_logger()
    goal = state.goal
    for result in ledger.history():  # resume: finished plans are never re-run
        state.record(result)
    if state.history:
        logger.info("resuming goal %s with %d finished experiments", goal.goal_id(), len(state.history))
        if state.champion is not None:  # the crash may have come before the registry update
            ledger.register_champion(state.champion)

    planner = make_planner(goal)
    print(f"Planner: {planner.name}. Budget: {fmt_seconds(state.budget_s)} of accelerator time, "
          f"{goal.budget.max_experiments} experiments at most; throughput prior: {state.prior.describe()}; "
          f"exploration dev checks at {', '.join(f'{r:.1f}' for r in state.rungs)} s of training.")
    if (warning := wall_warning(goal, loop_lanes(goal))):
        logger.warning(warning)
    if planner.name.startswith("multi-fidelity (optuna") and goal.planner == "auto":
        print("No LLM configured: configurations come from Optuna TPE. Set INTERN_LLM_MODEL "
              "(e.g. openai/gpt-4o-mini) to let an LLM propose them.")
    if goal.use_literature:
        literature, state.literature_dollars = gather_literature(goal, planner.client), ledger.literature_dollars()
    else:
        literature = []

    run_loop(goal, planner, state, bench, literature, base_model, ledger)
    state.await_baseline()  # the loop may have stopped before any result needed it
    reason = state.stop_reason() or "stopped"
    logger.info("stopping: %s", reason)
    enforce_retention(goal, state.history, state.champion)  # also after a resume that stops at once

    check_integrity(bench, fingerprint)
    return final_report(ledger, state, bench, base_model, planner, reason)


_base_locks: dict[tuple[str, str], threading.Lock] = {}
_base_locks_guard = threading.Lock()


def base_score(ledger: GoalLedger, split: str, base_model: str, bench: PreparedBenchmark,
               measured: Future | None = None) -> EvalScore:
    """The base model's score on a split: evaluated once per goal, then read from the ledger (a caller
    that asks while another thread evaluates it waits for that evaluation instead of starting a second).
    `measured`: its evaluation already under way beside the loop, recorded here (evaluated again if it failed)."""
    with _base_locks_guard:
        lock = _base_locks.setdefault((ledger.experiment_id, split), threading.Lock())
    with lock:
        recorded = ledger.baseline(split)
        if recorded is not None:
            return recorded
        score = None
        if measured is not None:
            try:
                score = measured.result()
            except Exception as exc:  # noqa: BLE001 - reported, then measured again here
                get_run_logger().warning("the base model's %s score measured beside the loop failed (%s): "
                                         "evaluating it again", split, exc)
        if score is None:
            score = evaluate(base_model, bench, split, ledger.goal.device)
        return ledger.record_baseline(split, score)


def base_scores_beside(ledger: GoalLedger, base_model: str, bench: PreparedBenchmark) -> tuple[Future, Future]:
    """Score the base model in a thread beside the first experiments, on dev and then, where the benchmark
    has one, on the confirmation set (the first candidate that beats it on dev is checked there); returns
    the dev score's future. The first plans do not need it; their results do (LoopState.await_baseline).
    On one H200 this was 62 s between the loop's trigger and its first dispatch (bench/RESULTS.md part 13).
    Last, the held-out test: its future (second) is only read by the final report, which records it then,
    so no plan sees it, and that evaluation no longer stands between the last job and the report."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="base-scores")
    dev = pool.submit(contextvars.copy_context().run, base_score, ledger, "dev", base_model, bench)
    if bench.confirm_task:  # its failure here is not fatal: confirm() evaluates it again, and reports that one
        pool.submit(contextvars.copy_context().run, base_score, ledger, "confirm", base_model, bench)
    test = pool.submit(contextvars.copy_context().run, evaluate, base_model, bench, "test", ledger.goal.device)
    pool.shutdown(wait=False)
    return dev, test


@dataclass
class Flight:
    """An experiment dispatched and not yet finished: its plan, the GPU lane it went to, when, the most
    its job may take (its fidelity's `job_limit_s`) and the least (`earliest_s`: a trial pruned at its first
    rung). A provisional one (`hold`, the name of its release) waits, built, for the controller's word when
    the job before it on its lane ends; `based_on` is the champion it was planned on."""

    plan: ExperimentPlan
    lane: int
    dispatched: float
    job_limit_s: float
    earliest_s: float = 0.0
    hold: str | None = None
    based_on: str | None = None
    word: str | None = None  # "released" or "withdrawn", once given

    @property
    def live(self) -> bool:
        return self.word != "withdrawn"


def run_loop(goal: Goal, planner: Planner, state: LoopState, bench: PreparedBenchmark, literature: list[PaperDigest],
             base_model: str, ledger: GoalLedger) -> None:
    """Keep every GPU lane busy (`parallel_experiments` of them; one where no experiment deployment
    dispatches them); plan the next experiment as soon as a lane has room, until a stop reason holds.
    Where each GPU has its own work queue, a lane holds `queue_depth` experiments: one trains while the
    next one's flow run starts and builds its rows, and takes the GPU the moment it frees. Where the
    planner has nothing for that slot until the running job ends, a provisional plan takes it (`speculate`):
    it is built meanwhile and released or withdrawn when that job ends."""
    logger = get_run_logger()
    dispatch = get_settings().experiment_deployment is not None
    width = loop_lanes(goal)
    queues: list[str | None] = list(gpu_lanes(width)) if dispatch else []
    if queues and len(queues) < width:
        logger.warning("parallel_experiments is %d but only %d GPU work queue(s) have a worker (%s): running %d "
                       "experiment(s) at once", width, len(queues), ", ".join(queues), len(queues))
        width = len(queues)
    lanes = queues or [None] * width
    depth = get_settings().queue_depth if queues else 1
    speculate = get_settings().speculate and depth > 1 and hasattr(planner, "still_wanted")
    in_flight: dict[Future, Flight] = {}
    finished = False  # results recorded since the progress was last published
    with ThreadPoolExecutor(max_workers=2 * len(lanes) * depth) as pool:  # withdrawn ones end beside
        while True:
            while state.stop_reason() is None and _room(state, _live(in_flight), len(lanes) * depth):
                flights = _live(in_flight)
                lane, ahead_s = _free_lane(flights, len(lanes), lambda p: _outside_s(state, p))
                pending = [f.plan for f in flights]
                plan = next_plan(planner, state, bench, literature, pending, width, ahead_s)
                hold = None
                if plan is None and speculate and ahead_s > 0 and _may_speculate(state, flights, lane):
                    _, soonest_s = _free_lane(flights, len(lanes), lambda p: _outside_s(state, p),
                                              length=lambda f: f.earliest_s)
                    plan = next_plan(planner, state, bench, literature, pending, width, soonest_s, provisional=True)
                    if plan is not None:
                        state.planner_done = None  # the first answer was "not until the running job ends"
                        hold, ahead_s = release_name(goal.goal_id(), plan.plan_id()), soonest_s
                        print(f"provisional {plan.stage} {plan.plan_id()} queued behind the running job on lane "
                              f"{lane}: released only if the planner still wants it when that job ends")
                if plan is None:
                    break
                fidelity = fidelity_for(plan, goal, state.sizing(pending, optimistic=hold is not None),
                                        state.history, state.rungs, lanes=len(lanes) * depth,
                                        wall_s=state.experiment_wall_s(ahead_s, plan.dataset.num_examples),
                                        confirm_above=state.best if bench.confirm_task and state.baseline_known()
                                        else None)
                hold_s = _hold_s(state, flights, lane) if hold else 0.0
                run = _runner(goal, plan, state, base_model, fidelity, dispatch, lanes[lane], hold, hold_s)
                if not dispatch:  # embedded: the experiment is a subflow in this thread
                    began = time.time()
                    result = run()
                    state.note_overhead(time.time() - began, result)
                    finish(result, state, bench, base_model, ledger, planner)
                    publish_progress(state, ledger, planner)
                    continue
                flight = Flight(plan, lane, time.time(), fidelity.job_limit_s or state.wall_left_s(),
                                earliest_s=_earliest_s(state, plan, fidelity), hold=hold,
                                based_on=state.champion.plan_id if state.champion else None)
                in_flight[pool.submit(_timed, contextvars.copy_context().run, run)] = flight
            if finished:  # after the freed GPUs got their next experiment, not before
                publish_progress(state, ledger, planner)
                finished = False
            if not in_flight:
                return
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                flight = in_flight.pop(future)
                result, seconds = future.result()
                if flight.hold is not None:
                    clear_release(flight.hold)
                if not flight.live:  # withdrawn before it took the GPU: it trained nothing, spent nothing
                    continue
                if flight.word is None and flight.hold is not None:  # it ended before its word (a failure)
                    logger.warning("provisional experiment %s ended before the controller's word: %s",
                                   flight.plan.plan_id(), result.failure.message if result.failure else result.status)
                state.note_overhead(seconds, result)
                finish(result, state, bench, base_model, ledger, planner)
                finished = True
            # "nothing left to fund" was judged with running experiments at their predicted cost;
            # ask again now that one has finished at its real cost
            state.planner_done = None
            for flight in _next_up(in_flight):  # provisional ones now first on their GPU: the word, at once
                decide(flight, planner, state, bench, literature, [f.plan for f in _live(in_flight) if f is not flight],
                       width, len(lanes) * depth)


def _live(in_flight: dict[Future, Flight]) -> list[Flight]:
    """The flights that count: all but the withdrawn ones (which end within seconds, without the GPU)."""
    return [f for f in in_flight.values() if f.live]


def _may_speculate(state: LoopState, flights: list[Flight], lane: int) -> bool:
    """A provisional plan goes only behind a job the loop is sure of (not behind a provisional one without
    its word), and not while a failure waits for its fix."""
    ahead = [f for f in flights if f.lane == lane]
    return bool(ahead) and all(f.hold is None or f.word == "released" for f in ahead) and state.pending_failure() is None


def _next_up(in_flight: dict[Future, Flight]) -> list[Flight]:
    """Provisional flights without a word whose lane has nothing live before them any more."""
    live = _live(in_flight)
    return [f for f in live if f.hold is not None and f.word is None
            and not any(o.lane == f.lane and o.dispatched < f.dispatched for o in live)]


def decide(flight: Flight, planner: Planner, state: LoopState, bench: PreparedBenchmark,
           literature: list[PaperDigest], pending: list[ExperimentPlan], width: int, capacity: int) -> None:
    """The word on a provisional experiment whose GPU is free now: released, with the limits the budget and
    the wall clock allow now (the pruner's peers as they are now), if the planner still wants it and the
    champion it was planned on still stands; withdrawn otherwise (the planner is asked for the slot again)."""
    plan = flight.plan
    ctx = planning_context(state, bench, literature, pending, width, 0.0)
    champion = state.champion.plan_id if state.champion else None
    keep = (state.stop_reason() is None and state.pending_failure() is None and planner.still_wanted(plan, ctx)
            and (plan.init_from != "champion" or champion == flight.based_on))
    if keep:
        fidelity = fidelity_for(plan, state.goal, state.sizing(pending), state.history, state.rungs, lanes=capacity,
                                wall_s=state.built_wall_s(),
                                confirm_above=state.best if bench.confirm_task and state.baseline_known() else None)
        give_release(flight.hold, Release(fidelity=fidelity))
        flight.word, flight.job_limit_s = "released", fidelity.job_limit_s or flight.job_limit_s
    else:
        give_release(flight.hold, Release(withdraw=True))
        flight.word = "withdrawn"
    print(f"provisional {plan.stage} {plan.plan_id()}: {flight.word}")


def _hold_s(state: LoopState, flights: list[Flight], lane: int) -> float:
    """How long a provisional experiment waits for its word at most: until the jobs before it on its lane
    have had their time limits, and 10 minutes more (then it withdraws itself)."""
    _, ahead_s = _free_lane([f for f in flights if f.lane == lane], 1, lambda p: _outside_s(state, p))
    return ahead_s + 600.0


def _earliest_s(state: LoopState, plan: ExperimentPlan, fidelity) -> float:
    """The least a job may hold its GPU: an exploration trial pruned at its first rung; else its limit."""
    limit = fidelity.job_limit_s or state.wall_left_s()
    return min(limit, state.pruned_cost_s()) if plan.stage == "explore" and state.rungs else limit


def _free_lane(flights: list[Flight], lanes: int, outside_s: Callable[[ExperimentPlan], float],
               now: float | None = None, length: Callable[[Flight], float] = lambda f: f.job_limit_s,
               ) -> tuple[int, float]:
    """The lane for the next experiment: the one with the fewest experiments in flight, then the one that
    frees first; and the seconds until it frees, as far as the jobs already sent there may take (each
    starts once the one before it ends, and once its own preparation, `outside_s(plan)`, is done; each
    takes `length`, by default its limit)."""
    now = time.time() if now is None else now
    free_at = []
    for lane in range(lanes):
        end = now
        for f in sorted((f for f in flights if f.lane == lane), key=lambda f: f.dispatched):
            end = max(end, f.dispatched + outside_s(f.plan)) + length(f)
        free_at.append((sum(f.lane == lane for f in flights), end, lane))
    count, end, lane = min(free_at)
    return lane, (end - now if count else 0.0)


def _outside_s(state: LoopState, plan: ExperimentPlan) -> float:
    """The seconds `plan` is expected to take outside its job, for the rows it builds (0 before any is measured)."""
    return state.overhead_s(plan.dataset.num_examples) or 0.0


def _timed(call, *args) -> tuple[ExperimentResult, float]:
    """`call(*args)` and the wall seconds it took (an experiment, from its dispatch to its result)."""
    began = time.time()
    return call(*args), time.time() - began


def _room(state: LoopState, flights: list[Flight], capacity: int) -> bool:
    if len(state.history) + len(flights) >= state.goal.budget.max_experiments:
        return False
    return len(flights) < (1 if state.pending_failure() else capacity)


def planning_context(state: LoopState, bench: PreparedBenchmark, literature: list[PaperDigest],
                     pending: list[ExperimentPlan], lanes: int = 1, ahead_s: float = 0.0,
                     provisional: bool = False) -> PlanningContext:
    """What a planner sees of the loop now (`ahead_s`: seconds until the plan's GPU frees)."""
    failure = state.pending_failure()
    return PlanningContext(
        goal=state.goal, metric=bench.metric, baseline=state.baseline, history=state.history,
        champion=state.champion, experiments_left=state.experiments_left - len(pending),
        hours_left=state.hours_left, literature=literature, pending=pending,
        eval_files=[str(f) for f in bench.eval_files()],
        failure=failure[0] if failure else None, failure_plan=failure[1] if failure else None,
        sizing=state.sizing(pending, optimistic=provisional), on_gpu=state.on_gpu, rungs=state.rungs, lanes=lanes,
        wall_left_s=state.experiment_wall_s(ahead_s), gpu_free_in_s=max(0.0, ahead_s),
        llm_dollars=state.llm_dollars, provisional=provisional,
    )


def next_plan(planner: Planner, state: LoopState, bench: PreparedBenchmark, literature: list[PaperDigest],
              pending: list[ExperimentPlan], lanes: int = 1, ahead_s: float = 0.0,
              provisional: bool = False) -> ExperimentPlan | None:
    """The planner's next plan, or None (with the reason kept on the state) when there is none. `ahead_s`:
    seconds until its GPU frees (the jobs queued there before it). `provisional`: a plan on the likely
    outcome of the running jobs (PlanningContext.provisional)."""
    logger = get_run_logger()
    ctx = planning_context(state, bench, literature, pending, lanes, ahead_s, provisional)
    try:
        answer = plan_next(planner, ctx)
        if not isinstance(answer, NoPlan):
            return answer
        state.planner_done = answer.reason
    except LLMBudgetExceeded as exc:
        logger.warning(str(exc))
        state.llm_exhausted = True
    except (LLMError, PlanRejected) as exc:  # an outage overnight ends in a report, resumable
        logger.error("planning failed: %s", exc)
        state.planner_error = str(exc)
    return None


def _runner(goal: Goal, plan: ExperimentPlan, state: LoopState, base_model: str, fidelity, dispatch: bool,
            work_queue: str | None = None, hold: str | None = None, hold_s: float = 0.0):
    timeout = max(60.0, min(get_settings().train_timeout_s, state.wall_left_s()))
    transcript = take_transcript(plan)  # how an LLM made the plan: logged to the plan's run
    if transcript is not None and transcript.dollars:
        state.inflight_dollars[plan.plan_id()] = transcript.dollars  # the result carries it once finished
    init = state.champion.model_path if plan.init_from == "champion" and state.champion is not None else base_model
    if dispatch:
        return lambda: dispatch_experiment(goal, plan, init, timeout, fidelity, transcript, work_queue, hold, hold_s)
    return lambda: experiment(goal, plan, init, timeout, fidelity, llm_transcript=transcript)


def finish(result: ExperimentResult, state: LoopState, bench: PreparedBenchmark, base_model: str,
           ledger: GoalLedger, planner: Planner) -> None:
    """Confirm a promising candidate, record the result, promote it if it won (the caller publishes the
    progress, once the freed GPU has its next experiment)."""
    state.await_baseline()  # a result is compared with it, and reported beside it (a failed one too)
    if state.needs_confirmation(result) and bench.confirm_task:
        confirm(result, state, bench, base_model, ledger)
    if state.record(result):
        ledger.register_champion(result)
        print(f"new champion {result.plan_id} ({result.plan.stage}): dev {result.dev.value:.4f}")
    print(enforce_retention(state.goal, state.history, state.champion).line())  # weights of losers go


def confirm(result: ExperimentResult, state: LoopState, bench: PreparedBenchmark, base_model: str,
            ledger: GoalLedger) -> None:
    """Re-evaluate a promising candidate on a second dev set drawn with another seed. Selecting
    on dev alone is optimistic, so it is promoted only if it still beats the champion, beyond the
    noise margin, on dev and confirmation items pooled (twice the items of a dev-only check).
    The accelerator time of these checks is charged to the candidate."""
    goal = state.goal
    if state.champion is not None:
        champion = state.champion.confirm
        if champion is None:
            champion, seconds = timed_evaluate(state.champion.model_path, bench, "confirm", goal.device)
            result.eval_seconds += seconds
            result.accelerator_hours += seconds / 3600
    else:
        champion = base_score(ledger, "confirm", base_model, bench)
    if result.confirm is None:  # else the job scored it from the weights in memory (Fidelity.confirm_above)
        result.confirm, seconds = timed_evaluate(result.model_path, bench, "confirm", goal.device)
        result.eval_seconds += seconds
        result.accelerator_hours += seconds / 3600
    candidate_pooled, champion_pooled = pooled(result.dev, result.confirm), pooled(state.best, champion)
    result.confirmed = beats(candidate_pooled, champion_pooled, goal.stop.noise_z)
    if not result.confirmed:
        print(f"plan {result.plan_id} beat the champion on dev ({result.dev.value:.4f}) but not on dev and "
              f"confirmation pooled ({candidate_pooled.value:.4f} vs {champion_pooled.value:.4f}): not promoted")
    ledger.update(result)


def publish_progress(state: LoopState, ledger: GoalLedger, planner: Planner) -> None:
    """After every experiment: the report so far (dev scores only; no held-out test until the end)
    and the progress chart, in MLflow and as Prefect artifacts, so a person can follow the loop
    while it runs."""
    goal = state.goal
    png = progress_png(state.history, state.baseline, state.budget_s, f"{goal.name}: {state.usage()}")
    ledger.log_progress(png)
    report = loop_report(state, planner, f"running: {state.usage()}")
    ledger.write_report(report, state.champion, final=False)
    best = state.best
    create_markdown_artifact(
        key=f"progress-{_slug(goal.name)}",
        description=f"ml-intern progress for {goal.name}",
        markdown=(f"# {goal.name}: progress\n\n{state.usage()}; best dev {best.value:.4f} "
                  f"({'champion ' + state.champion.plan_id if state.champion else 'base model'}).\n\n"
                  f"{markdown_image(png)}\n\n{report.markdown}"),
    )


def loop_report(state: LoopState, planner: Planner, reason: str, base_test: EvalScore | None = None,
                champion_test: EvalScore | None = None) -> LoopReport:
    goal, champion = state.goal, state.champion
    report = LoopReport(
        goal=goal, goal_id=goal.goal_id(), planner=planner.summary(), stop_reason=reason,
        baseline_dev=state.baseline, baseline_test=base_test,
        champion_plan_id=champion.plan_id if champion else None,
        champion_dev=champion.dev if champion else None, champion_test=champion_test,
        experiments=state.history, llm_dollars=state.llm_dollars,
        wall_seconds=time.time() - state.started, budget_seconds=state.budget_s, used_seconds=state.used_s,
        throughput=state.throughput().describe(),
    )
    report.markdown = render_report(report)
    return report


@task(name="check-integrity", cache_policy=NO_CACHE)
def check_integrity(bench: PreparedBenchmark, fingerprint: str) -> None:
    """The evaluation data and task definitions must be byte-identical to the start of the loop."""
    now = bench.fingerprint()
    if now != fingerprint:
        raise IntegrityError(
            f"evaluation data or task definitions under {bench.include_path} changed during the loop "
            f"(sha256 {fingerprint[:12]} -> {now[:12]}): the final test is refused; restore them and rerun"
        )


def final_report(ledger: GoalLedger, state: LoopState, bench: PreparedBenchmark, base_model: str,
                 planner: Planner, reason: str) -> LoopReport:
    """The held-out test set, once each for base and champion only: the champion's is evaluated here, the
    base model's was measured beside the loop (`state.pending_base_test`) and is recorded here."""
    goal = state.goal
    base_test = base_score(ledger, "test", base_model, bench, measured=state.pending_base_test)
    champion_test: EvalScore | None = None
    if state.champion is not None:
        champion_test = evaluate(state.champion.model_path, bench, "test", goal.device)
    report = loop_report(state, planner, reason, base_test, champion_test)
    png = progress_png(state.history, state.baseline, state.budget_s, f"{goal.name}: {state.usage()}")
    create_markdown_artifact(markdown=report.markdown + "\n## Progress\n\n" + markdown_image(png) + "\n",
                             key=f"report-{_slug(goal.name)}", description=f"ml-intern report for {goal.name}")
    ledger.write_report(report, state.champion, final=True)
    print(report.markdown)
    return report


def _slug(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")

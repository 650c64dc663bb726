"""The research loop's policy: multi-fidelity search, then scale-up of the winner.

1. Explore (the first `schedule.explore_fraction` of the accelerator budget, or of what the GPUs can
   spend before the wall-clock cap where that is less): new configurations,
   from Optuna TPE (the first one is the defaults) or from the LLM, each sized to train R seconds
   from the base model, with dev checks at rungs R/eta**k. Optuna's SuccessiveHalvingPruner, run
   inside the training job (mlintern.training.pruning), stops a trial at a rung unless it is in the
   top 1/eta of the trials that reached that rung, so most trials cost R/eta**(rungs-1).
2. Scale up (the rest): the champion (the best configuration, beyond evaluation noise) is continued
   on fresh rows with everything that is left, in one run (or `schedule.scale_up_lanes` parallel
   ones, or as many as the wall-clock cap needs to spend it); if measurement error leaves budget
   over, another continuation follows, until what is left cannot fund an experiment.

Nothing here writes a scheduler: the promotion decision is Optuna's pruner, the configurations are
Optuna's sampler (or the LLM); this module only decides which phase the budget is in and sizes plans.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from mlintern.budget import Sizing, explore_budget_s, paced_steps, rung_seconds
from mlintern.llm import LLMClient
from mlintern.planners.base import Planner, PlannerDone, PlannerWaiting, PlanRejected, validate_plan
from mlintern.planners.rules import fix_plan
from mlintern.planners.search import ConfigProposer, default_config, make_plan, plan_params
from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Fidelity, Goal, PlanningContext
from mlintern.selection import beats, noise_margin

log = logging.getLogger(__name__)
SCALE_UP_MARGIN = 0.02  # of the whole budget, kept back for estimation error
FAST_PATH_MIN_S = 600.0  # runs this long repay flex attention's compile (bench/RESULTS.md part 1)
NO_SIGNAL_TRIALS = 3  # finished exploration trials before "no signal" can end the exploration


@dataclass
class MultiFidelityPlanner:
    proposer: Planner | None = None  # an LLM planner; None = Optuna TPE over configurations
    name: str = ""

    def __post_init__(self) -> None:
        self.configs = ConfigProposer()
        self.name = f"multi-fidelity ({self.proposer.name if self.proposer else 'optuna-tpe'})"

    @property
    def client(self) -> LLMClient | None:
        """The LLM proposer's client (paper digests share it), or None when TPE proposes."""
        return self.proposer.client if self.proposer is not None else None

    def summary(self) -> str:
        return self.name

    def propose(self, ctx: PlanningContext) -> ExperimentPlan:
        if ctx.failure is not None and ctx.failure_plan is not None:
            return self._fix(ctx)
        sz = ctx.size()
        if (spent := _unfunded(ctx, sz)) is not None:
            raise PlannerDone(spent)
        if self.exploring(ctx, sz):
            return self._explore(ctx, sz)
        trials = sum(p.stage == "explore" for p in ctx.pending)
        if trials and not _provisional_scale_up(ctx, trials) and not (
                ctx.champion is not None and scale_up_lanes(ctx, sz) > 1 and ctx.gpu_free_in_s == 0):
            # a scale-up continues the exploration's winner, so it waits for the trials still running
            # (on 2 lanes one started from the base model beside the only trial and overspent: part 10d).
            # Not when the wall clock needs several scale-up lanes: then a GPU left waiting is budget lost
            # for good (2 x H200: 62 and 84 s idle at the exploration's end, part 11c), so the free GPU
            # continues the winner so far, and the lanes freed later continue the final one. A queue slot
            # behind a running job is not a free GPU: a scale-up planned there was fixed a minute before it
            # could start, on the one result then in (2 x H200: 111 GPU-s continuing a dev-0.08 trial
            # while a dev-0.54 one was finishing, bench/RESULTS.md part 14). A provisional plan may, behind
            # the last trial: the loop releases it only if that trial leaves the choice as it was.
            raise PlannerWaiting(f"waiting for {trials} exploration trial(s) to finish before scaling up their winner")
        running = sum(p.stage == "scale_up" for p in ctx.pending)
        if running and running >= scale_up_lanes(ctx, sz):
            # every scale-up lane is busy: what is left continues the chain once its run is done, rather
            # than forking the same champion on another GPU (2 lanes on CPU did that: part 10d)
            raise PlannerWaiting(f"waiting for the scale-up chain's running segment to finish ({running} running)")
        return self._scale_up(ctx, sz)

    def exploring(self, ctx: PlanningContext, sz: Sizing) -> bool:
        goal = ctx.goal
        # the loop's sizing already counts the running experiments at their predicted cost (LoopState.sizing),
        # as experiments_left is already net of them: adding them again held 2 x H200 lanes to one trial at a
        # time, the other GPU idle (bench/RESULTS.md part 11). One experiment must stay for the scale-up.
        return (sz.used_s < explore_budget_s(goal, ctx.lanes) and ctx.experiments_left > 1
                and not (goal.target_score is not None and (best := _best(ctx)) is not None and best >= goal.target_score)
                and not no_signal(ctx))

    def _explore(self, ctx: PlanningContext, sz: Sizing) -> ExperimentPlan:
        trials = [r for r in ctx.history if r.plan.stage == "explore"]
        rungs = ctx.rungs or rung_seconds(ctx.goal, sz, _default_batch(ctx), ctx.lanes)
        if self.proposer is not None:
            plan = self.proposer.propose(ctx).model_copy(update={"stage": "explore"})
            return validate_plan(plan, ctx)
        params = self.configs.propose_config(ctx, trials, ctx.goal.schedule.reduction_factor)
        steps = sz.throughput.steps_in(rungs[-1], params["batch_size"], params["method"])
        if ctx.wall_left_s is not None:  # a trial too long for the wall clock is cut to it
            steps = min(steps, sz.steps_for_job(ctx.wall_left_s, params["batch_size"], params["method"], len(rungs)))
        steps = min(sz.max_steps, max(sz.min_steps, steps))
        plan = make_plan(params, steps, ctx, stage="explore", seed=0,
                         rationale=f"Exploration trial {len(trials) + len(ctx.pending) + 1}: Optuna TPE "
                                   f"configuration, {rungs[-1]:.0f} s of training from the base model, dev checks at "
                                   f"{', '.join(f'{r:.0f}' for r in rungs)} s (successive halving, eta "
                                   f"{ctx.goal.schedule.reduction_factor}).")
        return validate_plan(plan, ctx)

    def still_wanted(self, plan: ExperimentPlan, ctx: PlanningContext) -> bool:
        """Whether a provisional plan is still what this planner would run now that the job it was queued
        behind has ended (`ctx`: the loop as it is now, the plan itself not pending): a trial while the
        exploration budget still funds one; a scale-up once exploring is over, of the configuration that
        would be chosen now. Its size is not judged here: the loop releases it with the limits of now."""
        sz = ctx.size()
        if _unfunded(ctx, sz) is not None:
            return False
        if plan.stage == "explore":
            return self.exploring(ctx, sz)
        if plan.stage != "scale_up" or self.exploring(ctx, sz) or any(p.stage == "explore" for p in ctx.pending):
            return False
        if self.proposer is not None:
            return True
        chosen, planned = self._scale_up_choice(ctx)[0], plan_params(plan)
        if plan.hyperparameters.packing:  # fast_path packed it: its batch holds rows of tokens, not examples
            chosen, planned = {**chosen, "batch_size": 0}, {**planned, "batch_size": 0}
        return chosen == planned

    def _scale_up_choice(self, ctx: PlanningContext) -> tuple[dict, str, object, str]:
        """What the next scale-up continues: its configuration, `init_from`, the hyperparameters it
        inherits, and a sentence saying where they come from."""
        champion = ctx.champion
        running = sum(p.stage == "scale_up" for p in ctx.pending)
        configs = _ranked_configs(ctx.history)
        # When dev cannot rank the trials, their training loss on fresh rows may (`loss_pick`); when that
        # cannot either, the best guess is the defaults, not the luckiest trial's configuration (arith_hard,
        # bench/RESULTS.md part 8a: one default run 0.035 held-out, the loop 0.004-0.012).
        quiet = no_signal(ctx)
        pick = loss_pick(ctx)
        if champion is not None:
            params, init, base = plan_params(champion.plan), "champion", champion.plan.hyperparameters
            source = f"the champion {champion.plan_id} (dev {champion.dev.value:.4f})"
            others = [c for c in configs if c != params]
            if pick is not None and not running:
                params, note = pick
                source += f" with {note}"
            elif quiet:
                params = default_config(ctx)
                source += " with the default configuration (the trials were within noise of each other)"
            elif running and others:
                params = others[(running - 1) % len(others)]
                source += f" with the learning rate and batch of explored configuration #{running + 1}"
        else:
            init, base = "base", None
            if pick is not None:
                params, note = pick
                source = note
            else:
                params = configs[0] if configs and not quiet else default_config(ctx)
                source = "the best explored configuration" if configs and not quiet else "the default configuration"
        return params, init, base, source

    def _scale_up(self, ctx: PlanningContext, sz: Sizing) -> ExperimentPlan:
        """Continue the champion with everything that is left (minus a small margin). With several
        scale-up lanes (`schedule.scale_up_lanes`, default 1) on free GPUs, what is left is split among
        that many continuations, each with another explored configuration's learning rate and batch
        (the best first), and the best one wins. An LLM proposer plans the content of the run; its size
        is the schedule's."""
        if self.proposer is not None:
            return self._llm_scale_up(ctx, sz)
        running = sum(p.stage == "scale_up" for p in ctx.pending)
        params, init, base, source = self._scale_up_choice(ctx)
        job_s = _lane_share(ctx, sz, running)
        steps = min(sz.max_steps, sz.steps_for_job(job_s, params["batch_size"], params["method"]))
        if steps < sz.min_steps:
            raise PlannerDone(_spent(ctx, sz))
        segment = 1 + sum(r.plan.stage == "scale_up" for r in ctx.history) + running
        plan = make_plan(params, steps, ctx, stage="scale_up", init_from=init, seed=segment, base=base,
                         rationale=f"Scale-up {segment}: continue {source} on fresh rows with "
                                   f"{job_s:.0f} of the {sz.left_s:.0f} accelerator-seconds left ({steps} steps).")
        plan.hyperparameters.warmup_ratio = max(plan.hyperparameters.warmup_ratio, 0.03)
        return validate_plan(fast_path(plan, ctx, sz, job_s), ctx)

    def _llm_scale_up(self, ctx: PlanningContext, sz: Sizing) -> ExperimentPlan:
        plan = self.proposer.propose(ctx)
        hp = plan.hyperparameters
        job_s = _lane_share(ctx, sz, sum(p.stage == "scale_up" for p in ctx.pending))
        eps = sz.throughput.examples_per_step(hp)
        steps = sz.steps_for_job(job_s, eps, plan.method)
        if ctx.goal.search_space.max_steps is not None:
            steps = min(steps, ctx.goal.search_space.max_steps[1])
        if steps < sz.min_steps:
            raise PlannerDone(_spent(ctx, sz))
        segment = 1 + sum(r.plan.stage == "scale_up" for r in ctx.history) + sum(p.stage == "scale_up" for p in ctx.pending)
        rows = max(8, int(paced_steps("scale_up", steps, sz.throughput, hp.packing) * eps))
        if ctx.goal.search_space.num_examples is not None:
            rows = min(max(rows, ctx.goal.search_space.num_examples[0]), ctx.goal.search_space.num_examples[1])
        sized = plan.model_copy(update={
            "stage": "scale_up", "hyperparameters": hp.model_copy(update={"max_steps": steps}),
            "dataset": plan.dataset.model_copy(update={"num_examples": rows, "seed": plan.dataset.seed + segment}),
            "rationale": plan.rationale + f" [Sized by the schedule: {steps} steps, the {job_s:.0f} accelerator-seconds "
                                          "left for this run.]"})
        return validate_plan(sized, ctx)

    def _fix(self, ctx: PlanningContext) -> ExperimentPlan:
        if self.proposer is not None:
            try:
                return self.proposer.propose(ctx)
            except PlanRejected as exc:
                log.warning("the LLM's fix was rejected (%s); using the rule-based fix", exc)
        try:
            return validate_plan(fix_plan(ctx.failure_plan, ctx.failure), ctx)
        except (ValueError, PlanRejected) as exc:
            raise PlanRejected(f"no rule fixes plan {ctx.failure_plan.plan_id()}: {exc}") from None


def fast_path(plan: ExperimentPlan, ctx: PlanningContext, sz: Sizing, job_s: float) -> ExperimentPlan:
    """A long GPU run trains packed (padding-free, flex attention; Liger is on wherever installed):
    6.1x trl's defaults on a 1.7B model against 2.6x for padded batches (bench/RESULTS.md). The packed
    micro-batch holds about as many tokens as the padded one held examples, so the optimisation
    (examples per step, learning rate) stays what the exploration chose."""
    hp = plan.hyperparameters
    long_run = sz.throughput.train_seconds(hp.max_steps, sz.throughput.examples_per_step(hp), plan.method) >= FAST_PATH_MIN_S
    if not (ctx.on_gpu and long_run and plan.method.value == "sft" and not hp.lora.enabled and not hp.packing
            and ctx.goal.search_space.batch_sizes is None):
        return plan
    rows_per_step = max(1, round(hp.per_device_batch_size * min(sz.throughput.tokens_per_example, hp.max_length)
                                 / hp.max_length))
    packed = hp.model_copy(update={"packing": True, "per_device_batch_size": rows_per_step})
    eps = sz.throughput.examples_per_step(packed)
    packed.max_steps = sz.steps_for_job(job_s, eps, plan.method)
    dataset = plan.dataset.model_copy(update={"num_examples": max(8, int(paced_steps(plan.stage, packed.max_steps, sz.throughput, packing=True) * eps))})
    return plan.model_copy(update={"hyperparameters": packed, "dataset": dataset, "rationale": plan.rationale + (
        f" Long run: packed rows ({rows_per_step} x {hp.max_length} tokens, about {hp.per_device_batch_size} "
        "examples a step), flex attention and Liger.")})


def _unfunded(ctx: PlanningContext, sz: Sizing) -> str | None:
    """Why no experiment can be funded any more (the accelerator budget, or the wall clock before the final
    test, is below the cheapest one), or None."""
    cheapest = sz.job_seconds(sz.min_steps, sz.batch_sizes[-1])
    if sz.left_s < cheapest:
        return (f"budget spent: {sz.used_s:.0f} of {sz.budget_s:.0f} accelerator-seconds used "
                f"({sz.used_s / sz.budget_s:.0%}); {sz.left_s:.0f} s cannot fund another experiment")
    if ctx.wall_left_s is not None and ctx.wall_left_s < cheapest:
        return (f"wall-clock budget spent: {max(0.0, ctx.wall_left_s):.0f} s left before the final "
                f"test cannot fit another experiment ({cheapest:.0f} s at least); "
                f"{sz.used_s:.0f} of {sz.budget_s:.0f} accelerator-seconds used")
    return None


def _provisional_scale_up(ctx: PlanningContext, trials: int) -> bool:
    """A provisional scale-up is worth building only behind the one trial still running, on a winner chosen
    from finished trials: with several trials out (one on each GPU), or none finished, the choice is still
    open, and it would be withdrawn (2 CPU lanes: the provisional scale-up of the defaults, planned before any
    result, was)."""
    return ctx.provisional and trials == 1 and any(
        r.plan.stage == "explore" and r.status != "failed" for r in ctx.history)


def no_signal(ctx: PlanningContext) -> bool:
    """Exploration at this trial length cannot rank configurations: after NO_SIGNAL_TRIALS finished
    trials, the best one's dev score does not beat the worst one's beyond evaluation noise (the
    goal's noise_z). More trials of the same length would be ranked by noise, so the rest of the
    budget goes to the scale-up. Measured on arith_hard at 300 GPU-s (bench/RESULTS.md part 8a):
    five 9-second trials all scored dev 0.001-0.014, and exploring cost the loop a third of its budget."""
    trials = [r for r in ctx.history if r.plan.stage == "explore" and r.status != "failed" and r.dev is not None]
    if len(trials) < NO_SIGNAL_TRIALS:
        return False
    best = max(trials, key=lambda r: r.dev.value).dev
    worst = min(trials, key=lambda r: r.dev.value).dev
    if beats(best, worst, ctx.goal.stop.noise_z):
        return False
    log.info("exploration has no signal: %d trials scored dev %.4f-%.4f, within noise of each other; scaling up",
             len(trials), worst.value, best.value)
    return True


def loss_pick(ctx: PlanningContext) -> tuple[dict, str] | None:
    """The configuration to scale up when dev cannot rank the exploration trials but their training
    loss can: among the trials that trained their full length and whose dev scores are within noise of
    the best one, the one with the lowest loss over its last quarter on fresh rows (`LossTail`, an
    estimate of the held-out loss at equal training time), if it is lower beyond noise (the goal's
    noise_z) than that of the trial of the default configuration (else of the champion's
    configuration), which the loop would scale up otherwise. None when dev ranks the trials, or the
    losses cannot.

    Measured on arith_mid at 120 GPU-s (bench/RESULTS.md part 9c): a batch-64 trial and a default one
    scored dev 0.046 and 0.047 on 300 items, and the loop scaled up the defaults and lost to one default
    run; an exact-match score near the floor resolves nothing a loss on thousands of tokens does not."""
    z = ctx.goal.stop.noise_z
    full = [r for r in ctx.history if r.plan.stage == "explore" and r.status == "succeeded" and r.dev is not None]
    if len(full) < 2:
        return None
    best = max(full, key=lambda r: r.dev.value).dev
    tied = [r for r in full if not beats(best, r.dev, z) and r.recent_loss is not None]
    fallbacks = [default_config(ctx)] + ([plan_params(ctx.champion.plan)] if ctx.champion is not None else [])
    reference = next((r for c in fallbacks for r in tied if plan_params(r.plan) == c), None)
    if reference is None or len(tied) < 2:
        return None
    low = min((r for r in tied if r.plan.method == reference.plan.method), key=lambda r: r.recent_loss.value)
    a, b = low.recent_loss, reference.recent_loss
    if low is reference or b.value - a.value <= noise_margin(a, b, z):
        return None
    log.info("dev ties %d trials; %s has the lowest training loss (%.4f vs %.4f): scaling up its configuration",
             len(tied), low.plan_id, a.value, b.value)
    return plan_params(low.plan), (
        f"the configuration of trial {low.plan_id} (dev within noise of the best; training loss on fresh rows "
        f"{a.value:.3f} ± {a.stderr:.3f} against {b.value:.3f} ± {b.stderr:.3f})")


def fidelity_for(plan: ExperimentPlan, goal: Goal, sz: Sizing, history: list[ExperimentResult],
                 rungs: list[float], lanes: int = 1, wall_s: float | None = None,
                 confirm_above: EvalScore | None = None) -> Fidelity:
    """Dev checks (rungs) and the training-time cap of one run. Exploration trials get the rungs (the
    same for every trial of the goal, so values line up) and their peers' rung values (so the pruner
    can compare); every run gets a time cap that keeps it inside what is left of the budget.

    `lanes`: experiments the loop may run at once. With one, a job may use all that is left (an overrun
    only shrinks the next plan). With several, the plans made while this one runs count on its
    predicted cost, so its job may spend only that plus the scale-up margin (a 2-lane loop whose jobs
    could each use all that was left spent 115% of its budget on 2 x H100, bench/RESULTS.md part 10c).

    `wall_s`: wall-clock seconds the job may take before the goal's wall-time cap (less the final test);
    neither its training nor the job runs past it. `confirm_above`: the champion's dev score, for the job to
    score the confirmation set itself if it beats it (its tail then holds a second dev-sized check)."""
    room = sz.left_s if wall_s is None else max(0.0, min(sz.left_s, wall_s))
    cap = max(1.0, sz.train_seconds_for_job(room))  # never train past what is left of the budget
    # ... counting the job's real load, data and save times too: on one H200 shared by four arms, a
    # scale-up's non-training parts took 23 s against 6 s predicted, and the loop spent 118% of its budget
    limit = room
    if lanes > 1:
        checks = len(rungs) if plan.stage == "explore" else 1
        limit = min(limit, sz.plan_job_seconds(plan, dev_checks=checks) + SCALE_UP_MARGIN * sz.budget_s)
    checks_after = 2 if confirm_above is not None else 1
    guard = {"job_limit_s": round(limit, 3),
             "tail_s": round(sz.throughput.eval_seconds(sz.dev_items * checks_after) + sz.throughput.fixed_s / 2, 3),
             "confirm_above": confirm_above, "noise_z": goal.stop.noise_z}
    if plan.stage != "explore":
        return Fidelity(time_limit_s=cap, **guard, **pacing(plan, sz, cap))
    peers = [{p.rung: p.value for p in r.curve if p.rung is not None}
             for r in history if r.plan.stage == "explore" and r.status != "failed"]
    return Fidelity(time_limit_s=cap, **guard, rung_seconds=rungs, reduction_factor=goal.schedule.reduction_factor,
                    rung_dev_items=goal.schedule.rung_dev_items, peers=[p for p in peers if p])


def pacing(plan: ExperimentPlan, sz: Sizing, cap: float) -> dict:
    """A run long enough to measure itself is paced to the training time it was sized for (at most the
    cap), up to the steps its rows were built for (`paced_steps`) if the throughput estimate was slow."""
    hp = plan.hyperparameters
    bound = paced_steps(plan.stage, hp.max_steps, sz.throughput, hp.packing)
    if bound == hp.max_steps:
        return {}
    target = min(cap, sz.throughput.train_seconds(hp.max_steps, sz.throughput.examples_per_step(hp), plan.method))
    return {"target_train_s": round(target, 3), "max_steps_bound": bound}


def scale_up_lanes(ctx: PlanningContext, sz: Sizing) -> int:
    """Scale-up runs at once: `schedule.scale_up_lanes` of the loop's lanes (by default 1, one chain: the
    deepest model a budget of GPU-seconds buys), raised to as many lanes as it takes to spend what is
    left before the wall-clock cap. A GPU left idle then is budget the goal can no longer spend: a goal of
    2 GPU-hours in 60 minutes on 2 GPUs needs both."""
    lanes = min(ctx.lanes, ctx.goal.schedule.scale_up_lanes)
    if ctx.wall_left_s is None or lanes >= ctx.lanes:
        return lanes
    # the running segments hold their lanes for their predicted cost; what is left fills lanes of wall clock
    running_s = sum(sz.plan_job_seconds(p) for p in ctx.pending if p.stage == "scale_up")
    spendable = max(0.0, sz.left_s - SCALE_UP_MARGIN * sz.budget_s) + running_s
    return min(ctx.lanes, max(lanes, math.ceil(spendable / max(1.0, ctx.wall_left_s))))


def _lane_share(ctx: PlanningContext, sz: Sizing, running: int) -> float:
    """Accelerator seconds for the next scale-up: what is left (running experiments counted at their
    predicted cost), minus a margin, divided among the scale-up lanes that have no run yet
    (`scale_up_lanes`), and no more than one GPU can spend before the wall-clock cap."""
    share = (sz.left_s - SCALE_UP_MARGIN * sz.budget_s) / max(1, scale_up_lanes(ctx, sz) - running)
    return share if ctx.wall_left_s is None else min(share, ctx.wall_left_s)


def _spent(ctx: PlanningContext, sz: Sizing) -> str:
    """Why no scale-up can be funded: the accelerator budget, or the wall clock when that is what binds."""
    used = f"{sz.used_s:.0f} of {sz.budget_s:.0f} accelerator-seconds used ({sz.used_s / sz.budget_s:.0%})"
    if ctx.wall_left_s is not None and ctx.wall_left_s < sz.left_s - SCALE_UP_MARGIN * sz.budget_s:
        return f"wall-clock budget spent: {max(0.0, ctx.wall_left_s):.0f} s left before the final test; {used}"
    return f"budget spent: {used}"


def _default_batch(ctx: PlanningContext) -> int:
    return default_config(ctx)["batch_size"]


def _best(ctx: PlanningContext) -> float | None:
    """The dev score to beat; None while the base model's is still being measured."""
    best = ctx.champion.dev if ctx.champion else ctx.baseline
    return best.value if best is not None else None


def _ranked_configs(history: list[ExperimentResult]) -> list[dict]:
    """Distinct configurations of finished experiments, best dev score first (pruned ones at their last rung)."""
    scored = sorted((r for r in history if r.status != "failed" and r.dev is not None),
                    key=lambda r: (r.status == "succeeded", r.dev.value), reverse=True)
    out: list[dict] = []
    for r in scored:
        params = plan_params(r.plan)
        if params not in out:
            out.append(params)
    return out

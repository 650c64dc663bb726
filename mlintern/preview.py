"""A dry run of how a goal's budget would be spent: the sizes the loop would choose, before any GPU work.

Uses the same sizing and policy code as the loop (mlintern.budget, the multi-fidelity planner) on
the throughput prior; the loop refits the prior after every experiment, so real sizes follow what
the hardware measures.
"""

from __future__ import annotations

from mlintern.budget import Throughput, explore_budget_s, final_reserve_s, fmt_seconds, rung_seconds, sizing
from mlintern.planners.multifidelity import MultiFidelityPlanner
from mlintern.schemas import CurvePoint, EvalScore, ExperimentResult, Goal, PlanningContext


def _ctx(goal: Goal, prior: Throughput, on_gpu: bool, history: list[ExperimentResult], champion=None) -> PlanningContext:
    used = sum(r.accelerator_hours for r in history) * 3600
    sz = sizing(goal, used, prior, on_gpu)
    base = EvalScore(task="dev", metric="score", value=0.0, stderr=0.0, n=goal.benchmark.dev_size)
    return PlanningContext(goal=goal, metric="score", baseline=base, history=history, champion=champion,
                           experiments_left=goal.budget.max_experiments - len(history), hours_left=sz.left_s / 3600,
                           sizing=sz, on_gpu=on_gpu, rungs=rung_seconds(goal, sizing(goal, 0, prior, on_gpu), 8),
                           # one GPU: the jobs so far took their accounted seconds of wall clock
                           wall_left_s=goal.budget.wall_time_minutes * 60 - used - final_reserve_s(goal, prior))


def _simulate(plan, prior: Throughput, dev_items: int, stop_at: float | None, value: float) -> ExperimentResult:
    hp = plan.hyperparameters
    eps = prior.examples_per_step(hp)
    steps = hp.max_steps if stop_at is None else max(1, prior.steps_in(stop_at, eps, plan.method))
    loop = prior.train_seconds(steps, eps, plan.method)
    job = prior.fixed_s + loop + prior.eval_seconds(dev_items)
    return ExperimentResult(
        plan_id=plan.plan_id(), plan=plan, status="succeeded" if stop_at is None else "pruned",
        dev=EvalScore(task="dev", metric="score", value=value, n=dev_items), accelerator_hours=job / 3600,
        job_seconds=job, steps=steps, examples=int(steps * eps), train_loop_seconds=loop,
        curve=[CurvePoint(step=steps, examples=int(steps * eps), train_seconds=loop, value=value, rung=0)], model_path="-")


def preview(goal: Goal, prior: Throughput, on_gpu: bool, params: float) -> str:
    """The loop's plan for this goal if every exploration trial after the first is pruned at its
    first rung (the cheap case; promoted trials buy fewer, longer ones)."""
    planner = MultiFidelityPlanner()
    ctx = _ctx(goal, prior, on_gpu, [])
    sz = ctx.sizing
    lines = [
        f"Goal {goal.name}: {goal.base_model} on {goal.benchmark.kind}/{goal.benchmark.name}; budget "
        f"{fmt_seconds(sz.budget_s)} ({sz.budget_s:.0f} accelerator-seconds), at most {goal.budget.max_experiments} "
        f"experiments; planner {goal.planner}.",
        f"Throughput prior ({'GPU' if on_gpu else 'CPU'}, {params / 1e9:.2f}B parameters, "
        f"~{prior.tokens_per_example:.0f} tokens an example): {prior.describe()}. The loop refits it after every "
        "experiment.",
        f"Plan bounds now, for any planner (the LLM's plans are held to them): {sz.min_steps}-{sz.max_steps} "
        f"optimizer steps, micro-batch {sz.batch_sizes}, one epoch of fresh rows (steps x batch).",
    ]
    explore_s = explore_budget_s(goal, 1)
    rungs = ctx.rungs
    lines.append(f"Exploration: {goal.schedule.explore_fraction:.0%} of the budget ({fmt_seconds(explore_s)}"
                 f"{', of what the wall clock lets one GPU spend' if explore_s < goal.schedule.explore_fraction * sz.budget_s else ''}). Each trial "
                 f"trains up to {fmt_seconds(rungs[-1])} from the base model, with dev checks at "
                 f"{', '.join(fmt_seconds(r) for r in rungs)} of training; Optuna's successive-halving pruner "
                 f"(eta {goal.schedule.reduction_factor}) stops it at a check unless it is in the top third there.")
    history: list[ExperimentResult] = []
    champion = None
    n_pruned = 0
    for i in range(goal.budget.max_experiments):
        ctx = _ctx(goal, prior, on_gpu, history, champion)
        try:
            plan = planner.propose(ctx)
        except Exception as exc:  # PlannerDone: the budget is spent
            lines.append(f"Then: {exc}.")
            break
        hp = plan.hyperparameters
        if plan.stage == "explore":
            first = not history
            result = _simulate(plan, prior, goal.benchmark.dev_size, None if first else rungs[0], 0.5 if first else 0.1)
            if first:
                champion = result
                lines.append(f"  trial 1 (the defaults: lr {hp.learning_rate:g}, batch {hp.per_device_batch_size}): "
                             f"{hp.max_steps:,} steps, {plan.dataset.num_examples:,} fresh rows, "
                             f"~{fmt_seconds(result.accelerator_hours * 3600)} of accelerator time.")
            else:
                n_pruned += 1
            history.append(result)
            continue
        if n_pruned:
            lines.append(f"  then {n_pruned} more TPE configurations, each ~{fmt_seconds(history[-1].accelerator_hours * 3600)} "
                         f"if pruned at the first check ({history[-1].steps:,} steps at its batch size).")
            n_pruned = 0
        cost = sz.plan_job_seconds(plan)
        lines.append(f"Scale-up: the champion continued on fresh rows: {hp.max_steps:,} steps, "
                     f"{plan.dataset.num_examples:,} rows, micro-batch {hp.per_device_batch_size}"
                     f"{' packed (padding-free, flex attention, Liger)' if hp.packing else ''}, warmup "
                     f"{hp.warmup_ratio:.0%}, ~{fmt_seconds(cost)} (with the example champion's batch "
                     f"{champion.plan.hyperparameters.per_device_batch_size if champion else '-'}).")
        history.append(_simulate(plan, prior, goal.benchmark.dev_size, None, 0.6))
    used = sum(r.accelerator_hours for r in history) * 3600
    lines.append(f"Budget used in this dry run: {used:.0f} of {sz.budget_s:.0f} s ({used / sz.budget_s:.0%}).")
    if (warning := wall_warning(goal, 1)) is not None:
        lines.append(warning)
    return "\n".join(lines)


def wall_warning(goal: Goal, lanes: int) -> str | None:
    """A warning when the goal's wall-clock cap ends the loop before `lanes` GPUs can spend its accelerator
    budget (the experiments are then sized to the wall clock, and the rest of the budget is not spent)."""
    wall_s = goal.budget.wall_time_minutes * 60
    budget_s = goal.budget.gpu_hours * 3600
    if wall_s * lanes >= budget_s:
        return None
    return (f"Warning: the wall-clock cap ({fmt_seconds(wall_s)}, budget.wall_time_minutes) is shorter than "
            f"{lanes} GPU{'s' if lanes > 1 else ''} need{'' if lanes > 1 else 's'} to spend the accelerator budget "
            f"({fmt_seconds(budget_s)}): at most {wall_s * lanes / budget_s:.0%} of it can be spent. Raise "
            f"budget.wall_time_minutes (--wall-minutes) to at least {budget_s / lanes / 60 * 1.1:.0f}, or run more "
            "experiments in parallel.")

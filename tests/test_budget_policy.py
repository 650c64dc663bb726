"""Budget sizing and the research policy (pure logic: no training)."""

from concurrent.futures import Future

import pytest

from mlintern.budget import Throughput, fit_throughput, prior_throughput, rung_seconds, sizing
from mlintern.planners.base import PlannerDone, PlanningContext
from mlintern.planners.multifidelity import MultiFidelityPlanner, fidelity_for
from mlintern.planners.search import SearchPlanner, SingleRunPlanner
from mlintern.schemas import CurvePoint, EvalScore, ExperimentPlan, ExperimentResult, Failure, FailureKind, Goal, \
    Hyperparameters
from mlintern.training.pruning import pruning_trial

GPU = Throughput(step_overhead_s=0.09, example_s=0.001, fixed_s=2.0, eval_item_s=0.01, tokens_per_example=40)


def gpu_goal(seconds=300, **kw) -> Goal:
    return Goal(name="g", budget={"gpu_hours": seconds / 3600, "max_experiments": 60}, **kw)


def ctx(goal: Goal, history=(), champion=None, pending=(), throughput=GPU) -> PlanningContext:
    from mlintern.loop import LoopState

    base = EvalScore(task="dev", metric="score", value=0.01, stderr=0.005, n=300)
    state = LoopState(goal=goal, baseline=base, history=list(history), prior=throughput, on_gpu=True)
    sz = state.sizing(list(pending))  # the controller's own sizing: running plans at their predicted cost
    return PlanningContext(goal=goal, metric="score", baseline=base, history=list(history), champion=champion,
                           experiments_left=goal.budget.max_experiments - len(history) - len(pending), hours_left=sz.left_s / 3600,
                           pending=list(pending), sizing=sz, on_gpu=True,
                           rungs=rung_seconds(goal, sizing(goal, 0, throughput, True), 8))


def finished(plan: ExperimentPlan, seconds: float, value: float, status="succeeded", rungs=()) -> ExperimentResult:
    hp = plan.hyperparameters
    steps = hp.max_steps if status == "succeeded" else max(1, hp.max_steps // 9)
    curve = [CurvePoint(step=i, examples=i, train_seconds=i, value=v, rung=k) for k, (i, v) in enumerate(rungs)]
    return ExperimentResult(
        plan_id=plan.plan_id(), plan=plan, status=status, accelerator_hours=seconds / 3600,
        dev=EvalScore(task="dev", metric="score", value=value, stderr=0.02, n=300), steps=steps,
        examples=steps * hp.per_device_batch_size, train_loop_seconds=seconds - 4, job_seconds=seconds,
        eval_seconds=2.0, curve=curve, model_path="/tmp/m")


def test_throughput_fit_recovers_the_cost_per_step_and_per_example():
    truth = Throughput(step_overhead_s=0.08, example_s=0.002, fixed_s=3.0, eval_item_s=0.01, tokens_per_example=40)
    prior = prior_throughput(135e6, True, 40)
    history = []
    for batch in (8, 32):
        plan = ExperimentPlan(hyperparameters=Hyperparameters(per_device_batch_size=batch, max_steps=200))
        loop = truth.train_seconds(200, batch)
        r = finished(plan, loop + 5, 0.3)
        r.train_loop_seconds, r.job_seconds, r.eval_seconds = loop, loop + 5, 2.0
        r.curve = [CurvePoint(step=200, examples=200 * batch, train_seconds=loop, value=0.3)]
        history.append(r)
    fit = fit_throughput(prior, history)
    assert fit.measured == 2 and fit.source == "measured"
    assert fit.step_overhead_s == pytest.approx(0.08, rel=1e-6) and fit.example_s == pytest.approx(0.002, rel=1e-6)
    assert fit.fixed_s == pytest.approx(3.0) and fit.eval_item_s == pytest.approx(2.0 / 300)


def test_a_run_too_short_to_have_steady_steps_does_not_price_a_step():
    """One H200 shared by four arms (bench/RESULTS.md part 9): the first trial trained 2 steps in 7.7 s of
    one-off costs; fitted on it a step cost 3.8 s, and the loop stopped with 82% of its budget left."""
    goal = gpu_goal(120)
    first = MultiFidelityPlanner().propose(ctx(goal))
    short = finished(first, 21.0, 0.05)
    short.steps, short.train_loop_seconds, short.job_seconds, short.eval_seconds = 2, 7.7, 16.9, 8.4
    short.warmup_seconds = None
    fit = fit_throughput(GPU, [short])
    assert fit.step_seconds(8) == pytest.approx(GPU.step_seconds(8)), "the step cost stays the prior's"
    assert fit.measured == 0 and fit.fixed_s == pytest.approx(16.9 - 2 * GPU.step_seconds(8) - 8.4)
    nxt = MultiFidelityPlanner().propose(ctx(goal, [short]))
    assert nxt.hyperparameters.max_steps > 10, "the loop goes on with the budget that is left"


def test_experiment_sizes_follow_the_budget_not_a_fixed_range():
    """The old default search space ran 8-30 steps whatever the budget; now steps scale with it."""
    small = sizing(gpu_goal(120), 0, GPU, True)
    large = sizing(Goal(budget={"gpu_hours": 10}), 0, GPU, True)
    assert small.max_steps < large.max_steps
    assert large.max_steps > 300_000 and small.max_steps > 900
    pinned = sizing(Goal(budget={"gpu_hours": 10}, search_space={"max_steps": [8, 30]}), 0, GPU, True)
    assert (pinned.min_steps, pinned.max_steps) == (8, 30), "a goal may pin the size (the CPU demo does)"


def simulated(plan: ExperimentPlan, value: float, status="succeeded", stop_at_s: float | None = None) -> ExperimentResult:
    """A result whose timings follow the GPU cost model (pruned: stopped at `stop_at_s` of training)."""
    hp = plan.hyperparameters
    steps = hp.max_steps if stop_at_s is None else max(1, GPU.steps_in(stop_at_s, hp.per_device_batch_size))
    loop = GPU.train_seconds(steps, hp.per_device_batch_size)
    job = GPU.fixed_s + loop + GPU.eval_seconds(300)
    return ExperimentResult(
        plan_id=plan.plan_id(), plan=plan, status=status, accelerator_hours=job / 3600, job_seconds=job,
        dev=EvalScore(task="dev", metric="score", value=value, stderr=0.02, n=300), steps=steps,
        examples=steps * hp.per_device_batch_size, train_loop_seconds=loop, eval_seconds=GPU.eval_seconds(300),
        curve=[CurvePoint(step=steps, examples=steps, train_seconds=loop, value=value, rung=0)], model_path="/tmp/m")


def explored(goal: Goal, spend_s: float = 105) -> tuple[ExperimentResult, list[ExperimentResult]]:
    """A finished exploration: its first trial the champion, then trials pruned at 5 s until `spend_s` is spent."""
    champion = simulated(MultiFidelityPlanner().propose(ctx(goal)), 0.5)
    history = [champion]
    while sum(r.accelerator_hours for r in history) * 3600 < spend_s:
        history.append(simulated(MultiFidelityPlanner().propose(ctx(goal, history, champion=champion)), 0.1,
                                 status="pruned", stop_at_s=5))
    return champion, history


def test_the_loop_explores_from_the_defaults_then_scales_up_the_champion_with_what_is_left():
    goal = gpu_goal(300)
    planner = MultiFidelityPlanner()
    first = planner.propose(ctx(goal))
    hp = first.hyperparameters
    assert first.stage == "explore" and first.init_from == "base"
    assert (hp.learning_rate, hp.per_device_batch_size) == (Hyperparameters().learning_rate, 8), "defaults first"
    trial_s = GPU.train_seconds(hp.max_steps, 8)
    # a trial's job is a third of the exploration budget (105 s / 3): 2 s fixed, 3 dev checks of 3 s, 24 s training
    assert trial_s == pytest.approx(24, abs=GPU.step_seconds(8)), "R = explore budget / 3, less its fixed part"
    assert first.dataset.num_examples == hp.max_steps * 8, "one epoch of fresh rows"

    champion = simulated(first, 0.40)
    history, plan = [champion], None
    rungs = ctx(goal).rungs
    assert len(rungs) == 2 and rungs[0] >= 0.025 * 300, "no check before the scores can tell configurations apart"
    for i in range(30):  # later trials: pruned at their first rung
        plan = planner.propose(ctx(goal, history, champion=champion))
        if plan.stage != "explore":
            break
        assert plan.plan_id() not in {r.plan_id for r in history}
        history.append(simulated(plan, 0.2, status="pruned", stop_at_s=rungs[0]))
    used = sum(r.accelerator_hours for r in history) * 3600
    assert plan.stage == "scale_up" and 0.35 * 300 <= used < 0.35 * 300 + 15, "explore with 35%, then scale up"
    assert len(history) >= 5, "most trials stop at the first rung: several configurations for the budget"
    seeds = [(r.plan.hyperparameters.per_device_batch_size, round(r.plan.hyperparameters.learning_rate, 8))
             for r in history[:4]]
    assert seeds == [(8, 5e-05), (64, 0.00014142), (32, 0.0001), (16, 7.071e-05)], \
        "the defaults, then larger batches with sqrt-scaled learning rates, before TPE"
    assert plan.init_from == "champion" and plan.hyperparameters.learning_rate == hp.learning_rate
    assert plan.dataset.seed != first.dataset.seed, "continued on fresh rows"
    cost = sizing(goal, used, GPU, True).job_seconds(plan.hyperparameters.max_steps, 8)
    assert 0.95 * (300 - used) - 6 <= cost <= 300 - used, "sized to spend what is left (minus a small margin)"

    history.append(simulated(plan, 0.8))
    with pytest.raises(PlannerDone, match=r"budget spent: 29\d of 300 accelerator-seconds used \(9\d%\)"):
        planner.propose(ctx(goal, history, champion=champion))


def test_with_several_lanes_a_job_may_spend_only_its_predicted_cost_and_running_ones_reserve_a_confirmation():
    """2 x H100, 300 GPU-s through the deployment path (bench/RESULTS.md part 10c): with two experiments in
    flight the loop spent 115% of its budget. A plan made while another runs counts on that one's
    predicted cost, so that one's job may not use all that is left; and a running candidate's
    confirmation check, charged after its job, is reserved while it runs."""
    goal = gpu_goal(300)
    c = ctx(goal)
    up = MultiFidelityPlanner().propose(c).model_copy(update={"stage": "scale_up"})
    predicted = c.sizing.plan_job_seconds(up)
    alone = fidelity_for(up, goal, c.sizing, [], c.rungs)
    assert alone.job_limit_s == pytest.approx(c.sizing.left_s), "one lane: an overrun only shrinks the next plan"
    shared = fidelity_for(up, goal, c.sizing, [], c.rungs, lanes=2)
    assert shared.job_limit_s == pytest.approx(predicted + 0.02 * 300, abs=0.01)
    assert shared.job_limit_s < c.sizing.left_s
    trial = MultiFidelityPlanner().propose(c)
    assert fidelity_for(trial, goal, c.sizing, [], c.rungs, lanes=2).job_limit_s == pytest.approx(
        c.sizing.plan_job_seconds(trial, dev_checks=len(c.rungs)) + 6, abs=0.01), "a trial's rung checks count"

    running = ctx(goal, pending=[up]).sizing
    confirm = GPU.eval_seconds(goal.benchmark.dev_size)
    assert running.left_s == pytest.approx(300 - predicted - confirm, abs=0.01)


def test_with_exploration_trials_still_running_the_scale_up_waits_for_their_winner():
    """2 lanes on CPU (bench/RESULTS.md part 10d): the first trial's predicted cost took the exploration's
    whole share, and the second lane started the scale-up from the base model beside it, with the
    defaults, before any result: the loop spent 112%. The scale-up continues the winner, so it waits."""
    from mlintern.planners.base import PlannerWaiting

    goal = gpu_goal(300)
    planner = MultiFidelityPlanner()
    trials = []
    while True:
        plan = planner.propose(ctx(goal, pending=trials))
        if plan.stage != "explore":
            pytest.fail("a scale-up was planned while exploration trials were running")
        trials.append(plan)
        try:
            planner.propose(ctx(goal, pending=trials))
        except PlannerWaiting as exc:
            assert f"waiting for {len(trials)} exploration trial(s)" in str(exc)
            break
    held = ctx(goal, pending=trials).sizing.used_s  # running trials at their predicted cost + a confirmation
    assert held >= 105 > held - 32, ("trials start while those in flight hold less than the exploration's share "
                                     "(35% of 300 s), each counted once")
    history = [simulated(p, 0.3 + 0.01 * i) for i, p in enumerate(trials)]
    champion = history[-1]
    for _ in range(10):  # they finished below their predicted cost: exploring may go on, one at a time
        up = planner.propose(ctx(goal, history, champion=champion))
        if up.stage == "scale_up":
            break
        history.append(simulated(up, 0.2, status="pruned", stop_at_s=5))
    assert up.stage == "scale_up" and up.init_from == "champion", "once they are done, their winner is scaled up"

    # a segment shorter than what is left (e.g. held to the space's max_steps) leaves budget over: the
    # chain's next segment waits for it instead of forking the same champion on the free GPU
    short = up.model_copy(update={"hyperparameters": up.hyperparameters.model_copy(update={"max_steps": 50})})
    two_lanes = ctx(goal, history, champion=champion, pending=[short]).model_copy(update={"lanes": 2})
    assert two_lanes.sizing.left_s > 60
    with pytest.raises(PlannerWaiting, match="scale-up chain's running segment"):
        planner.propose(two_lanes)


def test_exploration_trials_are_checked_at_rungs_against_their_peers():
    goal = gpu_goal(300)
    c = ctx(goal)
    plan = MultiFidelityPlanner().propose(c)
    peer = finished(plan, 30, 0.4, rungs=[(10, 0.2), (30, 0.3), (90, 0.4)])
    fid = fidelity_for(plan, goal, c.sizing, [peer], c.rungs)
    assert len(fid.rung_seconds) == 2 and fid.rung_seconds[1] == pytest.approx(3 * fid.rung_seconds[0], rel=0.01)
    assert fid.peers == [{0: 0.2, 1: 0.3, 2: 0.4}] and fid.rung_dev_items == 100
    assert fid.time_limit_s <= c.sizing.train_seconds_for_job(300)
    up = plan.model_copy(update={"stage": "scale_up"})
    assert fidelity_for(up, goal, c.sizing, [peer], c.rungs).rung_seconds == [], "a scale-up is not pruned"


def test_successive_halving_prunes_below_the_top_third_of_a_rung():
    from mlintern.schemas import Fidelity

    peers = [{0: v} for v in (0.10, 0.20, 0.30, 0.40, 0.50)]
    weak = pruning_trial(Fidelity(rung_seconds=[1, 3, 9], peers=peers))
    weak.report(0.35, 1)
    assert weak.should_prune(), "0.35 is not in the top third of six"
    strong = pruning_trial(Fidelity(rung_seconds=[1, 3, 9], peers=peers))
    strong.report(0.45, 1)
    assert not strong.should_prune()
    alone = pruning_trial(Fidelity(rung_seconds=[1, 3, 9], peers=[]))
    alone.report(0.01, 1)
    assert not alone.should_prune(), "the first trial has nothing to lose against"


def test_single_run_baseline_is_one_default_run_sized_to_the_whole_budget():
    goal = gpu_goal(300)
    plan = SingleRunPlanner().propose(ctx(goal))
    assert plan.stage == "single" and plan.hyperparameters.learning_rate == Hyperparameters().learning_rate
    assert 0.9 * 300 < sizing(goal, 0, GPU, True).job_seconds(plan.hyperparameters.max_steps, 8) <= 300
    with pytest.raises(PlannerDone):
        SingleRunPlanner().propose(ctx(goal, [finished(plan, 290, 0.7)]))


def test_plain_search_samples_budget_sized_trials():
    goal = gpu_goal(300)
    history = []
    for _ in range(4):
        plan = SearchPlanner().propose(ctx(goal, history))
        cost = sizing(goal, 0, GPU, True).job_seconds(plan.hyperparameters.max_steps, plan.hyperparameters.per_device_batch_size)
        assert 0.04 * 300 < cost < 0.34 * 300 + 1
        history.append(finished(plan, cost, 0.3))


def test_with_several_free_gpus_the_scale_up_is_split_among_continuations_of_the_champion():
    goal = gpu_goal(300, schedule={"scale_up_lanes": 2})
    first = MultiFidelityPlanner().propose(ctx(goal))
    champion = simulated(first, 0.5)
    other = simulated(first.model_copy(update={"hyperparameters": first.hyperparameters.model_copy(
        update={"learning_rate": 2e-4, "per_device_batch_size": 32})}), 0.3)
    history = [champion, other]
    for _ in range(20):  # spend the exploration budget
        history.append(simulated(MultiFidelityPlanner().propose(ctx(goal, history, champion=champion)), 0.1,
                                 status="pruned", stop_at_s=5))
        if sum(r.accelerator_hours for r in history) * 3600 >= 105:
            break
    c = ctx(goal, history, champion=champion).model_copy(update={"lanes": 2})
    one = MultiFidelityPlanner().propose(c)
    c2 = ctx(goal, history, champion=champion, pending=[one]).model_copy(update={"lanes": 2})
    two = MultiFidelityPlanner().propose(c2)
    assert one.stage == two.stage == "scale_up" and one.init_from == two.init_from == "champion"
    assert one.hyperparameters.learning_rate == first.hyperparameters.learning_rate
    assert two.hyperparameters.learning_rate != one.hyperparameters.learning_rate, "another explored configuration"
    assert one.dataset.seed != two.dataset.seed, "different fresh rows"
    left = 300 - sum(r.accelerator_hours for r in history) * 3600
    cost = sizing(goal, 0, GPU, True).plan_job_seconds(one)
    assert cost == pytest.approx((left - 6) / 2, abs=2), "half of what is left each"


def test_a_long_gpu_scale_up_trains_packed_with_as_many_examples_a_step():
    from mlintern.planners.multifidelity import FAST_PATH_MIN_S

    goal = Goal(budget={"gpu_hours": 2}, search_space={"max_length": 256})
    tput = GPU.model_copy(update={"tokens_per_example": 64})
    champion = simulated(MultiFidelityPlanner().propose(ctx(goal, throughput=tput)), 0.5)
    history = [champion] + [champion.model_copy(update={"plan_id": f"x{i}", "accelerator_hours": 0.1,
                                                         "status": "pruned"}) for i in range(7)]
    up = MultiFidelityPlanner().propose(ctx(goal, history, champion=champion, throughput=tput))
    hp = up.hyperparameters
    assert up.stage == "scale_up" and hp.packing, "a run over FAST_PATH_MIN_S trains packed"
    assert hp.per_device_batch_size == 2, "8 examples of 64 tokens = 2 packed rows of 256"
    assert tput.examples_per_step(hp) == 8
    assert tput.train_seconds(hp.max_steps, 8) > FAST_PATH_MIN_S


def test_dry_run_lists_the_sizes_for_the_readme_example():
    from mlintern.budget import prior_throughput
    from mlintern.preview import preview

    prior = prior_throughput(1.72e9, True, 400)
    goal = Goal(name="qwen-gpqa", base_model="Qwen/Qwen3-1.7B-Base",
                budget={"gpu_hours": 10, "wall_time_minutes": 660}, search_space={"max_length": 1024})
    text = preview(goal, prior, True, 1.72e9)
    assert "budget 10.00 h (36000 accelerator-seconds)" in text
    assert "trial 1 (the defaults: lr 5e-05, batch 8)" in text and "Scale-up" in text and "packed" in text
    used = float(text.split("Budget used in this dry run: ")[1].split(" of")[0])
    assert 0.9 * 36000 <= used <= 36000
    assert "Warning" not in text

    # the default wall-clock cap (60 minutes) ends such a loop after a tenth of its budget: the dry run says so
    short = goal.model_copy(update={"budget": goal.budget.model_copy(update={"wall_time_minutes": 60})})
    text = preview(short, prior, True, 1.72e9)
    used = float(text.split("Budget used in this dry run: ")[1].split(" of")[0])
    assert used <= 3600
    assert "Warning: the wall-clock cap (1.00 h, budget.wall_time_minutes) is shorter than 1 GPU needs" in text
    assert "at most 10% of it can be spent" in text and "at least 660" in text
    # ... and explores a share of what it can spend, so a scale-up still follows (a share of the nominal
    # 10 h made the first trial take the whole hour)
    assert "(21.0 min, of what the wall clock lets one GPU spend)" in text and "Scale-up" in text


def test_exploration_that_cannot_rank_configurations_ends_early_and_the_budget_goes_to_the_scale_up():
    """arith_hard on the H200 (bench/RESULTS.md part 8a): every 9 s trial scored dev 0.001-0.014, and five
    of them cost the loop a third of its budget. Three trials within noise of each other end exploring."""
    goal = gpu_goal(300)
    planner = MultiFidelityPlanner()
    history, champion = [], None
    for value in (0.004, 0.006, 0.011):
        plan = planner.propose(ctx(goal, history, champion=champion))
        assert plan.stage == "explore"
        result = simulated(plan, value)
        result.dev = EvalScore(task="dev", metric="score", value=value, stderr=0.006, n=300)
        history.append(result)
    champion = history[2]  # the luckiest trial (batch 32), as the loop's selection would keep it
    plan = planner.propose(ctx(goal, history, champion=champion))
    used = sum(r.accelerator_hours for r in history) * 3600
    assert used < 0.35 * 300, "stopped exploring before its share of the budget was spent"
    assert plan.stage == "scale_up", "no signal at this trial length: the rest goes to one long run"
    hp, default = plan.hyperparameters, Hyperparameters()
    assert champion.plan.hyperparameters.per_device_batch_size != default.per_device_batch_size
    assert (hp.learning_rate, hp.per_device_batch_size) == (default.learning_rate, default.per_device_batch_size), \
        "a ranking by noise picks no configuration: the long run uses the defaults"
    assert plan.init_from == "champion", "it still continues from the trained champion"
    alone = planner.propose(ctx(goal, history, champion=None))
    assert (alone.hyperparameters.per_device_batch_size, alone.init_from) == (default.per_device_batch_size, "base")

    # the same three trials with a real difference between them keep exploring
    history[2].dev = EvalScore(task="dev", metric="score", value=0.30, stderr=0.026, n=300)
    assert planner.propose(ctx(goal, history, champion=history[2])).stage == "explore"


def test_when_dev_ties_the_trials_their_training_loss_on_fresh_rows_picks_the_scale_up_configuration():
    """arith_mid at 120 GPU-s (bench/RESULTS.md part 9c): a default trial and a batch-64 trial scored dev
    0.047 and 0.046; the loop scaled up the defaults and lost to one default run. The trials' losses
    over their last quarter on fresh rows separate them where an exact-match score at the floor cannot."""
    from mlintern.planners.multifidelity import loss_pick
    from mlintern.schemas import LossTail

    goal = gpu_goal(120)
    planner = MultiFidelityPlanner()
    history = []
    for value, loss in ((0.047, 1.90), (0.046, 1.20)):
        plan = planner.propose(ctx(goal, history, champion=history[0] if history else None))
        assert plan.stage == "explore"
        result = simulated(plan, value)
        result.dev = EvalScore(task="dev", metric="score", value=value, stderr=0.012, n=300)
        result.recent_loss = LossTail(value=loss, stderr=0.05, n=7)
        history.append(result)
    champion = history[0]  # the default trial beat the base model first; the batch-64 one did not beat it
    default, big = history[0].plan.hyperparameters, history[1].plan.hyperparameters
    assert big.per_device_batch_size == 64 and default.per_device_batch_size == 8
    picked = loss_pick(ctx(goal, history, champion=champion))
    assert picked is not None and picked[0]["batch_size"] == 64 and "1.200" in picked[1]
    up = planner.propose(ctx(goal, history[:2], champion=champion))
    if up.stage == "explore":  # a third trial fits this budget: tie it too, then the scale-up comes
        third = simulated(up, 0.045)
        third.dev = EvalScore(task="dev", metric="score", value=0.045, stderr=0.012, n=300)
        third.recent_loss = LossTail(value=1.5, stderr=0.05, n=7)
        history.append(third)
        up = planner.propose(ctx(goal, history, champion=champion))
    assert up.stage == "scale_up" and up.init_from == "champion"
    assert (up.hyperparameters.per_device_batch_size, up.hyperparameters.learning_rate) == (64, big.learning_rate)
    assert "training loss on fresh rows" in up.rationale

    # the next segment of the same chain keeps that configuration (the champion is now the scale-up)
    segment = simulated(up, 0.20)
    assert loss_pick(ctx(goal, history + [segment], champion=segment))[0]["batch_size"] == 64

    # losses within noise of each other: no pick; dev ranking the trials: no pick either
    for r in history[1:]:
        r.recent_loss = LossTail(value=1.85, stderr=0.05, n=7)
    assert loss_pick(ctx(goal, history, champion=champion)) is None
    history[1].recent_loss = LossTail(value=1.20, stderr=0.05, n=7)
    history[1].dev = EvalScore(task="dev", metric="score", value=0.40, stderr=0.028, n=300)
    assert loss_pick(ctx(goal, history, champion=history[1])) is None, "dev ranks them: the champion decides"


def test_loss_tail_is_the_mean_of_the_last_quarter_of_logged_losses():
    from mlintern.training.callbacks import loss_tail

    assert loss_tail([3.0, 2.0]) is None, "too few logged losses to estimate"
    tail = loss_tail([4.0, 3.0, 2.5, 2.0, 1.9, 2.1, 2.0, 1.8, 2.2, 2.0, 1.9, 2.1])  # last quarter: 3 values
    assert tail.n == 3 and tail.value == pytest.approx(2.0) and tail.stderr == pytest.approx(0.1 / 3 ** 0.5)
    assert loss_tail([float(i) for i in range(40)]).n == 10


def test_by_default_several_gpus_explore_in_parallel_but_the_scale_up_is_one_chain():
    """4 x H200, 300 GPU-s (bench/RESULTS.md part 8b): split four ways the scale-up reached 0.746 held-out
    against 0.994 for one chain; the budget is GPU-seconds, so a split buys wall clock, not depth."""
    goal = gpu_goal(300)
    champion, history = explored(goal)
    chain = MultiFidelityPlanner().propose(ctx(goal, history, champion=champion).model_copy(update={"lanes": 4}))
    left = 300 - sum(r.accelerator_hours for r in history) * 3600
    assert chain.stage == "scale_up"
    assert sizing(goal, 0, GPU, True).plan_job_seconds(chain) == pytest.approx(left - 6, abs=2), "all that is left"
    with pytest.raises(PlannerDone, match="budget spent"):
        MultiFidelityPlanner().propose(ctx(goal, history, champion=champion, pending=[chain]).model_copy(
            update={"lanes": 4}))


def test_a_scale_up_builds_rows_for_the_steps_its_measured_step_time_can_reach():
    """A paced run may re-time itself past its planned steps, and its fresh rows must cover that. With the
    prior it may be off 1.8x; with step times measured on trials' unpacked batches none of 13 scale-ups on
    H200 (parts 12-14) trained more than 1.01x its planned steps; of a 1-GPU loop's scale-up's 43 s of data
    and trainer build with the GPU idle, about 17 s went on rows past its planned steps (part 14d)."""
    from mlintern.budget import MEASURED_PACE_HEADROOM, PACE_HEADROOM

    goal = gpu_goal(300, search_space={"batch_sizes": [8, 16]})  # a goal's own batches: no packed fast path
    champion, history = explored(goal)
    measured = ctx(goal, history, champion=champion)
    assert measured.sizing.throughput.measured > 0
    up = MultiFidelityPlanner().propose(measured)
    hp = up.hyperparameters
    assert up.stage == "scale_up" and not hp.packing and hp.max_steps >= 60
    bound = fidelity_for(up, goal, measured.sizing, history, measured.rungs).max_steps_bound
    assert bound == int(hp.max_steps * MEASURED_PACE_HEADROOM)
    assert up.dataset.num_examples == bound * hp.per_device_batch_size, "rows for the steps it may reach, no more"

    # the same plan on the prior (nothing measured yet: a single run sized to the budget) keeps the wide margin
    prior = ctx(goal).sizing
    assert prior.throughput.measured == 0
    assert fidelity_for(up, goal, prior, [], []).max_steps_bound == int(hp.max_steps * PACE_HEADROOM)
    single = SingleRunPlanner().propose(ctx(goal))
    assert single.dataset.num_examples == int(single.hyperparameters.max_steps * PACE_HEADROOM) * \
        single.hyperparameters.per_device_batch_size

    # packed rows, which no trial timed (the fast path of a long GPU run), keep it too
    from mlintern.planners.multifidelity import FAST_PATH_MIN_S, fast_path

    packed_ctx = ctx(gpu_goal(3600), history, champion=champion)
    long = up.model_copy(update={"hyperparameters": hp.model_copy(update={"max_steps": 20_000})})
    packed = fast_path(long, packed_ctx, packed_ctx.sizing, 2 * FAST_PATH_MIN_S)
    phs = packed.hyperparameters
    assert phs.packing and packed_ctx.sizing.throughput.measured > 0
    bound = fidelity_for(packed, packed_ctx.goal, packed_ctx.sizing, history, []).max_steps_bound
    assert bound == int(phs.max_steps * PACE_HEADROOM)
    assert packed.dataset.num_examples == int(bound * packed_ctx.sizing.throughput.examples_per_step(phs))


def test_a_scale_up_is_sized_to_the_wall_clock_and_takes_as_many_gpus_as_spending_the_budget_in_time_needs():
    """A goal's gpu_hours may be more than one GPU can spend before its wall_time_minutes (the defaults
    are 1 GPU-hour in 60 minutes, and the loop's own time comes out of those). A scale-up sized to all
    that was left was killed at the wall-clock cap and lost its whole run; it is now sized to the wall
    clock, and with several GPUs the scale-up takes as many as spending the budget in time needs,
    instead of one chain beside idle GPUs."""
    from mlintern.planners.base import PlannerWaiting

    goal = gpu_goal(300)
    champion, history = explored(goal)
    base = ctx(goal, history, champion=champion)
    cost = base.sizing.plan_job_seconds
    spendable = base.sizing.left_s - 6  # the 2% margin
    assert spendable > 150

    # one GPU, 100 s of wall clock left: the chain fits in it, and its job may not run past it
    one = MultiFidelityPlanner().propose(base.model_copy(update={"wall_left_s": 100.0}))
    assert one.stage == "scale_up" and 90 <= cost(one) <= 100
    fid = fidelity_for(one, goal, base.sizing, history, base.rungs, wall_s=100.0)
    assert fid.job_limit_s <= 100 and fid.time_limit_s <= 100
    unbounded = MultiFidelityPlanner().propose(base)
    assert cost(unbounded) == pytest.approx(spendable, abs=2), "without a wall-clock cap: all that is left"

    # two GPUs and wall clock for about half of what is left: two scale-ups at once, each within it
    def two_lanes(pending=(), wall=100.0):
        return ctx(goal, history, champion=champion, pending=list(pending)).model_copy(
            update={"lanes": 2, "wall_left_s": wall})

    first = MultiFidelityPlanner().propose(two_lanes())
    second = MultiFidelityPlanner().propose(two_lanes([first]))
    assert first.stage == second.stage == "scale_up" and first.init_from == second.init_from == "champion"
    assert cost(first) <= 100 and cost(second) <= 100
    assert cost(first) + cost(second) == pytest.approx(min(spendable, 200), abs=12)

    # ample wall clock: one chain, the other GPU waits for it (the default, part 8b)
    chain = MultiFidelityPlanner().propose(two_lanes(wall=1000.0))
    assert cost(chain) == pytest.approx(spendable, abs=2)
    short = chain.model_copy(update={"hyperparameters": chain.hyperparameters.model_copy(update={"max_steps": 50})})
    with pytest.raises(PlannerWaiting, match="scale-up chain's running segment"):
        MultiFidelityPlanner().propose(two_lanes([short], wall=1000.0))
    assert MultiFidelityPlanner().propose(two_lanes([short], wall=30.0)).stage == "scale_up", \
        "... unless the chain's segment cannot spend the rest in time"

    # an exploration trial still running on the other GPU: with ample wall clock the scale-up waits for it
    # (it may be the winner); when the wall clock needs both GPUs, the free one continues the winner so far
    trial = MultiFidelityPlanner().propose(ctx(goal))
    assert trial.stage == "explore"
    with pytest.raises(PlannerWaiting, match="1 exploration trial"):
        MultiFidelityPlanner().propose(two_lanes([trial], wall=1000.0))
    early = MultiFidelityPlanner().propose(two_lanes([trial], wall=60.0))
    assert early.stage == "scale_up" and early.init_from == "champion" and cost(early) <= 60
    with pytest.raises(PlannerWaiting, match="1 exploration trial"):  # a queue slot behind a running job
        MultiFidelityPlanner().propose(two_lanes([trial], wall=60.0).model_copy(update={"gpu_free_in_s": 40.0}))
    with pytest.raises(PlannerWaiting, match="1 exploration trial"):  # no trial has beaten the base model yet
        MultiFidelityPlanner().propose(ctx(goal, history, pending=[trial]).model_copy(
            update={"lanes": 2, "wall_left_s": 60.0}))

    # no wall clock left for the cheapest job: the loop ends and says why
    with pytest.raises(PlannerDone, match="wall-clock budget spent"):
        MultiFidelityPlanner().propose(base.model_copy(update={"wall_left_s": 3.0}))


def test_the_wall_clock_an_experiment_may_take_leaves_time_for_the_final_test():
    import time

    from mlintern.loop import LoopState

    goal = Goal(name="g", budget={"gpu_hours": 1.0, "wall_time_minutes": 10}, benchmark={"test_size": 500})
    base = EvalScore(task="dev", metric="score", value=0.01, stderr=0.005, n=300)
    state = LoopState(goal=goal, baseline=base, prior=GPU, on_gpu=True, started=time.time() - 60)
    # 540 s left, less the base model's and the champion's test (2 x (2 s + 500 x 0.01 s)), less a dispatch
    assert state.experiment_wall_s() == pytest.approx(540 - 14 - 2, abs=1)
    # the base model's test, measured beside the loop: kept back until it is in, then only the champion's
    state.pending_base_test = measuring = Future()
    assert state.experiment_wall_s() == pytest.approx(540 - 14 - 2, abs=1)
    measuring.set_result(base)
    assert state.experiment_wall_s() == pytest.approx(540 - 7 - 2, abs=1)
    state.pending_base_test = failed_measure = Future()
    failed_measure.set_exception(RuntimeError("worker died"))  # the final report evaluates it again
    assert state.experiment_wall_s() == pytest.approx(540 - 14 - 2, abs=1)
    state.pending_base_test = None
    # once experiments have run, what they took outside their jobs is kept back instead (through a
    # deployment: dispatch, a flow-run process, the training rows; a 1-GPU loop on 2 x H200 ended 32 s
    # past its cap when only the job was sized to the wall clock, part 12)
    trial = simulated(MultiFidelityPlanner().propose(ctx(goal)), 0.3)
    state.note_overhead(trial.job_seconds + 35.0, trial)
    state.note_overhead(trial.job_seconds + 12.0, trial)
    failed = trial.model_copy(update={"status": "failed", "job_seconds": 0.0,
                                      "failure": Failure(kind=FailureKind.crash, message="worker died")})
    state.note_overhead(400.0, failed)  # a crash says nothing about the time around a job
    assert state.overhead_s() == pytest.approx(35.0)
    assert state.experiment_wall_s() == pytest.approx(540 - 14 - 35, abs=1)
    # an experiment queued behind another on its GPU: its wait for the GPU is not time around its job,
    # and its job may take only what is left once the jobs before it there are done
    queued = trial.model_copy(update={"phases": {**trial.phases, "gpu_wait": 80.0}})
    state.note_overhead(queued.job_seconds + 80.0 + 6.0, queued)
    assert state.overhead_s() == pytest.approx(35.0)
    assert state.experiment_wall_s(ahead_s=100.0) == pytest.approx(540 - 14 - 35 - 100, abs=1)


def test_an_experiment_that_builds_more_rows_is_expected_to_take_longer_outside_its_job():
    """1 x H200 (part 14d): trials spent 4-5 s building their rows, a scale-up of 7x their steps 21.5 s; the
    loop kept back the trials' 15-20 s around a job and ended 14 s past its wall-clock cap."""
    import time

    from mlintern.loop import LoopState

    goal = Goal(name="g", budget={"gpu_hours": 1.0, "wall_time_minutes": 10}, benchmark={"test_size": 500})
    state = LoopState(goal=goal, baseline=None, prior=GPU, on_gpu=True, started=time.time() - 60)
    trial = simulated(MultiFidelityPlanner().propose(ctx(goal)), 0.3)
    rows = lambda r, n: r.model_copy(update={"plan": r.plan.model_copy(update={  # noqa: E731
        "dataset": r.plan.dataset.model_copy(update={"num_examples": n})})})
    small = rows(trial, 2000).model_copy(update={"phases": {**trial.phases, "data": 5.0}})  # 2.5 ms a row
    state.note_overhead(small.job_seconds + 18.0, small)
    state.note_overhead(small.job_seconds + 15.0, rows(small, 1000).model_copy(
        update={"phases": {**trial.phases, "data": 4.0}}))  # 4 ms a row: the fixed part weighs more
    # a plan of as many rows (or fewer) is expected to take what the experiments before it took
    assert state.overhead_s() == state.overhead_s(2000) == state.overhead_s(500) == pytest.approx(18.0)
    # one of 7,600 rows: each of them scaled up to its rows at the lowest rate a row took (2.5 ms)
    assert state.overhead_s(7600) == pytest.approx(max(18.0 + 5600 * 0.0025, 15.0 + 6600 * 0.0025))
    assert state.experiment_wall_s(rows=7600) == pytest.approx(state.experiment_wall_s() - 14.0, abs=0.5)
    # a loop's first experiments, with nothing measured: nothing to scale
    assert LoopState(goal=goal, baseline=None, prior=GPU).overhead_s(7600) is None
    # a job built ahead of its GPU (a GPU's second training worker): its model load and its trainer's build
    # (trl tokenizing the rows) are outside the job too, and grow with the rows (part 17: a scale-up's build
    # of 27.5 s, kept back at the trials' rate of building rows alone, made the loop end 13.6 s past its cap)
    ahead = LoopState(goal=goal, baseline=None, prior=GPU, on_gpu=True, started=time.time() - 60)
    built = rows(trial, 2000).model_copy(update={"phases": {**trial.phases, "data": 5.0, "ahead": 7.0}})
    ahead.note_overhead(built.job_seconds + 25.0, built)
    assert ahead.overhead_s(7600) == pytest.approx(25.0 + 5600 * 0.006)  # 6 ms a row: 2.5 to build, 3.5 to tokenize
    # a provisional experiment released when its GPU frees has built its rows and trainer already: its job
    # may use the wall clock up to the final tests (part 18: keeping its 55 s preparation back a second
    # time ended a 14-minute loop 60 s early)
    wall = ahead.wall_left_s()
    assert ahead.built_wall_s() == pytest.approx(wall - 14.0 - GPU.fixed_s, abs=0.5)
    assert ahead.built_wall_s() - ahead.experiment_wall_s(rows=7600) == pytest.approx(25.0 + 5600 * 0.006 - GPU.fixed_s,
                                                                                    abs=0.5)


def test_the_next_experiment_goes_to_the_gpu_lane_that_frees_first():
    from mlintern.flows.research_loop import Flight, _free_lane

    goal = Goal(name="g")
    plan = MultiFidelityPlanner().propose(ctx(goal))
    assert _free_lane([], 2, lambda plan: 10.0, now=1000.0) == (0, 0.0)
    # lane 0 trains one experiment: an empty lane comes first, with nothing ahead of it
    one = [Flight(plan, lane=0, dispatched=990.0, job_limit_s=60.0)]
    assert _free_lane(one, 2, lambda plan: 10.0, now=1000.0) == (1, 0.0)
    # both lanes busy: the one whose job ends first; its job ends at dispatch + preparation + job limit
    two = one + [Flight(plan, lane=1, dispatched=995.0, job_limit_s=30.0)]
    assert _free_lane(two, 2, lambda plan: 10.0, now=1000.0) == (1, pytest.approx(35.0))
    # one lane of depth 2: the second queued job starts when the first ends, however early it was sent
    queued = one + [Flight(plan, lane=0, dispatched=991.0, job_limit_s=20.0)]
    assert _free_lane(queued, 1, lambda plan: 10.0, now=1000.0) == (0, pytest.approx(80.0))


def provisional_ctx(goal: Goal, history=(), champion=None, pending=()) -> PlanningContext:
    """The loop's context for a queue slot behind a running job, planned on its likely outcome."""
    from mlintern.loop import LoopState

    c = ctx(goal, history, champion, pending)
    state = LoopState(goal=goal, baseline=c.baseline, history=list(history), prior=GPU, on_gpu=True, rungs=c.rungs)
    return c.model_copy(update={"sizing": state.sizing(list(pending), optimistic=True), "provisional": True,
                                "gpu_free_in_s": 30.0})


def test_a_queue_slot_behind_a_running_trial_gets_a_provisional_plan_kept_only_if_its_assumption_holds():
    """1 x H200 (bench/RESULTS.md part 17): with a trial running, counted at its full predicted cost, the
    exploration budget funded nothing more, so the GPU's queue stayed empty; the trial was pruned at its first
    rung and the GPU then waited 35 s for the next trial's flow run, rows and build, and 60 s before the
    scale-up. A provisional plan counts the running trial at its first rung's cost; the loop releases it
    when that trial ends only if the planner still wants it then."""
    from mlintern.planners.base import PlannerWaiting

    goal = gpu_goal(300)
    planner = MultiFidelityPlanner()
    champion = simulated(planner.propose(ctx(goal)), 0.5)
    history = [champion]
    running = planner.propose(ctx(goal, history, champion=champion))
    while True:  # trials pruned early until the next one holds the rest of the exploration's share
        try:
            planner.propose(ctx(goal, history, champion=champion, pending=[running]))
        except PlannerWaiting:
            break
        history.append(simulated(running, 0.1, status="pruned", stop_at_s=5))
        running = planner.propose(ctx(goal, history, champion=champion))
    assert running.stage == "explore"
    spec = planner.propose(provisional_ctx(goal, history, champion, pending=[running]))
    assert spec.stage == "explore", "pruned at its first rung, the running trial would leave a trial's budget"
    pruned = history + [simulated(running, 0.1, status="pruned", stop_at_s=5)]
    assert planner.still_wanted(spec, ctx(goal, pruned, champion=champion)), "it was pruned: the trial goes on"
    full = history + [simulated(running, 0.2)]
    assert not planner.still_wanted(spec, ctx(goal, full, champion=champion)), "it ran its length: withdrawn"

    # the last trial: even at its first rung's cost no other trial fits, so the slot gets the scale-up
    last = spec
    while (nxt := planner.propose(provisional_ctx(goal, pruned, champion, pending=[last]))).stage == "explore":
        pruned.append(simulated(last, 0.1, status="pruned", stop_at_s=5))
        last = nxt
    with pytest.raises(PlannerWaiting, match="exploration trial"):
        planner.propose(ctx(goal, pruned, champion=champion, pending=[last]))
    up = nxt
    assert up.stage == "scale_up" and up.init_from == "champion"
    # with two trials still out (one on each GPU), or none finished, the choice is open: no provisional
    # scale-up (2 CPU lanes built the defaults' scale-up before any result, and withdrew it)
    other_gpu = last.model_copy(update={"rationale": "the trial on the other GPU"})
    with pytest.raises(PlannerWaiting, match="2 exploration trial"):
        planner.propose(provisional_ctx(goal, pruned, champion, pending=[last, other_gpu]))
    lone = [planner.propose(ctx(goal))]
    squeezed = provisional_ctx(goal, pending=lone).model_copy(update={"experiments_left": 1})
    with pytest.raises(PlannerWaiting, match="1 exploration trial"):
        planner.propose(squeezed)
    quiet = pruned + [simulated(last, 0.1, status="pruned", stop_at_s=5)]
    assert planner.still_wanted(up, ctx(goal, quiet, champion=champion)), "the winner stands: released"
    won = simulated(last, 0.9)
    assert not planner.still_wanted(up, ctx(goal, pruned + [won], champion=won)), \
        "a new champion with another configuration: the scale-up is planned again"

"""Selection and stopping rules of the controller (pure logic)."""

import threading
from concurrent.futures import Future

import pytest

from mlintern.loop import LoopState
from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Failure, FailureKind, Goal, Hyperparameters
from mlintern.selection import beats


def score(v, se=0.05):
    return EvalScore(task="t", metric="score", value=v, stderr=se, n=40)


def result(v, lr=1e-4, status="succeeded", retry_of=None, se=0.05, stage="scale_up", hours=0.1):
    plan = ExperimentPlan(hyperparameters=Hyperparameters(learning_rate=lr), retry_of=retry_of, stage=stage)
    failure = Failure(kind=FailureKind.oom, message="OOM") if status == "failed" else None
    return ExperimentResult(plan_id=plan.plan_id(), plan=plan, status=status,
                            dev=score(v, se) if status != "failed" else None, failure=failure,
                            accelerator_hours=hours)


def test_candidate_within_noise_is_not_promoted():
    champion = score(0.40, 0.05)
    assert not beats(score(0.45, 0.05), champion, z=1.0)  # +0.05 < 0.0707 combined stderr
    assert beats(score(0.52, 0.05), champion, z=1.0)
    assert not beats(score(0.40, 0.0), score(0.40, 0.0), z=0.0), "a tie never wins"


def test_loop_keeps_champion_when_candidate_is_within_noise():
    state = LoopState(goal=Goal(stop={"patience": 3, "noise_z": 1.0}), baseline=score(0.10))
    assert state.record(result(0.40, lr=1e-4))
    assert not state.record(result(0.44, lr=2e-4)), "within noise of the champion"
    assert state.champion.dev.value == 0.40
    assert state.since_improvement == 1


def test_stop_reasons_state_the_budget_used():
    goal = Goal(budget={"max_experiments": 3, "gpu_hours": 0.2}, target_score=0.9, stop={"patience": 2})
    state = LoopState(goal=goal, baseline=score(0.1))
    assert state.stop_reason() is None
    state.record(result(0.5, lr=1e-4))
    state.record(result(0.5, lr=2e-4))
    reason = state.stop_reason()
    assert "accelerator budget" in reason and "used 720 of 720 accelerator-seconds (100%) in 2 experiments" in reason
    state = LoopState(goal=Goal(target_score=0.3), baseline=score(0.1))
    state.record(result(0.6, lr=1e-4))
    assert "target reached" in state.stop_reason() and "accelerator-seconds" in state.stop_reason()


def test_patience_stops_only_on_recorded_plateau_evidence():
    """No improvement alone is not enough: the runs since the last improvement must also have used a
    real share of the budget (plateau_fraction), or the loop goes on spending it."""
    goal = Goal(budget={"gpu_hours": 1.0}, stop={"patience": 2, "plateau_fraction": 0.3})
    state = LoopState(goal=goal, baseline=score(0.5))
    state.record(result(0.3, lr=1e-4, hours=0.05)); state.record(result(0.3, lr=2e-4, hours=0.05))
    assert state.since_improvement == 2 and state.stop_reason() is None, "only 10% of the budget: no evidence"
    state.record(result(0.31, lr=3e-4, hours=0.25))
    reason = state.stop_reason()
    assert reason.startswith("plateau: the last 3 runs (1260 accelerator-seconds, 35% of the budget)")
    assert "best dev 0.3100" in reason and "used 1260 of 3600" in reason


def test_exploration_trials_and_pruned_probes_never_count_towards_patience():
    state = LoopState(goal=Goal(stop={"patience": 1, "plateau_fraction": 0.01}), baseline=score(0.5))
    state.record(result(0.3, lr=1e-4, stage="explore", hours=0.3))
    state.record(result(0.2, lr=2e-4, stage="explore", status="pruned", hours=0.3))
    assert state.since_improvement == 0 and state.stop_reason() is None
    assert state.champion is None, "a pruned trial never becomes champion"


def test_failed_plans_are_retried_a_bounded_number_of_times():
    state = LoopState(goal=Goal(max_retries_per_plan=2, budget={"max_experiments": 50}), baseline=score(0.1))
    first = result(0, status="failed", lr=1e-4)
    state.record(first)
    assert state.pending_failure() is not None
    second = result(0, status="failed", lr=5e-5, retry_of=first.plan_id)
    state.record(second)
    assert state.pending_failure() is not None
    third = result(0, status="failed", lr=2e-5, retry_of=second.plan_id)
    state.record(third)
    assert state.pending_failure() is None, "gave up on the lineage after 2 retries"
    assert state.since_improvement == 0, "failures spend budget, not patience"


def test_candidate_that_fails_confirmation_is_not_promoted():
    state = LoopState(goal=Goal(stop={"patience": 3, "noise_z": 1.0}), baseline=score(0.10))
    candidate = result(0.50, lr=1e-4)
    assert state.needs_confirmation(candidate)
    candidate.confirm, candidate.confirmed = score(0.12), False  # dev luck, not a real gain
    assert not state.record(candidate) and state.champion is None
    confirmed = result(0.50, lr=2e-4)
    confirmed.confirm, confirmed.confirmed = score(0.45), True
    assert state.record(confirmed) and state.champion is confirmed
    assert not state.needs_confirmation(result(0.52, lr=3e-4)), "within noise of the new champion"


def test_pooled_score_over_dev_and_confirmation():
    from mlintern.selection import pooled

    p = pooled(EvalScore(task="dev", metric="score", value=0.15, stderr=0.0565, n=40),
               EvalScore(task="confirm", metric="score", value=0.125, stderr=0.05, n=40))
    assert p.n == 80 and abs(p.value - 0.1375) < 1e-9
    assert 0.03 < p.stderr < 0.0565, "pooling two disjoint sets narrows the interval"
    champion = pooled(score(0.0625, 0.038), score(0.0625, 0.038))
    assert beats(p, champion, z=1.0), "a real gain seen on both sets is promoted"
    assert not beats(pooled(score(0.15), score(0.0)), pooled(score(0.1), score(0.1)), z=1.0), \
        "a dev-only win that vanishes on the confirmation set is not"


def test_divergence_guard_does_not_fire_on_a_continued_model_near_zero_loss():
    """Measured on H200: a scale-up from a trained champion logged 0.004, then 0.02-0.05 losses, and
    the guard (4x the first loss) stopped it as 'diverged'. A real blow-up still stops."""
    from types import SimpleNamespace

    from mlintern.training.callbacks import DivergenceGuard

    def feed(losses):
        guard, control = DivergenceGuard(), SimpleNamespace(should_training_stop=False)
        for step, loss in enumerate(losses, 1):
            guard.on_log(None, SimpleNamespace(global_step=step), control, logs={"loss": loss})
        return guard.reason

    assert feed([0.004, 0.03, 0.05, 0.04, 0.02]) is None
    assert "diverged" in feed([0.004, 3.0, 5.0, 8.0])
    assert "diverged" in feed([2.5, 11.0, 12.0, 15.0])
    assert "nan" in feed([2.5, float("nan")])


def test_the_first_plans_go_out_while_the_base_score_is_measured_and_results_wait_for_it():
    """The base model's dev score is measured beside the first experiments: asking whether to stop (even
    with a target score) and planning never wait for it; comparing a result does, and a failed
    measurement fails the comparison rather than letting a result beat an unknown score."""
    from mlintern.schemas import PlanningContext

    measured = Future()
    goal = Goal(target_score=0.3, budget={"max_experiments": 5})
    state = LoopState(goal=goal, baseline=None, pending_baseline=measured)
    assert state.stop_reason() is None and not state.baseline_known()
    ctx = PlanningContext(goal=goal, metric="score", baseline=state.baseline, experiments_left=5, hours_left=1.0)
    assert ctx.baseline is None

    recorded = threading.Event()
    threading.Thread(target=lambda: (state.record(result(0.2)), recorded.set()), daemon=True).start()
    assert not recorded.wait(0.3), "a result is not compared before the base score is known"
    measured.set_result(score(0.25, 0.0))
    assert recorded.wait(5) and state.baseline.value == 0.25
    assert state.champion is None, "0.2 does not beat the base model's 0.25"
    assert state.baseline_known() and state.stop_reason() is None

    failed = Future()
    failed.set_exception(RuntimeError("lm-eval crashed"))
    state = LoopState(goal=goal, baseline=None, pending_baseline=failed)
    with pytest.raises(RuntimeError, match="lm-eval crashed"):
        state.record(result(0.9))


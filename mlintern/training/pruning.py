"""Dev checks during training, with Optuna's successive-halving pruner deciding at each rung.

The loop's schedule gives each exploration trial rung times (training-clock seconds, dev checks
excluded) and the rung values of the trials that finished before it. At each rung this callback
scores dev on the weights in memory, logs the point (MLflow metric `dev_score`, the curve a good run
shows), reports it to an Optuna trial and asks Optuna's `SuccessiveHalvingPruner` whether to go on:
the trial continues only if it is in the top 1/eta of the trials that reached that rung. Rungs are
reported at step eta**k (the resource in units of the first rung), so Optuna's own rung arithmetic
(`min_resource=1`) matches the schedule. The study is rebuilt in memory from the peers' values, so
no shared Optuna storage is needed and a job runs the same on any host.

The same callback enforces the run's training-time cap (the budget guard), and paces a long run:
after PACE_AT_STEP steps, and again each time the step count doubles, it re-times the run's step count
from the step time measured since the last re-timing, so that the learning-rate decay ends at the time the run was sized for
(`Fidelity.target_train_s`). One early measurement is not enough: on 4 x H100 the steps before step 30
ran 0.24-0.30 s against 0.19 s later, and single runs paced once stopped at 66% and 77% of their budget.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from transformers import TrainerCallback

from mlintern.budget import PACE_AT_STEP, WARMUP_STEPS
from mlintern.schemas import CurvePoint, EvalScore, Fidelity

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)
_DIST = {"x": FloatDistribution(0.0, 1.0)}  # trials need a parameter; the pruner ignores it


def pruning_trial(fidelity: Fidelity) -> optuna.Trial:
    """An Optuna trial in a study holding the peers' rung values (as the pruner itself records them)."""
    eta = fidelity.reduction_factor
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=eta, min_early_stopping_rate=0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for peer in fidelity.peers:
        rungs = {int(k): float(v) for k, v in peer.items()}
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0.5}, distributions=_DIST, state=TrialState.PRUNED,
            intermediate_values={eta ** k: v for k, v in rungs.items()},
            system_attrs={f"completed_rung_{k}": v for k, v in rungs.items()},
        ))
    study.enqueue_trial({"x": 0.5})
    return study.ask(_DIST)


class FidelityCallback(TrainerCallback):
    """Dev checks at the rungs, the pruner's decision after each but the last, and the time cap."""

    def __init__(self, fidelity: Fidelity, evaluate: Callable[[bool], EvalScore] | None,
                 examples_per_step: int, log_point: Callable[[CurvePoint, int], None] | None = None,
                 job_started: float | None = None):
        self.fidelity = fidelity
        self.deadline: float | None = None
        self.set_job_start(job_started)
        self.evaluate = evaluate
        self.examples_per_step = examples_per_step
        self.log_point = log_point
        self.trial = pruning_trial(fidelity) if fidelity.rung_seconds and evaluate else None
        self.next_rung = 0
        self.curve: list[CurvePoint] = []
        self.eval_seconds = 0.0
        self.started: float | None = None
        self.pruned_at: float | None = None
        self.time_capped = False
        self.last_eval_step: int | None = None
        self.last_score: EvalScore | None = None
        self.warmup_seconds: float | None = None  # training clock when WARMUP_STEPS were done
        self.paced_steps: int | None = None  # the step count a paced run re-timed itself to
        self.next_pace = PACE_AT_STEP  # the step of the next re-timing (it doubles after each)
        self.pace_mark: tuple[int, float] | None = None  # (step, training clock) where the step-time window starts

    def train_clock(self) -> float:
        """Seconds of training so far, dev checks excluded."""
        if self.started is None:
            return 0.0
        return time.time() - self.started - self.eval_seconds

    def update(self, fidelity: Fidelity) -> None:
        """New limits before training starts (a provisional job released by the controller: its time cap and
        pacing target for the budget now left, the pruner's peers as they are now)."""
        self.fidelity = fidelity
        self.trial = pruning_trial(fidelity) if fidelity.rung_seconds and self.evaluate else None

    def set_job_start(self, job_started: float | None) -> None:
        """The wall-clock time by which training must stop, so that the job ends within its limit."""
        self.deadline = (job_started + self.fidelity.job_limit_s - self.fidelity.tail_s
                         if job_started is not None and self.fidelity.job_limit_s is not None else None)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()

    def check(self, step: int, rung: int | None, subset: bool | None = None) -> EvalScore:
        """Score dev now: a rung check on the first `rung_dev_items` items (`subset`, by default for a
        rung), the final one on all."""
        t0 = time.time()
        clock = self.train_clock()
        score = self.evaluate(rung is not None if subset is None else subset)
        self.eval_seconds += time.time() - t0
        point = CurvePoint(step=step, examples=step * self.examples_per_step, train_seconds=round(clock, 3),
                           value=score.value, rung=rung)
        self.curve.append(point)
        self.last_eval_step, self.last_score = step, score
        if self.log_point is not None:
            self.log_point(point, step)
        return score

    def on_step_end(self, args, state, control, **kwargs):
        clock = self.train_clock()
        if state.global_step == WARMUP_STEPS:
            self.warmup_seconds = clock
            self.pace_mark = (WARMUP_STEPS, clock)
        rungs = self.fidelity.rung_seconds
        if self.trial is not None and self.next_rung < len(rungs) and clock >= rungs[self.next_rung]:
            k = self.next_rung
            self.next_rung += 1
            last = k == len(rungs) - 1
            # the last rung decides nothing (no pruning after it): it is the final score, on the whole
            # dev set, scored once (a subset check before it cost a third of a short trial's dev seconds)
            score = self.check(state.global_step, k, subset=not last)
            self.trial.report(score.value, self.fidelity.reduction_factor ** k)
            if not last and self.trial.should_prune():
                self.pruned_at = clock
                control.should_training_stop = True
                log.info("pruned at rung %d (%.1f s of training): dev %.4f", k, clock, score.value)
                return control
            if last:
                control.should_training_stop = True  # the trial's last rung: it has had its budget
        if self.fidelity.target_train_s and state.global_step == self.next_pace and self.warmup_seconds is not None:
            self.pace(state, clock, kwargs.get("lr_scheduler"))
            self.next_pace *= 2
        if self.paced_steps is not None and state.global_step >= self.paced_steps:
            control.should_training_stop = True
        cap = self.fidelity.time_limit_s
        if cap is not None and clock >= cap and not control.should_training_stop:
            self.time_capped = True
            control.should_training_stop = True
            log.info("training stopped by its time cap (%.1f s >= %.1f s)", clock, cap)
        if self.deadline is not None and time.time() >= self.deadline and not control.should_training_stop:
            self.time_capped = True
            control.should_training_stop = True
            log.info("training stopped so the job ends within its %.0f s limit", self.fidelity.job_limit_s)
        return control

    def pace(self, state, clock: float, scheduler) -> None:
        """Re-time the run: the steps that fit its target training time at the step time measured since
        the last re-timing (the first window starts after the warmup steps), between this step and its
        bound, with the learning-rate decay ending there. The latest window, not the mean since the
        start, so a slow start does not keep pulling the estimate up."""
        mark_step, mark_clock = self.pace_mark
        step_s = (clock - mark_clock) / max(1, state.global_step - mark_step)
        self.pace_mark = (state.global_step, clock)
        target = self.fidelity.target_train_s
        if self.deadline is not None:  # the job's other parts took longer than predicted: the decay ends sooner
            target = min(target, clock + self.deadline - time.time())
        fit = state.global_step + int((target - clock) / max(step_s, 1e-6))
        self.paced_steps = max(state.global_step + 1, min(state.max_steps, fit))
        retimed = retime_schedule(scheduler, self.paced_steps)
        log.info("paced: %.3f s/step measured, %d steps fit %.0f s of training (bound %d)%s", step_s,
                 self.paced_steps, target, state.max_steps,
                 "" if retimed else "; the learning-rate schedule could not be re-timed")


def retime_schedule(scheduler, total_steps: int) -> bool:
    """Make a transformers LambdaLR schedule (cosine, linear, ...; accelerate may wrap it) decay to its end
    at `total_steps` instead of the step count it was built for. False if it is not one it can re-time."""
    sched = getattr(scheduler, "scheduler", scheduler)
    lambdas = getattr(sched, "lr_lambdas", None)
    if not lambdas or not all(isinstance(f, functools.partial) for f in lambdas):
        return False
    sched.lr_lambdas = [functools.partial(f.func, *f.args, **_retimed(f.keywords, total_steps))
                        if "num_training_steps" in f.keywords else f for f in lambdas]
    # the next step's rate was set by the old schedule: set it from the new one
    for group, base, f in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * f(sched.last_epoch)
    sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]
    return True


def _retimed(keywords: dict, total_steps: int) -> dict:
    """A schedule's arguments for `total_steps`, its warmup kept the same share of the run."""
    out = {**keywords, "num_training_steps": total_steps}
    if keywords.get("num_warmup_steps"):
        out["num_warmup_steps"] = max(1, round(keywords["num_warmup_steps"] * total_steps / keywords["num_training_steps"]))
    return out

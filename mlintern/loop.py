"""The controller's bookkeeping, free of Prefect and MLflow so it is easy to test."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from mlintern.budget import Sizing, Throughput, final_reserve_s, fit_throughput, prior_throughput, sizing
from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Failure, Goal
from mlintern.selection import beats, noise_margin

# Stages whose results say whether more compute still helps (exploration trials and pruned probes
# are cheap by design: they never count towards a plateau).
PLATEAU_STAGES = ("scale_up", "single", "search", "retry")


@dataclass(frozen=True)
class Outside:
    """What an experiment took outside its job (dispatch, flow-run process, training rows, a build ahead of
    the GPU, records): its wall seconds, the training rows it asked for, and the seconds building them took
    a row (its `data` and `ahead` phases over its rows: their fixed parts are counted in, so the rate errs
    high)."""

    seconds: float
    rows: int
    data_s_per_row: float


@dataclass
class LoopState:
    goal: Goal
    # the base model's dev score; None while the controller measures it beside the first experiments
    # (`pending_baseline`): their plans do not need it, their results do (`await_baseline`)
    baseline: EvalScore | None
    history: list[ExperimentResult] = field(default_factory=list)
    champion: ExperimentResult | None = None
    since_improvement: int = 0
    started: float = field(default_factory=time.time)
    llm_exhausted: bool = False
    planner_error: str | None = None
    planner_done: str | None = None
    prior: Throughput = field(default_factory=lambda: prior_throughput(135e6, False, 40.0))
    on_gpu: bool = False
    rungs: list[float] = field(default_factory=list)
    compute_since_improvement_s: float = 0.0
    literature_dollars: float = 0.0  # paper digests (recorded with the literature run)
    inflight_dollars: dict[str, float] = field(default_factory=dict)  # planning spend of running plans
    # what each experiment took outside its job (dispatch, flow-run process, training rows, records)
    overheads: list[Outside] = field(default_factory=list)
    pending_baseline: Future | None = None
    # the base model's held-out test score, measured beside the loop and kept here, out of the ledger and
    # of every plan's sight, until the final report (its evaluation then no longer follows the last job)
    pending_base_test: Future | None = None

    @property
    def llm_dollars(self) -> float:
        """The goal's one LLM spend counter, durable across restarts: literature digests plus each
        experiment's own spend (planning it and mapping hub columns for it), running ones included."""
        return self.literature_dollars + sum(r.llm_dollars for r in self.history) + sum(self.inflight_dollars.values())

    @property
    def best(self) -> EvalScore:
        """The dev score to beat: the champion's, else the base model's (waiting for it while it is measured:
        where that must not wait, ask `baseline_known()` first)."""
        return self.champion.dev if self.champion is not None else self.await_baseline()

    def await_baseline(self) -> EvalScore:
        """The base model's dev score, waiting for its measurement if it is still running (its error, if it
        failed: nothing can be compared without it)."""
        if self.baseline is None:
            if self.pending_baseline is None:
                raise RuntimeError("no base model dev score: neither given nor being measured")
            self.baseline = self.pending_baseline.result()
        return self.baseline

    def baseline_known(self) -> bool:
        """Whether the base model's dev score is in (taking it from its measurement if that has ended)."""
        if self.baseline is None and self.pending_baseline is not None and self.pending_baseline.done():
            self.await_baseline()
        return self.baseline is not None

    @property
    def budget_s(self) -> float:
        return self.goal.budget.gpu_hours * 3600

    @property
    def used_s(self) -> float:
        return sum(r.accelerator_hours for r in self.history) * 3600

    @property
    def hours_used(self) -> float:
        return self.used_s / 3600

    @property
    def experiments_left(self) -> int:
        return max(0, self.goal.budget.max_experiments - len(self.history))

    @property
    def hours_left(self) -> float:
        return max(0.0, self.goal.budget.gpu_hours - self.hours_used)

    def wall_left_s(self) -> float:
        return self.goal.budget.wall_time_minutes * 60 - (time.time() - self.started)

    def experiment_wall_s(self, ahead_s: float = 0.0, rows: int | None = None) -> float:
        """Wall-clock seconds the job of an experiment dispatched now may take: what is left of the wall-time
        budget, less the final test and what an experiment takes outside its job (`final_reserve_s`; for one
        that builds `rows` training rows where given, `overhead_s(rows)`), and less `ahead_s`, the seconds
        its GPU is still promised to the jobs queued before it."""
        return self.wall_left_s() - ahead_s - final_reserve_s(self.goal, self.throughput(), self.overhead_s(rows),
                                                              tests=self.final_tests())

    def built_wall_s(self) -> float:
        """Wall-clock seconds the job of an experiment already built may take from now (a provisional one,
        released): its rows and trainer are done, so only the final tests and a job's fixed after-part are
        kept back. Keeping back its preparation again ended a 14-minute loop 60 s early (bench/RESULTS.md
        part 18)."""
        return self.wall_left_s() - final_reserve_s(self.goal, self.throughput(), 0.0, tests=self.final_tests())

    def final_tests(self) -> int:
        """Held-out test evaluations still to come after the last experiment: the champion's, and the base
        model's unless its measurement beside the loop has ended well."""
        base_in = (self.pending_base_test is not None and self.pending_base_test.done()
                   and self.pending_base_test.exception() is None)
        return 1 if base_in else 2

    def note_overhead(self, wall_s: float, result: ExperimentResult) -> None:
        """Record how long an experiment took, from dispatch to its result, beyond its job and the wait for
        its GPU's job before it (only where a job ran: a crash before or during one says nothing about the
        time around a job)."""
        if result.job_seconds > 0 and result.failure is None:
            rows = result.plan.dataset.num_examples
            # the rows, and, for a job built ahead of its GPU (the worker's model load and trl's tokenizing
            # of the rows), its build: both grow with the rows (part 17: a scale-up's 27.5 s build, kept
            # back at the trials' build time, made a loop end 13.6 s past its cap)
            data_s = result.phases.get("data", 0.0) + result.phases.get("ahead", 0.0)
            self.overheads.append(Outside(max(0.0, wall_s - result.job_seconds - result.phases.get("gpu_wait", 0.0)),
                                          rows, data_s / rows if rows else 0.0))

    def overhead_s(self, rows: int | None = None) -> float | None:
        """The most any of the last experiments took outside its job (None before the first): through a
        deployment 20-35 s on 2 x H200 (dispatch, a flow-run process, the training rows), which made a
        1-GPU loop end 32 s past its wall-clock cap when only the job was sized to it (part 12).

        For an experiment of `rows` training rows, each of the last ones is scaled up to that many rows at
        the lowest rate a row took to build among them: a scale-up of 7x their steps built its rows in 21.5 s
        against trials' 5 s, and a loop that kept back the trials' time ended 14 s past its cap (part 14d)."""
        recent = self.overheads[-5:]
        if not recent:
            return None
        if rows is None:
            return max(o.seconds for o in recent)
        rate = min(o.data_s_per_row for o in recent)
        return max(o.seconds + rate * max(0, rows - o.rows) for o in recent)

    def throughput(self) -> Throughput:
        return fit_throughput(self.prior, self.history)

    def sizing(self, pending: list[ExperimentPlan] = (), optimistic: bool = False) -> Sizing:
        """Bounds for the next plan; experiments still running count at their predicted cost, and at
        the cost of a confirmation check each (charged to a candidate after its job, so a plan made
        while it runs would not see it; bench/RESULTS.md part 10c). `optimistic` (a provisional plan's):
        running exploration trials count at what they cost if pruned at their first rung."""
        throughput = self.throughput()
        first = sizing(self.goal, self.used_s, throughput, self.on_gpu)
        if not pending:
            return first
        confirm_s = throughput.eval_seconds(first.dev_items) if self.goal.benchmark.confirm_seed is not None else 0.0

        def cost(p: ExperimentPlan) -> float:
            full = first.plan_job_seconds(p) + confirm_s
            return min(full, self.pruned_cost_s(first)) if optimistic and p.stage == "explore" and self.rungs else full

        committed = sum(cost(p) for p in pending)
        return sizing(self.goal, self.used_s + committed, throughput, self.on_gpu)

    def pruned_cost_s(self, first: Sizing | None = None) -> float:
        """The accounted seconds of an exploration trial pruned at its first rung: its fixed part, training to
        the rung, and the rung's dev check."""
        first = first or sizing(self.goal, self.used_s, self.throughput(), self.on_gpu)
        items = self.goal.schedule.rung_dev_items or first.dev_items
        return first.throughput.fixed_s + self.rungs[0] + first.throughput.eval_seconds(items)

    def usage(self) -> str:
        return (f"used {self.used_s:.0f} of {self.budget_s:.0f} accelerator-seconds "
                f"({self.used_s / self.budget_s:.0%}) in {len(self.history)} experiments")

    def needs_confirmation(self, result: ExperimentResult) -> bool:
        """A candidate that beats the champion on dev is checked on the confirmation set."""
        return (result.status == "succeeded" and result.dev is not None and result.confirmed is None
                and beats(result.dev, self.best, self.goal.stop.noise_z))

    def record(self, result: ExperimentResult) -> bool:
        """Add a finished experiment; returns True if it became the champion."""
        self.history.append(result)
        self.inflight_dollars.pop(result.plan_id, None)
        if result.status == "succeeded" and result.dev is not None and result.confirmed is not False and beats(
            result.dev, self.best, self.goal.stop.noise_z
        ):
            self.champion = result
            self.since_improvement = 0
            self.compute_since_improvement_s = 0.0
            return True
        # failures and pruned probes spend budget, not patience
        if result.status == "succeeded" and result.plan.stage in PLATEAU_STAGES:
            self.since_improvement += 1
            self.compute_since_improvement_s += result.accelerator_hours * 3600
        return False

    def plateau(self) -> str | None:
        """Evidence that more compute no longer helps: `patience` finished runs past exploration, which
        together used at least `plateau_fraction` of the budget, none beating the champion beyond noise."""
        stop = self.goal.stop
        if self.since_improvement < stop.patience or self.compute_since_improvement_s < stop.plateau_fraction * self.budget_s:
            return None
        recent = [r for r in self.history if r.status == "succeeded" and r.plan.stage in PLATEAU_STAGES][-self.since_improvement:]
        best_recent = max(r.dev.value for r in recent)
        margin = noise_margin(self.best, self.best, stop.noise_z)
        return (f"plateau: the last {self.since_improvement} runs ({self.compute_since_improvement_s:.0f} "
                f"accelerator-seconds, {self.compute_since_improvement_s / self.budget_s:.0%} of the budget) reached at "
                f"best dev {best_recent:.4f}, not above the champion's {self.best.value:.4f} + {margin:.4f} noise margin")

    def stop_reason(self) -> str | None:
        reason = self._reason()
        return f"{reason}; {self.usage()}" if reason else None

    def _reason(self) -> str | None:
        goal = self.goal
        if goal.target_score is not None and self.baseline_known() and self.best.value >= goal.target_score:
            return f"target reached: dev {self.best.value:.4f} >= {goal.target_score}"
        if self.experiments_left <= 0:
            return f"experiment budget spent ({goal.budget.max_experiments})"
        if self.hours_left <= 0:
            return f"accelerator budget spent ({self.hours_used:.3f} of {goal.budget.gpu_hours} h)"
        if self.wall_left_s() <= 0:
            return f"wall-time budget spent ({goal.budget.wall_time_minutes} min)"
        if self.planner_done:
            return self.planner_done
        if (evidence := self.plateau()) is not None:
            return evidence
        if self.llm_exhausted:
            return "LLM budget spent"
        if self.planner_error:
            return f"planner failed ({self.planner_error[:300]}); fix it and run the goal again to resume"
        if self.history and self.history[-1].failure is not None and self.history[-1].failure.kind.value == "disk_full":
            return "disk full: free space under INTERN_WORK_DIR, then run again to resume"
        return None

    def pending_failure(self) -> tuple[Failure, ExperimentPlan] | None:
        """The last failed plan, if it should be fixed and retried (bounded per lineage)."""
        if not self.history or self.history[-1].status != "failed" or self.history[-1].failure is None:
            return None
        last = self.history[-1]
        depth, plan = 0, last.plan
        by_id = {r.plan_id: r for r in self.history}
        while plan.retry_of and plan.retry_of in by_id and depth < 100:
            depth += 1
            plan = by_id[plan.retry_of].plan
        if depth >= self.goal.max_retries_per_plan:
            return None
        return last.failure, last.plan

"""The cost model's types: what a job of a configuration costs (`Throughput`) and what one
experiment can afford (`Sizing`), with the prior a loop starts from before anything is measured.

Pure arithmetic on pydantic models, shared by planners (`PlanningContext.sizing`), the controller
and the CLI's dry run. Fitting the model on measured runs lives in mlintern/budget.py.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from mlintern.schemas.common import Method
from mlintern.schemas.goal import Goal
from mlintern.schemas.plan import ExperimentPlan, Hyperparameters

# Throughput priors, replaced by measurements after the first experiment. Conservative: a first
# trial that is too short wastes little; one that is too long can eat the budget.
GPU_EFFECTIVE_FLOPS = 0.10 * 700e12  # 10% MFU of an H100/H200-class bf16 peak
CPU_EFFECTIVE_FLOPS = 2.0e10
GPU_STEP_OVERHEAD_S = 0.15  # host-bound per-step cost: 0.165 s at batch 8 for SmolLM2-135M on H200
CPU_STEP_OVERHEAD_S = 0.5
# The first steps of a job pay one-off costs (kernel selection, allocator growth, data workers):
# 8 steps at batch 32 took 3.6 s on H200 where a step takes 0.18 s. The throughput fit uses the
# steps after these, and counts the rest as the job's fixed cost.
WARMUP_STEPS = 5
PACE_AT_STEP = 30  # a paced run re-times itself after this many steps (25 steady ones after the warmup)
PACE_HEADROOM = 2.0  # ... up to this many times its planned steps (measured: 0.25 s/step predicted, 0.14 real)
# ... or this many, where the step time comes from measured runs of unpacked batches like its own: none
# of 13 scale-ups on H200 (bench/results of parts 12-14) trained more than 1.01x its planned steps, and
# of a 1-GPU loop's scale-up's 43 s of data and trainer build with its GPU idle, about 17 s went on rows
# past its planned steps (part 14d)
MEASURED_PACE_HEADROOM = 1.25
METHOD_COST = {Method.sft: 1.0, Method.dpo: 2.5, Method.grpo: 12.0}  # per example, relative to SFT


class Throughput(BaseModel):
    """Seconds a job costs, by configuration; `measured` = experiments it was fitted on (0 = prior)."""

    step_overhead_s: float = Field(ge=0)
    example_s: float = Field(gt=0)
    fixed_s: float = Field(ge=0)
    eval_item_s: float = Field(gt=0)
    tokens_per_example: float = Field(gt=0)
    measured: int = 0
    source: str = "prior"

    def examples_per_step(self, hp: Hyperparameters) -> float:
        """Examples an optimizer step sees: the micro-batch times accumulation, or for packed rows the
        examples that fit in them (the cost model is per example)."""
        rows = hp.per_device_batch_size * hp.gradient_accumulation_steps
        return rows * hp.max_length / self.tokens_per_example if hp.packing else float(rows)

    def step_seconds(self, examples_per_step: float, method: Method = Method.sft) -> float:
        return self.step_overhead_s + self.example_s * examples_per_step * METHOD_COST[Method(method)]

    def steps_in(self, train_seconds: float, examples_per_step: int, method: Method = Method.sft) -> int:
        return max(0, int(train_seconds / self.step_seconds(examples_per_step, method)))

    def train_seconds(self, steps: int, examples_per_step: int, method: Method = Method.sft) -> float:
        return steps * self.step_seconds(examples_per_step, method)

    def eval_seconds(self, items: int) -> float:
        return items * self.eval_item_s

    def tokens_per_second(self, examples_per_step: int) -> float:
        return examples_per_step * self.tokens_per_example / self.step_seconds(examples_per_step)

    def describe(self) -> str:
        eg = (8, 32)
        per = ", ".join(f"batch {b}: {self.step_seconds(b):.3f} s/step, {self.tokens_per_second(b):,.0f} tok/s"
                        for b in eg)
        return (f"{per}; fixed {self.fixed_s:.1f} s/job; dev scoring {self.eval_item_s * 1000:.1f} ms/item "
                f"({self.source}, {self.measured} experiments measured)")


def prior_throughput(params: float, on_gpu: bool, tok_per_example: float) -> Throughput:
    flops = GPU_EFFECTIVE_FLOPS if on_gpu else CPU_EFFECTIVE_FLOPS
    return Throughput(
        step_overhead_s=GPU_STEP_OVERHEAD_S if on_gpu else CPU_STEP_OVERHEAD_S,
        example_s=6 * params * tok_per_example / flops,
        fixed_s=15.0 if on_gpu else 8.0,  # H200, a job's first step, load, data prep and save: 22 s measured
        eval_item_s=0.02 if on_gpu else 0.3,  # H200: 300 dev items in 3-8 s through lm-eval
        tokens_per_example=tok_per_example,
        source="prior " + ("gpu" if on_gpu else "cpu"),
    )


class Sizing(BaseModel):
    """What one experiment of a configuration can afford; every planner's plans are held to it."""

    budget_s: float = Field(description="The goal's whole accelerator budget.")
    used_s: float
    left_s: float
    throughput: Throughput
    dev_items: int
    batch_sizes: list[int]
    min_steps: int
    max_steps: int = Field(description="Most steps any plan may take now (smallest batch, all budget left).")

    def job_seconds(self, steps: int, examples_per_step: int, method: Method = Method.sft, dev_checks: int = 1) -> float:
        t = self.throughput
        return t.fixed_s + t.train_seconds(steps, examples_per_step, method) + t.eval_seconds(self.dev_items * dev_checks)

    def plan_job_seconds(self, plan: ExperimentPlan, dev_checks: int = 1) -> float:
        """Predicted accounted seconds of a plan."""
        hp = plan.hyperparameters
        return self.job_seconds(hp.max_steps, self.throughput.examples_per_step(hp), plan.method, dev_checks)

    def train_seconds_for_job(self, job_s: float, dev_checks: int = 1) -> float:
        """Training-clock seconds a job of `job_s` accounted seconds leaves after its fixed part and dev checks."""
        t = self.throughput
        return max(0.0, job_s - t.fixed_s - t.eval_seconds(self.dev_items * dev_checks))

    def steps_for_job(self, job_s: float, examples_per_step: int, method: Method = Method.sft, dev_checks: int = 1) -> int:
        return self.throughput.steps_in(self.train_seconds_for_job(job_s, dev_checks), examples_per_step, method)


def explore_budget_s(goal: Goal, lanes: int = 1) -> float:
    """The exploration's share (schedule.explore_fraction) of what the loop can spend: the accelerator
    budget, or what `lanes` GPUs can spend before the wall-clock cap where that is less. With a share of
    the nominal budget, 10 GPU-hours under a 60-minute cap spent the whole hour on the first trial."""
    spendable = min(goal.budget.gpu_hours * 3600, lanes * goal.budget.wall_time_minutes * 60)
    return goal.schedule.explore_fraction * spendable


def final_reserve_s(goal: Goal, throughput: Throughput, overhead_s: float | None = None, tests: int = 2) -> float:
    """Wall-clock seconds kept back from the goal's wall_time_minutes for what follows the last experiment
    (`tests` held-out test evaluations: the champion's, and the base model's unless it is already in) and for
    what an experiment takes outside its job (`overhead_s` as measured by the loop; a job's fixed cost before
    any is)."""
    outside = max(throughput.fixed_s, overhead_s or 0.0)
    return tests * (throughput.fixed_s + throughput.eval_seconds(goal.benchmark.test_size)) + outside


def default_batch_sizes(on_gpu: bool) -> list[int]:
    return [8, 16, 32, 64] if on_gpu else [4, 8]


def sizing(goal: Goal, used_s: float, throughput: Throughput, on_gpu: bool) -> Sizing:
    space = goal.search_space
    budget_s = goal.budget.gpu_hours * 3600
    left = max(0.0, budget_s - used_s)
    batches = sorted(space.batch_sizes or default_batch_sizes(on_gpu))
    dev_items = goal.benchmark.dev_size
    probe = Sizing(budget_s=budget_s, used_s=used_s, left_s=left, throughput=throughput, dev_items=dev_items,
                   batch_sizes=batches, min_steps=1, max_steps=1)
    max_steps = probe.steps_for_job(left, batches[0])
    min_steps = min(goal.schedule.min_trial_steps, max(1, max_steps))
    if space.max_steps is not None:  # pinned by the goal (e.g. the CPU demo)
        min_steps, max_steps = space.max_steps[0], min(space.max_steps[1], max(max_steps, space.max_steps[0]))
    return probe.model_copy(update={"min_steps": min_steps, "max_steps": max(min_steps, max_steps)})

"""Optuna planners over budget-sized plans.

- `SearchPlanner`: plain TPE (or random) search. Each trial samples a configuration and a size,
  as a share of the whole accelerator budget, and runs to its end; the best dev score wins.
- `SingleRunPlanner`: ONE run with the default hyperparameters, sized to the whole budget.
- `ConfigProposer`: TPE over configurations only (method, LoRA, learning rate, batch), for the
  multi-fidelity loop, which fixes the size and lets Optuna's pruner stop weak trials.

All are stateless: each call rebuilds an in-memory study from the loop's history (MLflow is the
memory), so a resumed controller proposes exactly what it would have proposed without the crash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.trial import TrialState

from mlintern.budget import fresh_rows, paced_steps
from mlintern.planners.base import PlannerDone, PlanRejected, validate_plan
from mlintern.planners.rules import fix_plan
from mlintern.schemas import DatasetRecipe, ExperimentPlan, ExperimentResult, Hyperparameters, Method, PlanningContext, SearchSpace

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

MIN_SHARE, MAX_SHARE = 0.05, 0.33  # plain search: one trial costs 5-33% of the whole budget


def config_distributions(space: SearchSpace, batch_sizes: list[int]) -> dict[str, BaseDistribution]:
    return {
        "method": CategoricalDistribution([m.value for m in space.methods]),
        "lora": CategoricalDistribution(list(space.lora_choices)),
        "learning_rate": FloatDistribution(*space.learning_rate, log=True),
        "batch_size": CategoricalDistribution(list(batch_sizes)),
    }


def plan_params(plan: ExperimentPlan) -> dict:
    hp = plan.hyperparameters
    return {"method": plan.method.value, "lora": hp.lora.enabled, "learning_rate": hp.learning_rate,
            "batch_size": hp.per_device_batch_size}


def seed_configs(ctx: PlanningContext) -> list[dict]:
    """The first configurations the loop tries: the defaults, then the same recipe at every larger
    batch the device allows with the learning rate scaled by sqrt(batch ratio), the square-root
    scaling rule for Adam (Hoffer et al. 2017; Malladi et al. 2022). At a fixed accelerator budget a
    larger batch sees more examples per second (host-bound small models: 0.165 vs 0.177 s a step at
    batch 8 vs 32 on H200), so these are the cheapest strong candidates; TPE takes over after them."""
    base = default_config(ctx)
    lo, hi = ctx.goal.search_space.learning_rate
    out = [base]
    for batch in sorted(ctx.batch_sizes(), reverse=True):
        if batch <= base["batch_size"]:
            continue
        lr = min(hi, max(lo, base["learning_rate"] * (batch / base["batch_size"]) ** 0.5))
        out.append({**base, "batch_size": batch, "learning_rate": lr})
    return out


def default_config(ctx: PlanningContext) -> dict:
    """The trl-style defaults a user gets without research (Hyperparameters()), at a batch the space allows."""
    hp = Hyperparameters()
    batches = ctx.batch_sizes()
    batch = hp.per_device_batch_size if hp.per_device_batch_size in batches else batches[0]
    return {"method": ctx.goal.search_space.methods[0].value, "lora": False if False in ctx.goal.search_space.lora_choices
            else ctx.goal.search_space.lora_choices[0], "learning_rate": hp.learning_rate, "batch_size": batch}


def make_plan(params: dict, steps: int, ctx: PlanningContext, *, stage: str, init_from: str = "base",
              seed: int = 0, rationale: str = "", lr_scheduler: str = "cosine",
              base: Hyperparameters | None = None) -> ExperimentPlan:
    method = Method(params["method"])
    batch = params["batch_size"]
    hp = (base or Hyperparameters()).model_copy(deep=True, update={
        "learning_rate": params["learning_rate"], "max_steps": max(1, steps), "per_device_batch_size": batch,
        "gradient_accumulation_steps": 1, "max_length": ctx.goal.search_space.max_length,
        "lr_scheduler": lr_scheduler,
    })
    hp.lora.enabled = params["lora"]
    if method == Method.grpo:
        hp.grpo.num_generations = 4 if batch % 4 == 0 else 2
    space = ctx.goal.search_space
    rows = fresh_rows(paced_steps(stage, hp.max_steps, ctx.size().throughput, hp.packing),
                      batch * hp.gradient_accumulation_steps)
    if space.num_examples is not None:
        rows = min(max(rows, space.num_examples[0]), space.num_examples[1])
    return ExperimentPlan(
        method=method, init_from=init_from, hyperparameters=hp, stage=stage,
        dataset=DatasetRecipe(source="benchmark", num_examples=rows, seed=seed), rationale=rationale,
    )


def _inside(params: dict, dists: dict[str, BaseDistribution]) -> bool:
    for key, dist in dists.items():
        if key not in params:
            return False
        value = params[key]
        if isinstance(dist, CategoricalDistribution):
            if value not in dist.choices:
                return False
        elif not dist._contains(dist.to_internal_repr(value)):
            return False
    return True


def to_trial(r: ExperimentResult, params: dict, dists: dict[str, BaseDistribution], eta: int):
    """A finished experiment as an Optuna trial: COMPLETE with its dev score, PRUNED with its rung
    values (at steps eta**k, in units of the first rung), or FAIL."""
    if not _inside(params, dists):
        return None  # e.g. an LLM plan outside the search space
    rungs = {eta ** p.rung: p.value for p in r.curve if getattr(p, "rung", None) is not None}
    if r.status == "succeeded" and r.dev is not None:
        return optuna.trial.create_trial(params=params, distributions=dists, value=r.dev.value,
                                         intermediate_values=rungs, state=TrialState.COMPLETE)
    if r.status == "pruned" and rungs:
        return optuna.trial.create_trial(params=params, distributions=dists, intermediate_values=rungs,
                                         state=TrialState.PRUNED)
    return optuna.trial.create_trial(params=params, distributions=dists, state=TrialState.FAIL)


def sampler_for(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True)


@dataclass
class ConfigProposer:
    """TPE over configurations (no size) for the multi-fidelity loop, after the seed configurations."""

    sampler: str = "tpe"
    name: str = "optuna-tpe"

    def propose_config(self, ctx: PlanningContext, trials: list[ExperimentResult], eta: int) -> dict:
        dists = config_distributions(ctx.goal.search_space, ctx.batch_sizes())
        seen = {_key(plan_params(r.plan)) for r in trials} | {_key(plan_params(p)) for p in ctx.pending}
        for params in seed_configs(ctx):
            if _key(params) not in seen:
                return params
        for attempt in range(30):
            study = optuna.create_study(direction="maximize",
                                        sampler=sampler_for(self.sampler, ctx.goal.seed * 1000 + len(trials) * 37 + attempt))
            for r in trials:
                t = to_trial(r, plan_params(r.plan), dists, eta)
                if t is not None:
                    study.add_trial(t)
            params = study.ask(dists).params
            if _key(params) not in seen:
                return params
        raise PlanRejected("no unseen configuration in 30 samples: widen goal.search_space")


def _key(params: dict) -> tuple:
    return (params["method"], params["lora"], round(params["learning_rate"], 12), params["batch_size"])


@dataclass
class SearchPlanner:
    """Plain Optuna search over budget-sized plans (the baseline the loop must beat)."""

    sampler: str = "tpe"
    name: str = ""
    client = None  # no LLM

    def __post_init__(self) -> None:
        self.name = f"optuna-{self.sampler}"

    def summary(self) -> str:
        return self.name

    def propose(self, ctx: PlanningContext) -> ExperimentPlan:
        if ctx.failure is not None and ctx.failure_plan is not None:
            try:
                return validate_plan(fix_plan(ctx.failure_plan, ctx.failure), ctx)
            except (ValueError, PlanRejected) as exc:  # nothing left to fix: plan afresh
                log.warning("no rule fixes plan %s (%s); sampling a new plan", ctx.failure_plan.plan_id(), exc)
        sz = ctx.size()
        dists = {**config_distributions(ctx.goal.search_space, sz.batch_sizes),
                 "share": FloatDistribution(MIN_SHARE, MAX_SHARE, log=True)}
        if sz.left_s < sz.job_seconds(sz.min_steps, sz.batch_sizes[0]):
            raise PlannerDone(f"the {sz.left_s:.0f} accelerator-seconds left cannot fund another experiment")
        for attempt in range(20):
            study = optuna.create_study(direction="maximize",
                                        sampler=sampler_for(self.sampler, ctx.goal.seed * 1000 + len(ctx.history) * 37 + attempt))
            for r in ctx.history:
                params = {**plan_params(r.plan), "share": _share(r, sz.budget_s)}
                t = to_trial(r, params, dists, 3)
                if t is not None:
                    study.add_trial(t)
            params = study.ask(dists).params
            job_s = min(params["share"] * sz.budget_s, sz.left_s)
            steps = max(sz.min_steps, sz.steps_for_job(job_s, params["batch_size"], Method(params["method"])))
            steps = min(steps, sz.max_steps)
            plan = make_plan(params, steps, ctx, stage="search", seed=len(ctx.history),
                             rationale=f"Optuna {self.sampler} search over budget-sized plans: "
                                       f"{params['share']:.0%} of the budget ({job_s:.0f} s).")
            try:
                return validate_plan(plan, ctx)
            except PlanRejected as exc:
                log.info("search planner: resampling (%s)", exc)
        raise PlanRejected("search planner found no unseen plan in 20 samples: widen goal.search_space")


def _share(r: ExperimentResult, budget_s: float) -> float:
    """The budget share a finished search trial was sized for (clamped into the distribution)."""
    share = (r.accelerator_hours * 3600) / budget_s if budget_s else MIN_SHARE
    return min(MAX_SHARE, max(MIN_SHARE, share))


@dataclass
class SingleRunPlanner:
    """ONE run with default hyperparameters, sized to use the whole budget (a baseline)."""

    name: str = "single-run"
    done: bool = field(default=False)
    client = None  # no LLM

    def summary(self) -> str:
        return self.name

    def propose(self, ctx: PlanningContext) -> ExperimentPlan:
        if ctx.failure is not None and ctx.failure_plan is not None:
            return validate_plan(fix_plan(ctx.failure_plan, ctx.failure), ctx)
        if any(r.status == "succeeded" for r in ctx.history):
            raise PlannerDone("the single run is done")
        sz = ctx.size()
        params = default_config(ctx)
        steps = min(sz.max_steps, max(sz.min_steps, sz.steps_for_job(sz.left_s * 0.97, params["batch_size"])))
        plan = make_plan(params, steps, ctx, stage="single",
                         rationale=f"One run with default hyperparameters sized to the whole budget ({sz.left_s:.0f} s).")
        return validate_plan(plan, ctx)

"""Optuna planner: TPE (or random) search over the goal's plan space.

Stateless: each call rebuilds an in-memory study from the loop's history, so a resumed
controller proposes exactly what it would have proposed without the crash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mlintern.planners.base import PlanningContext, PlanRejected, validate_plan
from mlintern.planners.rules import fix_plan
from mlintern.schemas import DatasetRecipe, ExperimentPlan, Hyperparameters, Method, SearchSpace

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    return {
        "method": CategoricalDistribution([m.value for m in space.methods]),
        "lora": CategoricalDistribution(list(space.lora_choices)),
        "learning_rate": FloatDistribution(*space.learning_rate, log=True),
        "max_steps": IntDistribution(*space.max_steps),
        "batch_size": CategoricalDistribution(list(space.batch_sizes)),
        "num_examples": IntDistribution(*space.num_examples, log=True),
        "init_from": CategoricalDistribution(["champion", "base"]),
    }


def plan_to_params(plan: ExperimentPlan) -> dict:
    hp = plan.hyperparameters
    return {
        "method": plan.method.value, "lora": hp.lora, "learning_rate": hp.learning_rate,
        "max_steps": hp.max_steps, "batch_size": hp.per_device_batch_size,
        "num_examples": plan.dataset.num_examples, "init_from": plan.init_from,
    }


def params_to_plan(params: dict, sampler: str, space: SearchSpace) -> ExperimentPlan:
    method = Method(params["method"])
    batch = params["batch_size"]
    hp = Hyperparameters(
        learning_rate=params["learning_rate"], max_steps=params["max_steps"],
        per_device_batch_size=batch, lora=params["lora"], max_length=space.max_length,
    )
    if method == Method.grpo:
        hp.num_generations = 4 if batch % 4 == 0 else 2
    return ExperimentPlan(
        method=method, init_from=params["init_from"], hyperparameters=hp,
        dataset=DatasetRecipe(source="benchmark", num_examples=params["num_examples"]),
        rationale=f"Optuna {sampler} sampler over the goal's search space (no LLM configured).",
    )


@dataclass
class SearchPlanner:
    sampler: str = "tpe"
    name: str = ""

    def __post_init__(self) -> None:
        self.name = f"optuna-{self.sampler}"

    def propose(self, ctx: PlanningContext) -> ExperimentPlan:
        if ctx.failure is not None and ctx.failure_plan is not None:
            try:
                return validate_plan(fix_plan(ctx.failure_plan, ctx.failure), ctx)
            except (ValueError, PlanRejected) as exc:  # nothing left to fix: plan afresh
                log.warning("no rule fixes plan %s (%s); sampling a new plan", ctx.failure_plan.plan_id(), exc)
        space = ctx.goal.search_space
        dists = distributions(space)
        for attempt in range(20):
            seed = ctx.goal.seed * 1000 + len(ctx.history) * 37 + attempt
            sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)
                       if self.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed))
            study = optuna.create_study(direction="maximize", sampler=sampler)
            for r in ctx.history:
                params = plan_to_params(r.plan)
                if not _inside(params, dists):
                    continue  # e.g. an LLM plan outside the search space
                ok = r.status == "succeeded" and r.dev is not None
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=dists,
                    value=r.dev.value if ok else None,
                    state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
                ))
            trial = study.ask(dists)
            plan = params_to_plan(trial.params, self.sampler, space)
            try:
                return validate_plan(plan, ctx)
            except PlanRejected as exc:
                log.info("search planner: resampling (%s)", exc)
        raise PlanRejected("search planner found no unseen plan in 20 samples: widen goal.search_space")


def _inside(params: dict, dists: dict[str, BaseDistribution]) -> bool:
    for key, value in params.items():
        dist = dists[key]
        if isinstance(dist, CategoricalDistribution):
            if value not in dist.choices:
                return False
        elif not dist._contains(dist.to_internal_repr(value)):
            return False
    return True

"""Planners: Optuna search over the plan space, and the LLM planner over real HTTP."""

import json

import pytest

from mlintern.llm import LLMError, LLMOutputInvalid
from mlintern.planners import PlanningContext, PlanRejected, make_planner, validate_plan
from mlintern.planners.llm import LLMPlanner
from mlintern.planners.search import SearchPlanner
from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Failure, FailureKind, Goal
from mlintern.settings import get_settings
from tests.conftest import tiny_goal
from tests.standins.openai_server import OpenAIStandIn


def ctx_for(goal: Goal, history=(), **kw) -> PlanningContext:
    base = EvalScore(task="dev", metric="score", value=0.1, stderr=0.05, n=12)
    return PlanningContext(goal=goal, metric="score", baseline=base, history=list(history),
                           experiments_left=goal.budget.max_experiments - len(history),
                           hours_left=1.0, **kw)


def done(plan: ExperimentPlan, value: float) -> ExperimentResult:
    return ExperimentResult(plan_id=plan.plan_id(), plan=plan, status="succeeded",
                            dev=EvalScore(task="dev", metric="score", value=value, stderr=0.05, n=12))


def llm_plan(**hp) -> str:
    plan = {"method": "sft", "init_from": "champion",
            "dataset": {"source": "benchmark", "num_examples": 32},
            "hyperparameters": {"learning_rate": 2e-4, "max_steps": 3, "per_device_batch_size": 2,
                                "max_length": 64, **hp},
            "hypothesis": "SFT on the answer format lifts exact answers.",
            "rationale": "History shows the base model rambles; teach the format (cf. 2501.19393).",
            "cited_papers": ["2501.19393"]}
    return json.dumps(plan)


def test_search_planner_stays_in_space_and_never_repeats():
    goal = tiny_goal(budget={"max_experiments": 10})
    planner = SearchPlanner()
    history = []
    for i in range(6):
        plan = planner.propose(ctx_for(goal, history))
        hp = plan.hyperparameters
        assert 2 <= hp.max_steps <= 3 and hp.per_device_batch_size == 2 and hp.max_length == 64
        assert plan.plan_id() not in {r.plan_id for r in history}
        history.append(done(plan, 0.1 + 0.01 * i))


def test_search_planner_is_deterministic_given_history():
    """A resumed controller proposes what it would have proposed without the crash."""
    goal = tiny_goal()
    first = SearchPlanner().propose(ctx_for(goal))
    again = SearchPlanner().propose(ctx_for(goal))
    assert first.plan_id() == again.plan_id()


def test_search_planner_fixes_a_failed_plan_by_rule():
    goal = tiny_goal(budget={"max_experiments": 5}, search_space={"batch_sizes": [4]})
    failed = ExperimentPlan(dataset={"num_examples": 32},
                            hyperparameters={"per_device_batch_size": 4, "max_steps": 3, "max_length": 64})
    ctx = ctx_for(goal, failure=Failure(kind=FailureKind.oom, message="CUDA out of memory"), failure_plan=failed)
    fixed = SearchPlanner().propose(ctx)
    assert fixed.retry_of == failed.plan_id()
    assert fixed.hyperparameters.per_device_batch_size == 2
    assert fixed.hyperparameters.gradient_accumulation_steps == 2


def test_default_planner_is_multifidelity_search_without_llm(monkeypatch):
    monkeypatch.delenv("INTERN_LLM_MODEL", raising=False)
    get_settings.cache_clear()
    assert make_planner(Goal()).name == "multi-fidelity (optuna-tpe)"
    assert make_planner(Goal(llm_model="openai/x")).name == "multi-fidelity (llm:openai/x)"
    assert make_planner(Goal(planner="search")).name == "optuna-tpe"
    assert make_planner(Goal(planner="single")).name == "single-run"


def test_validate_plan_names_the_field():
    goal = tiny_goal()
    with pytest.raises(PlanRejected, match="hyperparameters.max_steps"):
        validate_plan(ExperimentPlan(hyperparameters={"max_steps": 500, "max_length": 64}), ctx_for(goal))


@pytest.fixture
def llm_env(monkeypatch):
    monkeypatch.setenv("INTERN_LLM_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("INTERN_LLM_RETRIES", "2")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_llm_planner_over_http_repairs_a_malformed_answer(llm_env):
    malformed = '{"method": "sft", "hyperparameters": {"learning_rate": "fast"}'  # bad type, cut off
    with OpenAIStandIn([malformed, llm_plan()]) as server:
        planner = LLMPlanner(model="openai/stand-in", api_base=server.api_base)
        plan = planner.propose(ctx_for(tiny_goal()))
        assert plan.cited_papers == ["2501.19393"]
        assert len(server.chat_requests) == 2
        first, repair = server.chat_requests
        assert "ExperimentPlan" in first["messages"][0]["content"]
        assert "Base model dev score: 0.1000" in first["messages"][1]["content"]
        assert "not a valid ExperimentPlan" in repair["messages"][-1]["content"]
        assert server.requests[0].headers.get("authorization") == "Bearer sk-test-not-a-real-key"


def test_llm_planner_rejects_twice_malformed_output_clearly(llm_env):
    with OpenAIStandIn(["not json at all", '{"method": "ppo"}']) as server:
        planner = LLMPlanner(model="openai/stand-in", api_base=server.api_base)
        with pytest.raises(LLMOutputInvalid, match="invalid ExperimentPlan twice") as err:
            planner.propose(ctx_for(tiny_goal()))
        assert err.value.raw_outputs == ["not json at all", '{"method": "ppo"}'], "nothing lost"


def test_llm_planner_sends_back_a_plan_outside_the_budget(llm_env):
    with OpenAIStandIn([llm_plan(max_steps=999), llm_plan(max_steps=3)]) as server:
        plan = LLMPlanner(model="openai/stand-in", api_base=server.api_base).propose(ctx_for(tiny_goal()))
        assert plan.hyperparameters.max_steps == 3
        assert "max_steps" in server.chat_requests[1]["messages"][-1]["content"]


def test_llm_planner_retries_429_and_5xx(llm_env):
    with OpenAIStandIn([429, 500, llm_plan()]) as server:
        plan = LLMPlanner(model="openai/stand-in", api_base=server.api_base).propose(ctx_for(tiny_goal()))
        assert plan.method.value == "sft" and len(server.chat_requests) == 3


def test_llm_outage_gives_a_clear_error_without_leaking_the_key(llm_env):
    with OpenAIStandIn([503, 503, 503, 503]) as server:
        with pytest.raises(LLMError) as err:
            LLMPlanner(model="openai/stand-in", api_base=server.api_base).propose(ctx_for(tiny_goal()))
    assert "openai/stand-in" in str(err.value) and "sk-test" not in str(err.value)


def test_planner_never_sees_test_scores():
    assert "test" not in "".join(PlanningContext.model_fields)

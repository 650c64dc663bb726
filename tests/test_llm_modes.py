"""The LLM path against servers that behave like the real ones (over real HTTP): hosted OpenAI's
strict mode, llama-cpp-python's server, a server without structured output; a strict schema
inside every provider's subset; retries that quote the server; clamping; the fallback planner."""

from __future__ import annotations

import hashlib
import json
import math
import time
import urllib.error
import urllib.request

import pytest

from mlintern.llm import LLMBudgetExceeded, LLMClient, LLMError, forget_modes, working_mode
from mlintern.planners import PlanRejected, make_planner, validate_plan
from mlintern.planners.base import clamp_plan
from mlintern.loop import LoopState
from mlintern.planners.fallback import FallbackPlanner, take_transcript
from mlintern.planners.llm import LLMPlanner, plan_schema
from mlintern.prompts import PROMPT_DIR
from mlintern.schemas import ExperimentPlan, Goal
from mlintern.settings import get_settings
from mlintern.structured import UnsupportedSchema, from_strict, strict_schema
from tests.conftest import tiny_goal
from tests.standins.openai_server import Answer, OpenAIStandIn, openai_strict_errors
from tests.test_planners import ctx_for, done, llm_plan

KEY = "sk-test-modes-key"


@pytest.fixture(autouse=True)
def llm_env(monkeypatch):
    monkeypatch.setenv("INTERN_LLM_API_KEY", KEY)
    monkeypatch.setenv("INTERN_LLM_RETRIES", "2")
    get_settings.cache_clear()
    forget_modes()  # stand-ins may reuse a port another test's server had
    yield
    forget_modes()
    get_settings.cache_clear()


# ----------------------------------------------------------------------------- the schema

ALLOWED = {"type", "description", "properties", "required", "additionalProperties", "items", "enum", "anyOf"}


def subset_violations(node, path="<root>", depth=0) -> list[str]:
    """The strictest common subset, checked independently of the generator: OpenAI strict mode,
    Gemini, Anthropic tools and grammar decoders all accept a schema that passes."""
    out = [f"{path}: keyword {k!r}" for k in node if k not in ALLOWED]
    if depth > 5:
        out.append(f"{path}: nested deeper than 5 levels")
    if "anyOf" in node:
        members = node["anyOf"]
        if any("anyOf" in m for m in members):
            out.append(f"{path}: nested union")
        if len([m for m in members if m.get("type") != "null"]) > 1:
            out.append(f"{path}: union of several non-null types")
        for i, m in enumerate(members):
            out += subset_violations(m, f"{path}|{i}", depth + 1)
        return out
    if node.get("type") not in ("object", "array", "string", "number", "integer", "boolean", "null"):
        out.append(f"{path}: one JSON type needed, got {node.get('type')!r}")
    if node.get("type") == "object":
        props = node.get("properties") or {}
        if not props:
            out.append(f"{path}: free-form object")
        if node.get("additionalProperties") is not False:
            out.append(f"{path}: additionalProperties must be false")
        if node.get("required") != list(props):
            out.append(f"{path}: every key must be required")
        for name, sub in props.items():
            out += subset_violations(sub, f"{path}.{name}", depth + 1)
    if node.get("type") == "array":
        out += subset_violations(node.get("items", {}), f"{path}[]", depth + 1)
    return out


def schemas_under_test():
    from mlintern.data.hub import ColumnMapProposal
    from mlintern.literature import DigestAnswer

    every_method = Goal(search_space={"methods": ["sft", "dpo", "grpo"]})
    return {
        "plan(tiny goal)": plan_schema(tiny_goal()),
        "plan(all methods)": plan_schema(every_method),
        "ExperimentPlan": strict_schema(ExperimentPlan, exclude={"dataset.column_map"}),
        "DigestAnswer": strict_schema(DigestAnswer),
        "ColumnMapProposal": strict_schema(ColumnMapProposal),
    }


@pytest.mark.parametrize("name", list(schemas_under_test()))
def test_strict_schema_stays_inside_every_providers_subset(name):
    schema = schemas_under_test()[name]
    assert subset_violations(schema) == []
    assert openai_strict_errors(schema) == [], "the OpenAI stand-in accepts it"
    # Every plan field is documented (what it does, typical range, which methods read it): that costs
    # ~1,900 characters (~500 tokens) over the undocumented schema (3.6k tiny goal, 5.2k full plan).
    assert len(json.dumps(schema)) < 8000, "short enough for a small model's prompt"


def test_strict_schema_answers_validate_into_real_models_with_defaults_applied():
    schema = plan_schema(tiny_goal())
    assert schema["properties"]["method"]["anyOf"][0]["enum"] == ["sft"], "narrowed to the goal's methods"
    assert "reward_code" not in schema["properties"], "no GRPO knobs when GRPO is not allowed"
    assert "reward_code" in plan_schema(Goal(search_space={"methods": ["grpo"]}))["properties"]
    # the limits the schema cannot carry are told to the model in the description
    lr = schema["properties"]["hyperparameters"]["properties"]["learning_rate"]
    assert "<= 0.01" in lr["description"] and "null = default" in lr["description"]

    def all_null(node):
        if node.get("type") == "object":
            return {k: all_null(v) for k, v in node["properties"].items()}
        return [] if node.get("type") == "array" else None

    plan = ExperimentPlan.model_validate(from_strict(ExperimentPlan, all_null(schema)))
    assert plan == ExperimentPlan(), "null everywhere = the defaults"


def test_the_subset_rules_can_fail():
    raw = ExperimentPlan.model_json_schema()
    assert any("'default' is not permitted" in e for e in openai_strict_errors(raw))
    assert subset_violations({"type": "object", "properties": {"x": {"type": "string", "maxLength": 20000}},
                              "required": ["x"], "additionalProperties": False}) == ["<root>.x: keyword 'maxLength'"]
    with pytest.raises(UnsupportedSchema, match="dataset.column_map"):
        strict_schema(ExperimentPlan)


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_openai_standin_refuses_pydantic_schemas_like_openai():
    """What the old client sent (a pydantic schema with defaults) gets OpenAI's 400."""
    with OpenAIStandIn([llm_plan()]) as server:
        rf = {"type": "json_schema", "json_schema": {"name": "ExperimentPlan", "strict": True,
                                                      "schema": ExperimentPlan.model_json_schema()}}
        status, body = _post(server.api_base, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                                               "response_format": rf})
        assert status == 400
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == "response_format"
        assert body["error"]["code"] == "invalid_json_schema"
        assert body["error"]["message"].startswith("Invalid schema for response_format 'ExperimentPlan': In context=(")
        assert "is not permitted" in body["error"]["message"] or "'required' is required" in body["error"]["message"]
        assert server.remaining == 1, "a refused request uses no scripted answer"


# ----------------------------------------------------------------------------- the modes

@pytest.mark.parametrize("server_kind,mode,first_round_requests", [
    ("openai", "json_schema", 1), ("llama-cpp-python", "json_object", 2), ("plain", "prompted", 3)])
def test_planner_works_in_each_structured_output_mode(server_kind, mode, first_round_requests, caplog):
    goal = tiny_goal(budget={"max_experiments": 5})
    with OpenAIStandIn([llm_plan(), llm_plan(max_steps=2)], server=server_kind) as server:
        planner = LLMPlanner(model="openai/stand-in", api_base=server.api_base)
        with caplog.at_level("INFO", logger="mlintern.llm"):
            first = planner.propose(ctx_for(goal))
        assert len(server.chat_requests) == first_round_requests
        assert planner.last_transcript.mode == mode == working_mode("openai/stand-in", server.api_base)
        assert f"structured output mode {mode}" in caplog.text, "the mode used is logged"
        second = planner.propose(ctx_for(goal, [done(first, 0.2)]))
        assert len(server.chat_requests) == first_round_requests + 1, "the working mode is remembered"
        assert second.hyperparameters.max_steps == 2
    sent = server.chat_requests[-1].get("response_format")
    if mode == "json_schema":
        assert sent["json_schema"]["strict"] is True and sent["json_schema"]["schema"] == plan_schema(goal)
    elif mode == "json_object":
        assert sent == {"type": "json_object", "schema": plan_schema(goal)}
        assert server.chat_requests[0]["response_format"]["type"] == "json_schema"
    else:
        assert sent is None and "ExperimentPlan JSON schema" in server.chat_requests[-1]["messages"][0]["content"]


def test_llama_cpp_python_standin_dies_on_a_long_max_length_like_the_real_one():
    """The crash the strict schema avoids: a grammar from maxLength 20000 killed the server."""
    import litellm

    with OpenAIStandIn([llm_plan()] * 3, server="llama-cpp-python") as server:
        client = LLMClient(model="openai/stand-in", api_base=server.api_base, retries=0)
        rf = {"type": "json_object", "schema": ExperimentPlan.model_json_schema()}  # rationale maxLength 4000
        with pytest.raises((litellm.APIConnectionError, litellm.InternalServerError), match="Connection error"):
            litellm.completion(model="openai/stand-in", api_base=server.api_base, api_key="x", max_retries=0,
                               messages=[{"role": "user", "content": "json"}], response_format=rf, timeout=5)
        with pytest.raises(LLMError, match="openai/stand-in"):  # dead: connections refused
            client.text([{"role": "user", "content": "hi"}])


def test_errors_quote_the_server_never_an_import_error():
    body = "upstream model is loading, try again later"
    with OpenAIStandIn([Answer(status=503, content=body)] * 4) as server:
        client = LLMClient(model="openai/stand-in", api_base=server.api_base, retries=2, backoff_s=0.2)
        start = time.monotonic()
        with pytest.raises(LLMError) as err:
            client.structured([{"role": "user", "content": "json please"}], ExperimentPlan,
                              json_schema=plan_schema(tiny_goal()))
        elapsed = time.monotonic() - start
    message = str(err.value)
    assert "HTTP 503" in message and body in message and "after 3 attempts" in message
    assert "tenacity" not in message and KEY not in message
    assert len(server.chat_requests) == 3, "bounded: one try and two retries"
    assert elapsed >= 0.2 + 0.4, "with exponential backoff"

    with OpenAIStandIn([Answer(status=401, content=f"Incorrect API key provided: {KEY}")]) as server:
        with pytest.raises(LLMError) as err:
            LLMClient(model="openai/stand-in", api_base=server.api_base).text([{"role": "user", "content": "hi"}])
    assert "HTTP 401" in str(err.value) and "at once (not retryable)" in str(err.value)
    assert KEY not in str(err.value) and "**********" in str(err.value), "an echoed key is masked"
    assert len(server.chat_requests) == 1


def test_retries_do_not_need_tenacity(monkeypatch):
    """litellm's own retry imports tenacity, which litellm does not install ("tenacity import
    failed please run pip install tenacity" hid the server's answer); ours does not use it."""
    import sys

    monkeypatch.setitem(sys.modules, "tenacity", None)  # `import tenacity` now raises ImportError
    with OpenAIStandIn([429, 500, llm_plan()]) as server:
        client = LLMClient(model="openai/stand-in", api_base=server.api_base, retries=2, backoff_s=0.1)
        answer = client.structured([{"role": "user", "content": "json"}], ExperimentPlan,
                                   json_schema=plan_schema(tiny_goal()))
        assert answer.method.value == "sft"
    assert len(server.chat_requests) == 3
    assert [c.error for c in client.calls][:2] == ["HTTP 429: stand-in: scripted HTTP 429",
                                                   "HTTP 500: stand-in: scripted HTTP 500"]


# ----------------------------------------------------------------------------- weak models

def test_a_plan_still_out_of_bounds_after_one_revision_is_clamped():
    goal = tiny_goal()
    with OpenAIStandIn([llm_plan(max_steps=999, per_device_batch_size=75), llm_plan(max_steps=500)]) as server:
        planner = LLMPlanner(model="openai/stand-in", api_base=server.api_base)
        plan = planner.propose(ctx_for(goal))
    assert plan.hyperparameters.max_steps == 3, "clamped to the top of [2, 3]"
    transcript = planner.last_transcript
    assert transcript.source == "llm-clamped"
    assert "clamped hyperparameters.max_steps 500 -> 3" in transcript.notes
    assert "per_device_batch_size" in server.chat_requests[1]["messages"][-1]["content"], "sent back once first"
    with pytest.raises(PlanRejected, match="hyperparameters.max_steps"):
        validate_plan(ExperimentPlan(hyperparameters={"max_steps": 500, "max_length": 64}), ctx_for(goal))
    clamped, notes = clamp_plan(ExperimentPlan(hyperparameters={"max_steps": 500, "max_length": 64}), ctx_for(goal))
    assert clamped.hyperparameters.max_steps == 3 and notes


def test_clamp_snaps_the_effective_batch_and_keeps_examples_long_enough_to_learn_from():
    """What SmolLM2 proposed on the real server: batch 1 x 1 where the goal allows only 2 (rejected
    twice before), and max_length 16, which truncated every answer away (a failed run)."""
    goal = tiny_goal(search_space={"batch_sizes": [2, 8], "max_length": 256})
    ctx = ctx_for(goal)
    tokens = ctx.size().throughput.tokens_per_example
    plan = ExperimentPlan(hyperparameters={"max_steps": 3, "max_length": 16, "per_device_batch_size": 1,
                                           "gradient_accumulation_steps": 1})
    clamped, notes = clamp_plan(plan, ctx)
    hp = clamped.hyperparameters
    assert (hp.per_device_batch_size, hp.gradient_accumulation_steps) == (1, 2)
    assert hp.max_length == min(256, math.ceil(1.5 * tokens)) > 16
    assert "clamped hyperparameters: effective batch 1 -> 2 (1 x 2)" in notes
    validate_plan(clamped, ctx)  # now acceptable
    six = plan.model_copy(update={"hyperparameters": hp.model_copy(update={"per_device_batch_size": 6})})
    hp6 = clamp_plan(six, ctx)[0].hyperparameters
    assert (hp6.per_device_batch_size, hp6.gradient_accumulation_steps) == (4, 2), "6 -> nearest allowed 8"


def test_the_prompt_shows_a_valid_answer_of_the_strict_schema():
    """The planner prompt ends with one complete, valid plan (every key the strict schema asks for,
    within the bounds; a verbatim copy of an earlier one is rejected as a repeat): with it
    SmolLM2-135M on llama.cpp gave 3 of 3 usable plans (2 fields reset at most) instead of 2 of 3
    with up to 10 fields reset and max_length 16."""
    from mlintern.planners.llm import example_answer

    goal = tiny_goal()
    first = example_answer(ctx_for(goal))
    plan = ExperimentPlan.model_validate_json(first)
    assert validate_plan(plan, ctx_for(goal)) == plan
    assert set(json.loads(first)) == set(plan_schema(goal)["properties"]), "every key the strict schema requires"
    wide = tiny_goal(search_space={"batch_sizes": [8, 32]})
    one, two = (ExperimentPlan.model_validate_json(example_answer(ctx_for(wide, [done(plan, 0.1)] * n)))
                for n in (0, 1))
    assert (one.hyperparameters.per_device_batch_size, two.hyperparameters.per_device_batch_size) == (8, 32), \
        "the next seed configuration each round"
    user = LLMPlanner(model="openai/x").messages(ctx_for(goal))[1]["content"]
    assert first in user and user.rstrip().endswith("Propose the next experiment as one ExperimentPlan JSON object.")
    assert "Base model dev score: 0.1000 ± 0.0500" in user
    early = LLMPlanner(model="openai/x").messages(ctx_for(goal).model_copy(update={"baseline": None}))[1]["content"]
    assert "Base model dev score: being measured beside the first experiments (not known yet)" in early, \
        "the first plans go out while the base model is scored"


def test_fields_still_invalid_after_the_repair_are_reset_to_defaults():
    bad = json.loads(llm_plan())
    bad["hyperparameters"]["warmup_ratio"] = 3  # the schema cannot bound it; pydantic does
    with OpenAIStandIn([json.dumps(bad), json.dumps(bad)]) as server:
        planner = LLMPlanner(model="openai/stand-in", api_base=server.api_base)
        plan = planner.propose(ctx_for(tiny_goal()))
    assert plan.hyperparameters.warmup_ratio == 0.0
    assert planner.last_transcript.source == "llm-salvaged"
    assert any(n.startswith("reset hyperparameters.warmup_ratio (3:") for n in planner.last_transcript.notes)


def test_transcript_holds_the_exchange_and_prompt_hashes_but_no_key():
    with OpenAIStandIn(["not json", llm_plan()]) as server:
        planner = LLMPlanner(model="openai/stand-in", api_base=server.api_base)
        planner.propose(ctx_for(tiny_goal()))
    t = planner.last_transcript
    assert [c.purpose for c in t.calls] == ["plan", "repair"] and t.source == "llm-repaired"
    assert t.calls[0].answer == "not json" and t.calls[0].messages[0]["role"] == "system"
    assert t.prompt_tokens > 0 and t.completion_tokens > 0 and t.mode == "json_schema"
    assert t.prompt_sha256["planner_user.md"] == hashlib.sha256((PROMPT_DIR / "planner_user.md.j2").read_bytes()).hexdigest()
    assert KEY not in t.model_dump_json()


# ----------------------------------------------------------------------------- fallback

def test_fallback_planner_plans_with_search_while_the_llm_is_down_and_tries_it_again(monkeypatch):
    monkeypatch.setenv("INTERN_LLM_RETRIES", "0")
    get_settings.cache_clear()
    state = {"down": True, "n": 0}

    def answer(request):
        if state["down"]:
            return 503
        state["n"] += 1
        return llm_plan(max_steps=2 + state["n"] % 2, learning_rate=1e-4 * (1 + state["n"]))

    goal = tiny_goal(planner="llm", llm_model="openai/stand-in", budget={"max_experiments": 20})
    with OpenAIStandIn(answer) as server:
        goal = goal.model_copy(update={"llm_api_base": server.api_base})
        planner = make_planner(goal)
        assert isinstance(planner, FallbackPlanner) and planner.name == "multi-fidelity (llm:openai/stand-in)"
        history, asked = [], []
        for round_ in range(1, 9):
            if round_ == 8:
                state["down"] = False
            before = len(server.chat_requests)
            plan = planner.propose(ctx_for(goal, history))
            asked.append(len(server.chat_requests) > before)
            transcript = take_transcript(plan)
            assert transcript is not None and take_transcript(plan) is None, "handed over once"
            if round_ < 8:
                assert transcript.source == "search-fallback" and "HTTP 503" in (transcript.error or "")
                assert transcript.planner == "multi-fidelity (optuna-tpe) (fallback from multi-fidelity (llm:openai/stand-in))"
            history.append(done(plan, 0.1))
    # two failed rounds bench the LLM; then it is asked every 3rd round; round 8 it answers
    assert asked == [True, True, False, False, True, False, False, True]
    assert transcript.source == "llm" and planner.llm_plans == 1 and planner.fallback_plans == 7
    assert not planner.benched
    summary = planner.summary()
    assert summary.startswith("multi-fidelity (llm:openai/stand-in); 7 of 8 plans made by multi-fidelity (optuna-tpe) because the LLM failed")


def test_llm_spend_is_counted_once_per_goal_over_planning_and_experiments():
    """LoopState.llm_dollars is the one counter (literature digests + each experiment's planning and
    column maps + plans still running); the planner's client starts every round from it."""
    goal = tiny_goal(planner="llm", llm_model="openai/stand-in", budget={"llm_dollars": 0.5})
    plan = ExperimentPlan(hyperparameters={"max_steps": 3, "max_length": 64})
    spent = done(plan, 0.1).model_copy(update={"llm_dollars": 0.45})  # planning it + a hub column map
    state = LoopState(goal=goal, baseline=ctx_for(goal).baseline, literature_dollars=0.01)
    state.record(spent)
    state.inflight_dollars["running-plan"] = 0.05
    assert state.llm_dollars == pytest.approx(0.51)
    with OpenAIStandIn([llm_plan()]) as server:
        planner = make_planner(goal.model_copy(update={"llm_api_base": server.api_base}))
        planner.llm.client.spent_dollars = 0.3  # last round's calls: already inside the counter
        with pytest.raises(LLMBudgetExceeded, match=r"\$0\.5100 of \$0\.50"):
            planner.propose(ctx_for(goal, [spent], llm_dollars=state.llm_dollars))
        assert server.chat_requests == [], "refused before any request"
    state.record(spent.model_copy(update={"plan_id": "running-plan", "llm_dollars": 0.05}))
    assert state.llm_dollars == pytest.approx(0.51), "a finished plan's planning spend is counted once"


def test_a_transcript_travels_to_a_remote_worker_as_an_experiment_parameter():
    """What a worker of the `experiment` deployment receives: JSON parameters, checked against
    the deployment's parameter schema (as Prefect enforces it), then validated by the flow."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from mlintern.flows.experiment import experiment
    from mlintern.llm import LLMCall, LLMTranscript

    transcript = LLMTranscript(planner="llm:openai/x", model="openai/x", source="llm-clamped", mode="json_object",
                               calls=[LLMCall(purpose="plan", mode="json_object", answer="{}",
                                              messages=[{"role": "user", "content": "plan"}])],
                               notes=["clamped hyperparameters.max_steps 9 -> 3"], budget_left_dollars=0.4)
    schema = parameter_schema(experiment)
    assert "llm_transcript" in schema.properties and "llm_transcript" not in schema.required, "optional"
    params = {"goal": tiny_goal().model_dump(mode="json"), "plan": ExperimentPlan().model_dump(mode="json"),
              "init_model": "m", "timeout_s": 1.0, "llm_transcript": json.loads(transcript.model_dump_json())}
    validate(params, schema.model_dump_for_openapi(), raise_on_error=True, preprocess=True, ignore_required=False)
    assert experiment.validate_parameters(params)["llm_transcript"] == transcript

"""The research loop with LLM servers that behave like real ones (real Prefect, trl, MLflow):
a server that refuses json_schema, and an LLM that goes down mid-loop."""

from __future__ import annotations

import json

import litellm
import mlflow
import pytest

from mlintern.flows.research_loop import research_loop
from mlintern.llm import LLMTranscript, forget_modes
from mlintern.settings import get_settings
from tests.conftest import tiny_goal
from tests.standins.openai_server import Answer, OpenAIStandIn
from tests.test_research_loop import plan_json, runs_of

KEY = "sk-test-llama-loop-key"


@pytest.fixture
def priced_standin():
    """A price for the stand-in model, so spend is counted in real dollars."""
    litellm.register_model({"openai/stand-in": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
                                                "litellm_provider": "openai", "mode": "chat"}})
    forget_modes()
    yield
    litellm.model_cost.pop("openai/stand-in", None)
    forget_modes()


def transcript_of(run) -> LLMTranscript:
    return LLMTranscript.model_validate_json(
        mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/llm_transcript.json"))


@pytest.mark.slow  # a full loop of 3-6 minutes on 2 cores: the default suite stays well under 30 minutes
def test_loop_against_a_llama_cpp_python_like_server_spends_its_budget(
    intern_env, prefect_harness, smol_model, monkeypatch, priced_standin
):
    """json_schema gets llama-cpp-python's HTTP 500: the loop finds the json_object mode, runs
    every budgeted experiment, and each run holds its plan's transcript. A 429 whose body echoes
    the API key is retried, and the key is masked wherever the transcript goes."""
    monkeypatch.setenv("INTERN_LLM_API_KEY", KEY)
    get_settings.cache_clear()

    def answer(request):
        answer.calls += 1
        if answer.calls == 1:
            return Answer(status=429, content=f"rate limit reached for key {KEY}", headers={"retry-after": "0.2"})
        return plan_json(lr=1e-4 * answer.calls, steps=2)

    answer.calls = 0
    with OpenAIStandIn(answer, server="llama-cpp-python") as server:
        goal = tiny_goal(name="llama-like", planner="llm", llm_model="openai/stand-in",
                         llm_api_base=server.api_base, budget={"max_experiments": 2})
        report = research_loop(goal)
    formats = [(r.get("response_format") or {}).get("type") for r in server.chat_requests]
    assert formats == ["json_schema", "json_object", "json_object", "json_object"], "refused once, remembered"

    assert len(report.experiments) == 2 and all(r.status == "succeeded" for r in report.experiments)
    assert "experiment budget spent" in report.stop_reason and report.planner == "multi-fidelity (llm:openai/stand-in)"
    runs = runs_of(goal, "experiment")
    transcripts = [transcript_of(r) for r in runs]
    for run, t in zip(runs, transcripts):
        assert t.mode == "json_object" and t.source == "llm" and t.model == "openai/stand-in"
        assert run.data.tags["intern.llm_mode"] == "json_object" and run.data.tags["intern.plan_source"] == "llm"
        assert run.data.metrics["llm_plan_dollars"] == pytest.approx(t.dollars) and t.dollars > 0
        assert json.loads(t.calls[-1].answer)["hyperparameters"]["max_steps"] == 2
    first = transcripts[0].calls
    assert "Input should be 'text' or 'json_object'" in first[0].error, "the server's own words"
    assert first[1].error == "HTTP 429: rate limit reached for key **********"
    assert report.llm_dollars == pytest.approx(sum(t.dollars for t in transcripts)), "spend counted once"

    from tests.secret_scan import scan_files, scan_prefect, scan_transcripts

    assert scan_transcripts(KEY) == [] and scan_files(KEY, [intern_env]) == [] and scan_prefect(KEY) == []
    assert scan_transcripts("rate limit reached"), "the scan reads the transcripts it vouches for"


@pytest.mark.slow  # a full loop of 3-6 minutes on 2 cores: the default suite stays well under 30 minutes
def test_llm_outage_mid_loop_falls_back_to_search_and_spends_the_budget(
    intern_env, prefect_harness, smol_model, monkeypatch
):
    """The LLM goes down after one experiment: the other rounds are planned by Optuna, the
    experiment budget is spent, and the log, the runs and the report say who planned what."""
    monkeypatch.setenv("INTERN_LLM_API_KEY", "sk-test-outage")
    monkeypatch.setenv("INTERN_LLM_RETRIES", "0")
    get_settings.cache_clear()
    forget_modes()
    with OpenAIStandIn([plan_json(), 503], when_exhausted="repeat_last") as server:
        goal = tiny_goal(name="outage", planner="llm", llm_model="openai/stand-in",
                         llm_api_base=server.api_base, budget={"max_experiments": 2})
        report = research_loop(goal)
    assert len(report.experiments) == 2 and all(r.status == "succeeded" for r in report.experiments)
    assert "experiment budget spent" in report.stop_reason
    assert report.planner.startswith("multi-fidelity (llm:openai/stand-in); 1 of 2 plans made by multi-fidelity (optuna-tpe) because the LLM failed")
    assert "HTTP 503" in report.planner and report.planner in report.markdown
    assert len(server.chat_requests) == 2
    runs = runs_of(goal, "experiment")
    assert [r.data.tags["intern.plan_source"] for r in runs] == ["llm", "search-fallback"]
    assert "HTTP 503" in runs[1].data.tags["intern.llm_error"]
    assert runs[1].data.tags["intern.planner"] == "multi-fidelity (optuna-tpe) (fallback from multi-fidelity (llm:openai/stand-in))"
    assert report.baseline_test is not None and runs_of(goal, "report"), "the report was written"

    from prefect.client.orchestration import get_client

    logs, offset = [], 0
    with get_client(sync_client=True) as client:
        while batch := client.read_logs(limit=200, offset=offset):
            logs += [log.message for log in batch]
            offset += 200
    assert any("planning with multi-fidelity (optuna-tpe) instead of the LLM" in m for m in logs), "said in the Prefect log"

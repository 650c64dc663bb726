"""The controller flow end to end: real Prefect flow runs, real trl, real lm-eval, real MLflow."""

import json
import re

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlintern.flows.research_loop import research_loop
from mlintern.settings import get_settings
from mlintern.tracking import experiment_name
from tests.conftest import tiny_goal
from tests.standins.openai_server import OpenAIStandIn


def runs_of(goal, kind):
    exp = mlflow.get_experiment_by_name(experiment_name(goal))
    return MlflowClient().search_runs([exp.experiment_id], filter_string=f"tags.`intern.kind` = '{kind}'",
                                      order_by=["attributes.start_time ASC"])


def controller_evaluations(goal_name: str):
    """The `evaluate` task runs of goal `goal_name`'s newest research-loop flow run, and when its last
    experiment subflow ended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId,
                                                FlowRunFilterParentFlowRunId)
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        loop = next(r for r in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["research-loop"])),
                                                     sort=FlowRunSort.START_TIME_DESC, limit=20)
                    if r.parameters["goal"]["name"] == goal_name)
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[loop.id])))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[loop.id])))
    experiments = [r for r in subflows if r.end_time is not None and "plan" in r.parameters]
    assert experiments, "the experiments ran as the controller's subflows"
    return [t for t in tasks if t.name.startswith("evaluate")], max(r.end_time for r in experiments)


def test_loop_with_search_planner_records_everything(intern_env, prefect_harness, smol_model, monkeypatch):
    """Also: arXiv is down (503) and the loop goes on without literature, saying so."""
    from tests.standins.arxiv_server import ArxivStandIn

    with ArxivStandIn(status=503) as arxiv:
        monkeypatch.setenv("INTERN_ARXIV_URL", arxiv.base_url)
        get_settings.cache_clear()
        goal = tiny_goal(name="search-loop", budget={"max_experiments": 2}, use_literature=True)
        report = research_loop(goal)
    assert arxiv.queries, "arXiv was tried"
    lit = runs_of(goal, "literature")[0]
    assert "arXiv unreachable" in lit.data.tags["intern.literature_error"]

    assert report.planner == "multi-fidelity (optuna-tpe)"
    assert [r.plan.stage for r in report.experiments] == ["explore", "scale_up"], "explore, then scale up"
    assert len(report.experiments) == 2 and "experiment budget" in report.stop_reason
    # where each experiment's time outside its job went: the benchmark's files apart from its rows
    assert all(r.phases["benchmark"] >= 0 and r.phases["data"] > 0 for r in report.experiments), \
        [r.phases for r in report.experiments]
    assert report.baseline_test is not None and report.baseline_test.n == 12
    experiments = runs_of(goal, "experiment")
    assert len(experiments) == 2
    for run in experiments:
        assert run.info.status == "FINISHED"
        assert run.data.params["plan.method"] == "sft"
        assert "dev_score" in run.data.metrics and "loss" in run.data.metrics
        assert run.data.tags["prefect.flow_run_id"]
        assert "data.content_hash" in run.data.params or run.inputs.dataset_inputs, "dataset lineage logged"
    assert len(runs_of(goal, "baseline-dev")) == 1 and len(runs_of(goal, "baseline-test")) == 1
    # the base model's held-out test is measured beside the experiments (recorded only at the end): after
    # the last experiment, the controller evaluates the champion alone
    evaluations, last_experiment_end = controller_evaluations("search-loop")
    assert sum(t.start_time > last_experiment_end for t in evaluations) == 1, [
        (t.name, t.start_time, last_experiment_end) for t in evaluations]
    report_runs = runs_of(goal, "report")
    assert len(report_runs) == 1, "one report per goal, rewritten as the loop goes"
    report_run = report_runs[0]
    assert report_run.data.tags["intern.final"] == "true" and report_run.info.status == "FINISHED"
    assert "Held-out test: base vs champion" in mlflow.artifacts.load_text(
        f"runs:/{report_run.info.run_id}/report.md")
    # written after each experiment (dev only: no held-out test until the end), then once more
    written = MlflowClient().get_metric_history(report_run.info.run_id, "experiments")
    assert [int(m.value) for m in written] == [1, 2, 2]
    assert [m.step for m in MlflowClient().get_metric_history(report_run.info.run_id, "base_test")] == [2]
    lit_spend = lit.data.metrics["llm_dollars"]
    assert lit_spend == 0 and report.llm_dollars == 0, "no LLM: nothing spent"

    # The champion is the best dev score among candidates that beat the then-champion on dev AND
    # on the confirmation set (noise_z=0 in tiny_goal); a dev-only win is recorded, not promoted.
    better = [r for r in report.experiments if r.confirmed]
    assert all(r.confirm is not None for r in report.experiments if r.confirmed is not None)
    if better:
        best = max(better, key=lambda r: r.dev.value)
        assert report.champion_dev.value == best.dev.value
        version = MlflowClient().get_model_version_by_alias("intern-search-loop", "champion")
        assert version.run_id == next(r for r in report.experiments if r.plan_id == report.champion_plan_id).mlflow_run_id
        assert report.champion_test is not None
        champion = next(r for r in report.experiments if r.plan_id == report.champion_plan_id)
        assert champion.confirmed is True and champion.confirm.n == 12, "checked on the second dev set"
        assert "confirm_score" in MlflowClient().get_run(champion.mlflow_run_id).data.metrics
    else:
        assert report.champion_plan_id is None and report.champion_test is None

    # Held-out test scores were logged only after the loop, never into a planning context.
    assert all("test_score" not in r.data.metrics for r in experiments if r.data.tags.get("intern.champion") != "true")


def plan_json(batch=2, accum=1, lr=2e-4, steps=2, retry_of=None, papers=()):
    return json.dumps({
        "method": "sft", "init_from": "base",
        "dataset": {"source": "benchmark", "num_examples": 16 + steps + batch + int(lr * 1e6) % 7},
        "hyperparameters": {"learning_rate": lr, "max_steps": steps, "per_device_batch_size": batch,
                            "gradient_accumulation_steps": accum, "max_length": 64},
        "hypothesis": "h", "rationale": "r", "cited_papers": list(papers), "retry_of": retry_of,
    })


def test_loop_with_llm_planner_repairs_output_and_recovers_from_oom_and_nan(
    intern_env, prefect_harness, smol_model, monkeypatch
):
    """LLM over real HTTP: a malformed answer is repaired; an injected OOM and an injected NaN
    are classified, diagnosed (the failure goes back to the LLM) and retried with a changed plan."""
    monkeypatch.setenv("INTERN_INJECT_FAULTS", json.dumps({"oom_above_batch": 2, "nan_above_lr": 5e-4}))
    monkeypatch.setenv("INTERN_LLM_API_KEY", "sk-test-loop-key")
    get_settings.cache_clear()

    def answer(request):
        prompt = request.json["messages"][-1]["content"]
        n = len(answer.calls)
        answer.calls.append(prompt)
        if n == 0:
            return '{"method": "sft", "hyperparameters": '  # malformed: cut off
        if "not a valid ExperimentPlan" in prompt:
            return plan_json(batch=4)  # repaired, but batch 4 is over the simulated memory cap
        if "failed and must be fixed" in prompt and "out of memory" in prompt:
            failed = prompt.split("Failed plan ")[1].split(" ")[0]
            return plan_json(batch=2, accum=2, retry_of=failed)
        if "failed and must be fixed" in prompt and "nan" in prompt.lower():
            failed = prompt.split("Failed plan ")[1].split(" ")[0]
            return plan_json(lr=1e-4, steps=3, retry_of=failed)
        return plan_json(lr=2e-3, papers=["2501.19393"])  # too hot: NaN

    answer.calls = []
    goal = tiny_goal(name="llm-loop", planner="llm", llm_model="openai/stand-in",
                     budget={"max_experiments": 4},
                     search_space={"batch_sizes": [2, 4], "learning_rate": [1e-4, 3e-3]})
    with OpenAIStandIn(answer) as server:
        goal = goal.model_copy(update={"llm_api_base": server.api_base})
        report = research_loop(goal)

    kinds = [(r.status, r.failure.kind.value if r.failure else None) for r in report.experiments]
    assert kinds == [("failed", "oom"), ("succeeded", None), ("failed", "nan_or_divergence"), ("succeeded", None)]
    oom, fixed, nan, fixed2 = report.experiments
    assert fixed.plan.retry_of == oom.plan_id and fixed.plan.hyperparameters.gradient_accumulation_steps == 2
    assert nan2_ok(nan, fixed2)
    runs = runs_of(goal, "experiment")
    assert len(runs) == 4, "every attempt, failed or not, is one MLflow run"
    assert {r.data.tags.get("intern.failure_kind") for r in runs} >= {"oom", "nan_or_divergence"}
    assert [r.info.status for r in runs].count("FAILED") == 2
    assert "2501.19393" in {r.data.tags.get("intern.cited_papers") for r in runs}
    assert report.planner == "multi-fidelity (llm:openai/stand-in)"
    assert all(r.headers.get("authorization") == "Bearer sk-test-loop-key" for r in server.requests)

    # Secrets scan: the key reached the LLM server, and nowhere else the loop writes.
    from tests.secret_scan import scan_files, scan_prefect

    assert scan_files("sk-test-loop-key", [intern_env]) == []
    assert scan_prefect("sk-test-loop-key") == []


def nan2_ok(nan, fixed2) -> bool:
    return fixed2.plan.retry_of == nan.plan_id and fixed2.plan.hyperparameters.learning_rate < nan.plan.hyperparameters.learning_rate


def test_bad_goal_is_rejected_before_any_work(intern_env, prefect_harness):
    with pytest.raises(Exception) as err:
        research_loop({"name": "x", "budget": {"max_experiments": -1}})
    assert "max_experiments" in str(err.value)
    assert mlflow.get_experiment_by_name("intern-x") is None


def test_secret_scan_finds_a_planted_secret(intern_env, prefect_harness):
    """The scan above would catch a leak: plant the key in MLflow and in a Prefect artifact."""
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact

    from tests.secret_scan import scan_files, scan_prefect

    client = MlflowClient()
    run = client.create_run(client.create_experiment("planted"))
    client.log_param(run.info.run_id, "api_key", "sk-planted-secret-123")

    @flow
    def leaky():
        create_markdown_artifact(markdown="key: sk-planted-secret-123", key="leak")

    leaky()
    assert scan_files("sk-planted-secret-123", [intern_env]), "found in the MLflow store"
    assert "prefect artifact leak" in scan_prefect("sk-planted-secret-123")


@pytest.mark.slow  # a full loop of 3-6 minutes on 2 cores: the default suite stays well under 30 minutes
def test_loop_reads_papers_and_plans_cite_them(intern_env, prefect_harness, smol_model, monkeypatch):
    """arXiv (stand-in Atom feed through the arxiv client) -> LLM digests -> the planner's prompt
    -> a plan whose rationale cites the paper ids and names its data recipe, visible in MLflow."""
    from tests.standins.arxiv_server import ArxivStandIn

    monkeypatch.setenv("INTERN_LLM_API_KEY", "sk-test-lit")
    digest = json.dumps({"technique": "Group-relative policy optimisation on math answers.",
                         "reported_gains": "GSM8K +5 points", "hyperparameters": "lr 1e-6, group 64",
                         "relevance": 0.9})

    def answer(request):
        prompt = request.json["messages"][-1]["content"]
        if "Digest one arXiv paper" in request.json["messages"][0]["content"] + prompt:
            return digest
        cited = sorted(set(re.findall(r"\[(\d{4}\.\d{4,5})\]", prompt)))
        answer.seen_literature = cited
        return json.dumps({**json.loads(plan_json(papers=cited[:2])),
                           "rationale": f"Following {', '.join(cited[:2])}: SFT on fresh generator data first."})

    answer.seen_literature = []
    with ArxivStandIn("post_training.xml") as arxiv, OpenAIStandIn(answer) as llm:
        monkeypatch.setenv("INTERN_ARXIV_URL", arxiv.base_url)
        get_settings.cache_clear()
        goal = tiny_goal(name="lit-loop", planner="llm", llm_model="openai/stand-in", llm_api_base=llm.api_base,
                         use_literature=True, budget={"max_experiments": 1})
        report = research_loop(goal)
    assert arxiv.queries, "the arxiv client queried the stand-in"
    assert len(answer.seen_literature) >= 2, "digested papers reached the planner's prompt"
    run = runs_of(goal, "experiment")[0]
    note = run.data.tags["mlflow.note.content"]
    for paper in answer.seen_literature[:2]:
        assert paper in note and paper in run.data.tags["intern.cited_papers"]
    assert '"source":"benchmark"' in note.replace(" ", ""), "the data recipe is in the run"
    lit = runs_of(goal, "literature")[0]
    digests = json.loads(mlflow.artifacts.load_text(f"runs:/{lit.info.run_id}/digests.json"))
    assert {d["paper_id"] for d in digests} >= set(answer.seen_literature[:2])
    assert report.experiments[0].plan.cited_papers == answer.seen_literature[:2]

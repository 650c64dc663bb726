"""Reliability: injected faults each end in a clear, recorded outcome; crash-resume loses nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlintern.llm import LLMClient, LLMError
from mlintern.models import ModelNotFound, resolve_model
from mlintern.schemas import ExperimentPlan, FailureKind
from mlintern.settings import get_settings
from mlintern.tracking import experiment_name
from tests.conftest import ROOT, tiny_goal
from tests.standins.openai_server import Answer, OpenAIStandIn
from tests.test_training_sft import sft_rows


# ---------------------------------------------------------------- faults at the edges

def test_llm_timeout_is_bounded_and_named(monkeypatch):
    monkeypatch.setenv("INTERN_LLM_TIMEOUT_S", "1")
    monkeypatch.setenv("INTERN_LLM_RETRIES", "1")
    get_settings.cache_clear()
    with OpenAIStandIn([Answer(content="{}", delay_s=5)] * 3) as server:
        start = time.time()
        with pytest.raises(LLMError, match="openai/stand-in"):
            LLMClient(model="openai/stand-in", api_base=server.api_base).text([{"role": "user", "content": "hi"}])
        assert time.time() - start < 12
    get_settings.cache_clear()


def test_missing_model_id_fails_fast_and_clearly(tmp_path):
    with pytest.raises(ModelNotFound, match="neither a local folder nor a hub id"):
        resolve_model("no-such-model", tmp_path)
    with pytest.raises(ModelNotFound, match="unknown builtin"):
        resolve_model("builtin:gpt-5", tmp_path)
    # A well-formed hub id is checked on the Hub (config only); offline it fails at once, named.
    start = time.time()
    with pytest.raises(ModelNotFound, match="'nonexistent-org/nonexistent-model' could not be loaded"):
        resolve_model("nonexistent-org/nonexistent-model", tmp_path)
    assert time.time() - start < 10


def run_train_task(tmp_path, monkeypatch, smol_model, faults):
    """The real `train` task (child process, hard timeout) with a fault injected."""
    from mlintern.tasks.train import train
    from mlintern.training.job import TrainJob

    monkeypatch.setenv("INTERN_INJECT_FAULTS", json.dumps(faults))
    get_settings.cache_clear()
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(f"faults-{tmp_path.name}")).info.run_id
    plan = ExperimentPlan(hyperparameters={"max_steps": 2, "per_device_batch_size": 2, "max_length": 64})
    job = TrainJob(plan=plan, model_path=smol_model, data_path=sft_rows(tmp_path / "d.jsonl"),
                   output_dir=str(tmp_path / "out"), device="cpu")
    return train.fn(job, run_id, get_settings().resolved_tracking_uri(), 600)


def test_worker_dying_mid_run_is_a_classified_failure(intern_env, monkeypatch, smol_model, prefect_harness):
    outcome = run_train_task(intern_env, monkeypatch, smol_model, {"die_at_step": 1})
    assert outcome.status == "failed"
    assert "exited with code -9" in outcome.failure.message
    assert outcome.failure.log_tail, "the log tail is kept for diagnosis"


def test_disk_full_while_saving_stops_the_loop_cleanly(intern_env, monkeypatch, smol_model, prefect_harness):
    from mlintern.loop import LoopState
    from mlintern.schemas import EvalScore, ExperimentResult

    outcome = run_train_task(intern_env, monkeypatch, smol_model, {"disk_full_on_save": True})
    assert outcome.failure.kind == FailureKind.disk_full
    assert not (intern_env / "out" / "model").exists(), "no half-written model is left as if complete"
    plan = ExperimentPlan()
    state = LoopState(goal=tiny_goal(), baseline=EvalScore(task="t", metric="score", value=0.1))
    state.record(ExperimentResult(plan_id=plan.plan_id(), plan=plan, status="failed", failure=outcome.failure))
    assert "disk full" in state.stop_reason()


def test_a_plan_cannot_train_on_the_evaluation_files(tmp_path):
    from mlintern.benchmarks import prepare_benchmark
    from mlintern.planners import PlanRejected, validate_plan
    from tests.test_planners import ctx_for

    goal = tiny_goal()
    bench = prepare_benchmark(goal.benchmark, tmp_path)
    plan = ExperimentPlan(dataset={"source": f"hf:{bench.test_file}", "num_examples": 16},
                          hyperparameters={"max_steps": 2, "max_length": 64})
    with pytest.raises(PlanRejected, match="evaluation data"):
        validate_plan(plan, ctx_for(goal).model_copy(update={"eval_files": [bench.dev_file, bench.test_file]}))


@pytest.mark.slow  # a full loop of 3-6 minutes on 2 cores: the default suite stays well under 30 minutes
def test_integrity_check_refuses_the_final_test_after_tampering(intern_env, prefect_harness, smol_model, monkeypatch):
    """An evaluation file changed during the loop (here by the 'LLM' side) stops the final report."""
    from mlintern.flows.research_loop import IntegrityError, research_loop
    from tests.test_research_loop import plan_json

    monkeypatch.setenv("INTERN_LLM_API_KEY", "sk-test-integrity")
    get_settings.cache_clear()
    tampered = []

    def answer(request):
        for test_file in Path(get_settings().work_dir).rglob("test.jsonl"):
            with open(test_file, "a") as f:
                f.write(json.dumps({"question": "Calculate 1 + 1.", "answer": "2"}) + "\n")
            tampered.append(test_file)
        return plan_json()

    with OpenAIStandIn(answer) as server:
        goal = tiny_goal(name="tamper", planner="llm", llm_model="openai/stand-in", llm_api_base=server.api_base,
                         budget={"max_experiments": 1})
        with pytest.raises(IntegrityError, match="changed during the loop"):
            research_loop(goal)
    assert tampered
    exp = mlflow.get_experiment_by_name(experiment_name(goal))
    assert not MlflowClient().search_runs([exp.experiment_id], "tags.`intern.kind` = 'baseline-test'"), \
        "the held-out test set was never scored"


# ---------------------------------------------------------------- crash-resume

def _launch(goal_file: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlintern.cli", "run", "--goal", str(goal_file)],
                            cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _done_runs(uri: str, goal) -> list:
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment_name(goal))
    if exp is None:
        return []
    return MlflowClient().search_runs([exp.experiment_id], "tags.`intern.kind` = 'experiment'")


@pytest.mark.slow
def test_crash_resume_at_several_points_loses_and_duplicates_nothing(tmp_path, smol_model):
    """SIGKILL the whole controller (and, through PDEATHSIG, its training child) mid-training,
    between experiments and during the final report; restart each time; then check MLflow."""
    goal = tiny_goal(name="crashy", budget={"max_experiments": 3})
    goal_file = tmp_path / "goal.json"
    goal_file.write_text(goal.model_dump_json())
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # unbuffered: the crash points are found in the log while the controller runs (a block-buffered
    # stdout held "stopping:" back until the controller had already finished, in CI)
    env = dict(os.environ, INTERN_TRACKING_URI=uri, INTERN_WORK_DIR=str(tmp_path / "work"),
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    log = tmp_path / "controller.log"

    def state(run):
        return run.data.tags.get("intern.state")

    crash_points = [
        # 1 s after the job went to the training worker: it is loading, training or saving (a warm
        # worker finished a 3-step job within the 8 s this used to wait, so nothing was killed mid-job)
        ("mid-training of experiment 1", lambda: b"training plan" in log.read_bytes(), 1),
        ("after experiment 1 finished", lambda: sum(state(r) == "done" for r in _done_runs(uri, goal)) >= 1, 0),
        ("during the final report", lambda: b"stopping:" in log.read_bytes(), 0),
    ]
    kills = 0
    for name, reached, extra_wait in crash_points:
        proc = _launch(goal_file, env, log)
        deadline = time.time() + 900
        while not reached():
            assert proc.poll() is None, f"controller exited before '{name}':\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"never reached '{name}'"
            time.sleep(1)
        time.sleep(extra_wait)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        log.write_text(log.read_text() + f"\n=== SIGKILL: {name} ===\n")

    proc = _launch(goal_file, env, log)
    assert proc.wait(timeout=1200) == 0, log.read_text()[-3000:]
    runs = _done_runs(uri, goal)
    done = [r for r in runs if state(r) == "done"]
    plan_ids = [r.data.tags["intern.plan_id"] for r in done]
    assert len(done) == 3, f"3 finished experiments expected, got {len(done)}"
    assert len(set(plan_ids)) == 3, "no plan was finished twice"
    interrupted = [r for r in runs if state(r) != "done"]
    assert all(r.info.status == "KILLED" and state(r) == "interrupted" for r in interrupted)
    assert len(interrupted) >= 1, "the run killed mid-training was marked, not silently dropped"
    assert all(r.info.status != "RUNNING" for r in runs)
    for r in done:  # each finished run has one loss point per step: nothing written twice
        steps = [m.step for m in MlflowClient().get_metric_history(r.info.run_id, "loss")]
        assert len(steps) == len(set(steps)) == int(r.data.params["plan.hyperparameters.max_steps"])
    assert b"resuming goal" in log.read_bytes()
    report = MlflowClient().search_runs([runs[0].info.experiment_id], "tags.`intern.kind` = 'report'")
    assert len(report) == 1 and report[0].data.tags["intern.final"] == "true", \
        "the final report was written after the last restart"
    print(f"crash points tried: {kills}; finished experiments: {len(done)}; interrupted runs marked: "
          f"{len(interrupted)}; runs lost: 0")


def test_a_planner_answer_completes_its_task_but_a_planner_failure_is_retried(prefect_harness):
    """PlannerDone / PlannerWaiting are answers: the plan task used to retry them after 10 s, holding the
    controller while a finished experiment's GPU waited for its next one (2 CPU lanes: 10-25 s gaps), and
    then marked a Failed task run in the Prefect UI, with an ERROR in the log, each time a lane waited."""
    import time

    from prefect import flow

    from mlintern.planners.base import PlannerDone, PlannerWaiting
    from mlintern.tasks.plan import NoPlan, plan_next

    class Asked:
        def __init__(self, exc):
            self.exc, self.calls = exc, 0

        def propose(self, ctx):
            self.calls += 1
            raise self.exc

    @flow
    def ask(planner):
        return plan_next(planner, None, return_state=True)

    for answer, waiting in ((PlannerWaiting("waiting for 1 exploration trial(s)"), True),
                            (PlannerDone("budget spent"), False)):
        planner, start = Asked(answer), time.time()
        state = ask(planner)
        assert state.is_completed(), f"{type(answer).__name__} ended its task run {state.name}"
        assert state.result() == NoPlan(reason=str(answer), waiting=waiting)
        assert planner.calls == 1 and time.time() - start < 5, f"{type(answer).__name__} was retried"
    failing = Asked(ConnectionError("provider outage"))
    with pytest.raises(ConnectionError):  # the failed task run fails the flow
        ask(failing)
    assert failing.calls == 2, "a failure gets its one retry"

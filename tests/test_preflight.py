"""Deterministic errors fail fast: before a Prefect server starts (CLI), and without retries (tasks)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prefect import flow

from mlintern.errors import GoalError
from mlintern.preflight import check_goal
from mlintern.schemas import BenchmarkSpec
from mlintern.tasks.setup import prepare, resolve
from tests.conftest import ROOT, tiny_goal


def test_check_goal_names_each_problem(smol_model, tmp_path):
    assert check_goal(tiny_goal()) == []
    (tmp_path / "empty").mkdir()
    problems = check_goal(tiny_goal(base_model=str(tmp_path / "missing"), benchmark={"name": "no_such_task"}))
    assert problems[0] == f"base_model: base model folder {tmp_path / 'missing'} does not exist"
    assert problems[1].startswith("benchmark.name: reasoning-gym has no task 'no_such_task'")
    assert check_goal(tiny_goal(base_model=str(tmp_path / "empty")))[0].endswith("has no config.json (is it a saved model?)")
    assert "neither a local folder nor a hub id" in check_goal(tiny_goal(base_model="a/b/c"))[0]
    assert check_goal(tiny_goal(base_model="Qwen/Qwen3-1.7B-Base")) == [], "hub ids are checked online, in the task"


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "no_such_task"], "reasoning-gym has no task 'no_such_task'"),
    (["--base-model", "/nonexistent/model"], "base model folder /nonexistent/model does not exist"),
])
def test_cli_refuses_a_broken_goal_before_starting_prefect(args, message, tmp_path):
    env = dict(os.environ, INTERN_WORK_DIR=str(tmp_path / "work"), PYTHONPATH=str(ROOT),
               INTERN_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-m", "mlintern.cli", "run", "--no-literature", *args], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    text = " ".join((out.stdout + out.stderr).split())  # rich wraps long lines
    assert out.returncode == 2, text
    assert "The goal cannot run; nothing was started:" in text and message in text
    assert "temporary server" not in text, "no Prefect server was started"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "work").exists(), "nothing was written"


def _run_counts(state) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_task_run(state.state_details.task_run_id).run_count


def test_a_goal_error_is_not_retried_but_a_transient_one_is(prefect_harness, intern_env, monkeypatch):
    """The same Prefect tasks the loop runs: a GoalError ends the task at its first attempt."""
    @flow
    def setup_with(spec: BenchmarkSpec, model: str):
        return (prepare(spec, return_state=True), resolve.with_options(retry_delay_seconds=0)(model, return_state=True))

    bench_state, model_state = setup_with(BenchmarkSpec(name="no_such_task"), "/nonexistent/model")
    assert bench_state.is_failed() and model_state.is_failed()
    with pytest.raises(GoalError, match="no task 'no_such_task'"):
        bench_state.result()
    assert _run_counts(bench_state) == 1 and _run_counts(model_state) == 1

    # a transient failure still gets the task's retries
    import mlintern.tasks.setup as setup_mod

    calls = []

    def flaky(*a, **k):
        calls.append(1)
        raise ConnectionError("hub read timed out")

    monkeypatch.setattr(setup_mod, "resolve_model", flaky)
    state = setup_with.with_options()(BenchmarkSpec(name="basic_arithmetic", dev_size=8, test_size=8), "org/model")[1]
    assert state.is_failed() and len(calls) == 3 and _run_counts(state) == 3

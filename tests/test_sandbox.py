"""LLM-proposed code (a GRPO reward) runs sandboxed: own process, no network, no eval files, timeout."""

import json
import os
import tempfile
from pathlib import Path

import pytest

from mlintern.benchmarks import prepare_benchmark
from mlintern.sandbox import SandboxError, run_untrusted
from mlintern.schemas import BenchmarkSpec, ExperimentPlan
from tests.standins.openai_server import OpenAIStandIn

GOOD = """
def reward(completion, answer):
    return 1.0 if completion.strip() == answer.strip() else 0.0
"""


def test_proposed_reward_runs_and_scores():
    rows = [{"completion": "42", "answer": "42"}, {"completion": "41", "answer": "42"}]
    assert run_untrusted(GOOD, "reward", rows) == [1.0, 0.0]


def test_no_network_even_to_loopback():
    with OpenAIStandIn(["{}"]) as server:
        port = server.base_url.rsplit(":", 1)[1]
        code = f"""
import socket
def reward(completion, answer):
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    return 1.0
"""
        with pytest.raises(SandboxError, match="OSError|unreachable|refused"):
            run_untrusted(code, "reward", [{"completion": "1", "answer": "1"}])
        assert server.requests == [], "nothing reached the server"


def test_no_access_to_the_evaluation_files():
    root = Path(tempfile.mkdtemp(prefix="intern-evalfiles-"))
    os.chmod(root, 0o755)  # the folder is open: only the files' own 0600 mode protects them
    bench = prepare_benchmark(BenchmarkSpec(dev_size=5, test_size=5), root)
    for parent in Path(bench.test_file).parents:
        if parent == root.parent:
            break
        os.chmod(parent, 0o755)
    code = f"""
def reward(completion, answer):
    return float(len(open({bench.test_file!r}).read()))
"""
    with pytest.raises(SandboxError, match="PermissionError"):
        run_untrusted(code, "reward", [{"completion": "1", "answer": "1"}])
    assert json.loads(open(bench.test_file).readline())["question"], "the loop itself still reads it"


def test_runaway_code_is_killed():
    code = "def reward(completion, answer):\n    while True:\n        pass\n"
    with pytest.raises(SandboxError, match="exceeded|exit"):
        run_untrusted(code, "reward", [{"completion": "1", "answer": "1"}], timeout_s=2)


def test_only_the_standard_library():
    code = "import torch\ndef reward(completion, answer):\n    return 1.0\n"
    with pytest.raises(SandboxError, match="ModuleNotFoundError"):
        run_untrusted(code, "reward", [{"completion": "1", "answer": "1"}])


def test_reward_code_is_only_for_grpo():
    with pytest.raises(ValueError, match="only a grpo plan"):
        ExperimentPlan(method="sft", reward_code=GOOD)


def test_grpo_with_a_proposed_reward_trains(intern_env, monkeypatch, smol_model):
    from mlflow.tracking import MlflowClient

    from mlintern.benchmarks.rgym import PROMPT_SUFFIX, make_items
    from mlintern.training.job import TrainJob
    from mlintern.training.runner import run

    data = intern_env / "grpo.jsonl"
    with open(data, "w") as f:
        for r in make_items("basic_arithmetic", {"min_terms": 2, "max_terms": 2, "max_digits": 1}, 4, 5):
            f.write(json.dumps({"prompt": [{"role": "user", "content": r["question"] + PROMPT_SUFFIX}], **r}) + "\n")
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("sandboxed-grpo")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    plan = ExperimentPlan(method="grpo", reward_code=GOOD, hyperparameters={
        "max_steps": 1, "per_device_batch_size": 2, "num_generations": 2, "max_completion_length": 8,
        "max_length": 64})
    outcome = run(TrainJob(plan=plan, model_path=smol_model, data_path=str(data),
                           output_dir=str(intern_env / "out"), device="cpu"))
    assert outcome.status == "succeeded"
    metrics = client.get_run(run_id).data.metrics
    assert any("proposed_reward" in k for k in metrics), sorted(metrics)

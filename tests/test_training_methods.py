"""Real trl DPO and GRPO (full and LoRA) on the real SmolLM2-135M, logging to a real MLflow
store; GRPO rewards from the real reasoning-gym scorer; the `accelerate launch` path of
tasks/train.py on CPU."""

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlintern.benchmarks.rgym import PROMPT_SUFFIX, make_items
from mlintern.schemas import ExperimentPlan
from mlintern.training.job import TrainJob
from mlintern.training.rewards import correctness_reward, format_reward, reward_setup
from mlintern.training.runner import run

ROOT = Path(__file__).resolve().parent.parent
ACCEL = ROOT / "deployments" / "accelerate"
CFG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": "+-"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """On 2 cores shared by several workers, 2 torch threads spin-wait on each other: a GRPO step
    took 37 s with 2 threads and 4 s with 1 (measured). Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _items(n=8, seed=11):
    return make_items("basic_arithmetic", CFG, n, seed=seed)


def _wrong(answer: str) -> str:
    return str(int(answer) + 7)  # never contains the oracle as a substring for 1-3 digit answers


def _user(r):
    return [{"role": "user", "content": r["question"] + PROMPT_SUFFIX}]


def write_rows(path: Path, method: str, n=8) -> str:
    with open(path, "w") as f:
        for r in _items(n):
            if method == "dpo":
                row = {"prompt": _user(r), "chosen": [{"role": "assistant", "content": r["answer"]}],
                       "rejected": [{"role": "assistant", "content": _wrong(r["answer"])}]}
            elif method == "grpo":
                row = {"prompt": _user(r), **r}
            else:
                row = {"prompt": _user(r), "completion": [{"role": "assistant", "content": r["answer"]}]}
            f.write(json.dumps(row) + "\n")
    return str(path)


def new_run(tmp_path, monkeypatch):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(f"t-{tmp_path.name}")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    return client, run_id


def plan_for(method: str, steps: int, **hp) -> ExperimentPlan:
    base = {"max_steps": steps, "per_device_batch_size": 2, "max_length": 64, "learning_rate": 1e-4,
            "lora_r": 4, "lora_alpha": 8, "beta": 0.1}
    if method == "grpo":  # 4 completions per step = 2 prompts x 2 generations
        base.update(per_device_batch_size=4, num_generations=2, max_completion_length=8)
    return ExperimentPlan(method=method, hyperparameters={**base, **hp})


def train(intern_env, monkeypatch, smol_model, method, steps, **hp):
    client, run_id = new_run(intern_env, monkeypatch)
    job = TrainJob(plan=plan_for(method, steps, **hp), model_path=smol_model,
                   data_path=write_rows(intern_env / f"{method}.jsonl", method),
                   output_dir=str(intern_env / "out"), device="cpu")
    start, cpu = time.time(), time.process_time()
    outcome = run(job)
    print(f"{method} lora={hp.get('lora', False)} steps={steps}: {time.time() - start:.1f}s wall, "
          f"{time.process_time() - cpu:.1f}s cpu")
    return outcome, client, run_id


def assert_saved_full_model(outcome, intern_env):
    saved = intern_env / "out" / "model"
    assert outcome.model_path == str(saved)
    assert (saved / "config.json").exists() and (saved / "model.safetensors").exists()
    assert (saved / "tokenizer.json").exists()
    assert not (saved / "adapter_config.json").exists(), "LoRA is merged into a full model"


# --- DPO ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("lora,steps", [
    pytest.param(True, 1, id="lora"),
    pytest.param(False, 2, id="full"),  # loads a reference copy
])
def test_dpo_trains_and_logs(intern_env, monkeypatch, smol_model, lora, steps):
    outcome, client, run_id = train(intern_env, monkeypatch, smol_model, "dpo", steps, lora=lora)
    assert outcome.status == "succeeded" and outcome.steps == steps
    assert math.isfinite(outcome.train_loss)
    losses = client.get_metric_history(run_id, "loss")
    assert [m.step for m in losses] == list(range(1, steps + 1)), "one loss point per optimizer step"
    assert abs(losses[0].value - math.log(2)) < 1e-3, "DPO starts at ln 2 (policy == reference)"
    assert client.get_metric_history(run_id, "rewards/margins"), "DPO's own metrics reach MLflow"
    assert_saved_full_model(outcome, intern_env)


# --- GRPO --------------------------------------------------------------------------------------

@pytest.mark.parametrize("lora,steps,batch", [
    pytest.param(True, 1, 2, id="lora"),  # 1 prompt x 2 completions; reference = adapter disabled
    pytest.param(False, 2, 4, id="full"),  # 2 prompts x 2 completions; reference copy
])
def test_grpo_trains_and_logs(intern_env, monkeypatch, smol_model, lora, steps, batch):
    outcome, client, run_id = train(intern_env, monkeypatch, smol_model, "grpo", steps, lora=lora,
                                    per_device_batch_size=batch)
    assert outcome.status == "succeeded" and outcome.steps == steps
    for name in ("loss", "reward", "rewards/correctness_reward/mean", "rewards/format_reward/mean",
                 "completions/mean_length"):
        history = client.get_metric_history(run_id, name)
        assert [m.step for m in history] == list(range(1, steps + 1)), name
        assert all(math.isfinite(m.value) for m in history), name
    for m in client.get_metric_history(run_id, "completions/max_length"):
        assert m.value <= 8, "max_completion_length is honoured"
    assert_saved_full_model(outcome, intern_env)


# --- rewards -----------------------------------------------------------------------------------

def _columns(rows, repeat=1):
    keys = ("rg_task", "rg_config", "question", "answer", "metadata")
    return {k: [r[k] for r in rows for _ in range(repeat)] for k in keys}


def test_rewards_use_the_real_reasoning_gym_scorer():
    rows = _items(4, seed=5)
    cols = _columns(rows, repeat=2)
    plain = [c for r in rows for c in (r["answer"], _wrong(r["answer"]))]
    assert correctness_reward(plain, **cols) == [1.0, 0.0] * 4
    # conversational completions (trl 1.16 with conversational prompts), with a trailing line
    chat = [[{"role": "assistant", "content": f" {c}\nBecause..."}] for c in plain]
    assert correctness_reward(chat, **cols, trainer_state=None, log_metric=print) == [1.0, 0.0] * 4
    # the benchmark scorer's own partial credit passes through (oracle inside a longer answer)
    partial = correctness_reward([f"x = {rows[0]['answer']}"], **_columns(rows[:1]))[0]
    assert 0.0 < partial < 1.0
    assert correctness_reward(["", None], **_columns(rows[:1], repeat=2)) == [0.0, 0.0]


def test_exact_match_reward_when_rows_have_only_answer():
    completions = ["42", "Answer: 42.", "41", "  b ", "The answer is B", "C"]
    answers = ["42", "42", "42", "B", "B", "B"]
    assert correctness_reward(completions, answer=answers) == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert correctness_reward(["1,000", "4.0"], answer=["1000", "4"]) == [1.0, 1.0]
    assert correctness_reward(["x"], answer=[None]) == [None], "no reference: no opinion"


def test_format_reward_and_weights():
    completions = ["12", [{"role": "assistant", "content": "12"}], "12\nand then I think", "", "word " * 40]
    assert format_reward(completions) == [1.0, 1.0, 0.5, 0.0, 0.0]
    funcs, weights = reward_setup()
    assert [f.__name__ for f in funcs] == ["correctness_reward", "format_reward"]
    assert weights[0] > weights[1], "a well-formatted wrong answer never beats a correct one"


# --- accelerate launch path (tasks/train.py) ---------------------------------------------------

def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"cpu.yaml": ("NO", 1, True), "single_gpu.yaml": ("NO", 1, False),
                "multi_gpu_ddp.yaml": ("MULTI_GPU", 8, False), "fsdp.yaml": ("FSDP", 8, False)}
    for name, (kind, nproc, cpu) in expected.items():
        cfg = load_config_from_file(str(ACCEL / name))
        assert (str(cfg.distributed_type.value), cfg.num_processes, cfg.use_cpu) == (kind, nproc, cpu), name
    assert load_config_from_file(str(ACCEL / "fsdp.yaml")).fsdp_config["fsdp_version"] == 2


def _training_command(job_path, outcome_path):
    from mlintern.tasks.train import training_command  # the command the Prefect train task runs

    return training_command(job_path, outcome_path, None)


def test_runner_through_accelerate_launch_on_cpu(intern_env, monkeypatch, smol_model):
    client, run_id = new_run(intern_env, monkeypatch)
    plan = ExperimentPlan(hyperparameters={"max_steps": 1, "per_device_batch_size": 2, "max_length": 64,
                                           "learning_rate": 1e-4})
    job = TrainJob(plan=plan, model_path=smol_model, data_path=write_rows(intern_env / "sft.jsonl", "sft"),
                   output_dir=str(intern_env / "out"), device="auto")
    job_path, outcome_path = intern_env / "job.json", intern_env / "outcome.json"
    job_path.write_text(job.model_dump_json())
    monkeypatch.setenv("INTERN_ACCELERATE_CONFIG", str(ACCEL / "cpu.yaml"))
    cmd = _training_command(job_path, outcome_path)
    assert cmd[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(ACCEL / "cpu.yaml")]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{intern_env}/mlflow.db", MLFLOW_RUN_ID=run_id,
               HF_MLFLOW_LOG_ARTIFACTS="0", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")
    start = time.time()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"accelerate launch sft 1 step: {time.time() - start:.1f}s wall, "
          f"{usage.ru_utime + usage.ru_stime:.1f}s cpu (children)")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outcome = json.loads(outcome_path.read_text())
    assert outcome["status"] == "succeeded" and outcome["steps"] == 1, outcome
    assert len(client.get_metric_history(run_id, "loss")) == 1
    assert (intern_env / "out" / "model" / "model.safetensors").exists()

"""Real trl SFT (full and LoRA) on the real SmolLM2-135M, logging to a real MLflow store."""

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from mlintern.benchmarks.rgym import PROMPT_SUFFIX, make_items
from mlintern.schemas import ExperimentPlan, FailureKind
from mlintern.training.failures import classify_text
from mlintern.training.job import TrainJob
from mlintern.training.runner import main as runner_main

CFG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": "+-"}


def sft_rows(path, n=16):
    with open(path, "w") as f:
        for r in make_items("basic_arithmetic", CFG, n, seed=11):
            f.write(json.dumps({"prompt": [{"role": "user", "content": r["question"] + PROMPT_SUFFIX}],
                                "completion": [{"role": "assistant", "content": r["answer"]}]}) + "\n")
    return str(path)


def run_job(tmp_path, monkeypatch, smol_model, faults=None, fidelity=None, **hp):
    client = MlflowClient()
    exp = client.create_experiment(f"t-{tmp_path.name}")
    run_id = client.create_run(exp).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    plan = ExperimentPlan(hyperparameters={"max_steps": 2, "per_device_batch_size": 2, "max_length": 64,
                                           "learning_rate": 1e-4, **hp})
    job = TrainJob(plan=plan, model_path=smol_model, data_path=sft_rows(tmp_path / "train.jsonl"),
                   output_dir=str(tmp_path / "out"), device="cpu", fidelity=fidelity or {})
    (tmp_path / "job.json").write_text(job.model_dump_json())
    code = runner_main([str(tmp_path / "job.json"), str(tmp_path / "outcome.json"), json.dumps(faults or {})])
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    return code, outcome, client.get_run(run_id), client


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_trains_and_logs_step_metrics(intern_env, monkeypatch, smol_model, lora):
    code, outcome, run, client = run_job(intern_env, monkeypatch, smol_model, lora=lora, lora_r=4, lora_alpha=8)
    assert code == 0 and outcome["status"] == "succeeded", outcome
    assert outcome["steps"] == 2 and math.isfinite(outcome["train_loss"])
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert len(losses) == 2, "one loss point per optimizer step"
    saved = intern_env / "out" / "model"
    assert (saved / "config.json").exists() and (saved / "model.safetensors").exists()
    assert not (saved / "adapter_config.json").exists(), "LoRA is merged into a full model"


def test_injected_nan_is_caught_and_classified(intern_env, monkeypatch, smol_model):
    code, outcome, _, _ = run_job(intern_env, monkeypatch, smol_model, faults={"nan_above_lr": 1e-5}, max_steps=3)
    assert code == 1 and outcome["status"] == "failed"
    assert outcome["failure"]["kind"] == FailureKind.nan.value
    assert "loss is nan" in outcome["failure"]["message"]


def test_injected_oom_is_classified(intern_env, monkeypatch, smol_model):
    code, outcome, _, _ = run_job(intern_env, monkeypatch, smol_model, faults={"oom_above_batch": 1})
    assert code == 1 and outcome["failure"]["kind"] == FailureKind.oom.value


@pytest.mark.parametrize("text,kind", [
    ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB", FailureKind.oom),
    ("DivergenceError: training stopped early: loss is nan at step 3", FailureKind.nan),
    ("KeyError: 'completion'", FailureKind.bad_data),
    ("Segmentation fault", FailureKind.crash),
])
def test_failure_classification(text, kind):
    assert classify_text(text) == kind
    assert classify_text("", exit_code=-9) == FailureKind.oom


def test_sft_with_packing_trains(intern_env, monkeypatch, smol_model):
    code, outcome, run, client = run_job(intern_env, monkeypatch, smol_model, packing=True, max_steps=1)
    assert code == 0 and outcome["status"] == "succeeded", outcome
    assert run.data.params.get("packing") == "True"


@pytest.mark.parametrize("target_s,bound,expected", [(0.001, 200, 31), (1e6, 40, 40)], ids=["shorter", "longer"])
def test_a_paced_run_retimes_its_steps_and_its_learning_rate_decay(intern_env, monkeypatch, smol_model,
                                                                  target_s, bound, expected):
    """A run sized from a throughput estimate re-times itself after PACE_AT_STEP (30) steps: the steps that fit
    its target training time (within its bound), with the cosine decay ending there. On the H200 a 0.25 s/step
    estimate against 0.14 s measured ended a scale-up at half its budget (bench/RESULTS.md part 8a)."""
    code, outcome, run, client = run_job(
        intern_env, monkeypatch, smol_model, max_steps=35, per_device_batch_size=1, max_length=48,
        fidelity={"target_train_s": target_s, "max_steps_bound": bound})
    assert code == 0 and outcome["status"] == "succeeded", outcome
    assert outcome["steps"] == expected, "too short a target: stop just after re-timing; too long: run to the bound"
    lrs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "learning_rate")}
    assert lrs[expected] < 1e-6, "the cosine decay ends at the re-timed last step"
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    tail = losses[-max(3, math.ceil(len(losses) / 4)):]
    assert outcome["recent_loss"]["n"] == len(tail) >= 3
    assert outcome["recent_loss"]["value"] == pytest.approx(sum(tail) / len(tail), rel=1e-4), \
        "the loss estimate is the mean of the last quarter of the losses the run logged"
    assert lrs[20] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * 19 / bound)), rel=0.01), \
        "before re-timing, the cosine schedule of the bound (step k trains at the rate of step k - 1)"


def drive_callback(monkeypatch, fidelity, step_seconds, started_at: float = 0.0, job_started: float | None = None,
                   evaluate=None):
    """Run a FidelityCallback over steps on a controlled clock (training starts at `started_at`; step k
    takes `step_seconds(k)`) until it stops training; returns the callback, the last step and the clock."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    import mlintern.training.pruning as pruning

    clock = [0.0]
    monkeypatch.setattr(pruning.time, "time", lambda: clock[0])
    cb = pruning.FidelityCallback(fidelity, evaluate, 8, job_started=job_started)
    clock[0] = started_at
    state, control = SimpleNamespace(global_step=0, max_steps=fidelity.max_steps_bound), TrainerControl()
    cb.on_train_begin(None, state, control)
    while not control.should_training_stop:
        state.global_step += 1
        clock[0] += step_seconds(state.global_step)
        cb.on_step_end(None, state, control)
    return cb, state.global_step, clock[0]


def test_the_last_rung_is_the_final_score_on_the_whole_dev_set_scored_once(monkeypatch):
    """A trial's last rung decides nothing, so it is scored on the whole dev set and that score is final:
    no subset check before it (on one shared H200 a short trial's dev checks took longer than its training)."""
    from mlintern.schemas import EvalScore, Fidelity

    subsets: list[bool] = []

    def evaluate(subset: bool) -> EvalScore:
        subsets.append(subset)
        return EvalScore(task="dev", metric="score", value=0.5, stderr=0.03, n=100 if subset else 300)

    fidelity = Fidelity(rung_seconds=[1.0, 3.0], rung_dev_items=100, peers=[])
    cb, steps, _ = drive_callback(monkeypatch, fidelity, lambda k: 0.5, evaluate=evaluate)
    assert subsets == [True, False], "a subset check at the first rung, the whole dev set at the last, nothing else"
    assert [p.rung for p in cb.curve] == [0, 1] and cb.curve[-1].train_seconds >= 3.0
    assert cb.last_eval_step == steps and cb.last_score.n == 300, "the runner takes this as the final score"


def test_pacing_is_repeated_as_the_run_grows_so_slow_first_steps_do_not_end_it_early(monkeypatch):
    """4 x H100 (bench/RESULTS.md part 9): steps before step 30 ran 0.24-0.30 s against 0.19 s later, and
    single runs paced once, at step 30, stopped at 66% and 77% of their budget. The callback re-times
    itself each time the step count doubles, from the step time since the last re-timing."""
    from mlintern.schemas import Fidelity

    cb, steps, _ = drive_callback(monkeypatch, Fidelity(target_train_s=100.0, max_steps_bound=1000),
                                  lambda k: 0.3 if k <= 30 else 0.2)  # slow first steps, then the steady rate
    # 9 s for the first 30 steps, then (100 - 9) / 0.2 = 455 more: 485 steps fill the target
    assert 480 <= steps <= 487, steps
    assert cb.train_clock() == pytest.approx(100.0, abs=1.0), "the run trained for the time it was sized for"


def test_a_job_whose_other_parts_run_long_still_ends_within_its_limit(monkeypatch):
    """One H200 shared by four arms (bench/RESULTS.md part 9): a scale-up's load, data and save took 23 s
    against 6 s predicted, and the loop spent 118% of its budget. Training stops, and a paced run's decay
    ends, where what is left of the job's limit only covers its final check and save."""
    from mlintern.schemas import Fidelity

    fidelity = Fidelity(time_limit_s=60.0, target_train_s=55.0, max_steps_bound=1000, job_limit_s=70.0, tail_s=6.0)
    # load and data took 20 s, not the few seconds the plan assumed
    cb, steps, clock = drive_callback(monkeypatch, fidelity, lambda k: 0.2, started_at=20.0, job_started=0.0)
    assert clock <= 70.0 - 6.0 + 0.2, "the job's tail still fits in its limit"
    assert cb.paced_steps is not None and steps >= cb.paced_steps - 1, \
        "the paced decay was re-timed to end there, not cut off mid-decay"
    assert 215 <= steps <= 221, steps  # (70 - 6 - 20) / 0.2 = 220


def test_retiming_a_schedule_keeps_its_warmup_share_and_sets_the_next_rate_at_once():
    import torch
    from transformers.optimization import get_scheduler

    from mlintern.training.pruning import retime_schedule

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = get_scheduler("cosine", opt, num_warmup_steps=20, num_training_steps=200)
    for _ in range(30):
        opt.step()
        sched.step()
    assert retime_schedule(sched, 100)
    assert sched.lr_lambdas[0].keywords["num_warmup_steps"] == 10, "3% of the bound stays 3% of the re-timed run"
    expected = 1e-4 * 0.5 * (1 + math.cos(math.pi * (30 - 10) / (100 - 10)))
    assert opt.param_groups[0]["lr"] == pytest.approx(expected) and sched.get_last_lr()[0] == pytest.approx(expected)
    for _ in range(70):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12), "the decay ends at the re-timed step count"
    constant = get_scheduler("constant_with_warmup", opt, num_warmup_steps=5)
    assert retime_schedule(constant, 50), "a schedule with no end is left as it is"


def test_a_large_training_set_is_tokenized_by_several_processes_into_the_same_rows(intern_env, monkeypatch,
                                                                                   smol_model):
    """trl's dataset preparation (chat template + tokenization of every row) ran in one process: 65-121 s
    of 142-221 s scale-up jobs on 2 x H200, the GPU idle (bench/RESULTS.md part 12). A large set now gets
    several processes, a small one none (their start costs more than they save), and the rows the
    trainer sees are the same either way."""
    from mlintern.training.common import ROWS_PER_PROC, dataset_procs
    from mlintern.training.loading import load_for_training
    from mlintern.training.sft import build_sft_trainer

    assert dataset_procs(ROWS_PER_PROC - 1) is None
    assert dataset_procs(40 * ROWS_PER_PROC) >= 2
    model, tok = load_for_training(smol_model)
    plan = ExperimentPlan(hyperparameters={"max_steps": 2, "per_device_batch_size": 2, "max_length": 64})
    built = {}
    for procs in ("1", "2"):
        monkeypatch.setenv("INTERN_DATASET_PROCS", procs)
        job = TrainJob(plan=plan, model_path=smol_model, data_path=sft_rows(intern_env / f"rows{procs}.jsonl", n=600),
                       output_dir=str(intern_env / f"out{procs}"), device="cpu")
        trainer = build_sft_trainer(job, [], model, tok)
        assert trainer.args.dataset_num_proc == (None if procs == "1" else 2)
        built[procs] = trainer.train_dataset.to_list()
    assert built["1"] == built["2"] and len(built["1"]) == 600


def test_lazily_tokenized_rows_are_the_eagerly_tokenized_ones(intern_env, monkeypatch, smol_model):
    """A large set on a GPU is tokenized as training reads it (a provisional scale-up's eager build of
    132,000 rows held the GPU idle 15 s, bench/RESULTS.md part 18): the trainer sees the same rows, in
    a shuffled order, prepared by its DataLoader's processes."""
    from mlintern.training.loading import load_for_training
    from mlintern.settings import get_settings
    from mlintern.training.sft import LAZY_LOADERS, LAZY_MIN_ROWS, build_sft_trainer, tokenize_lazily

    assert not tokenize_lazily(LAZY_MIN_ROWS - 1, "cpu") and not tokenize_lazily(10 * LAZY_MIN_ROWS, "cpu")
    with monkeypatch.context() as on_a_gpu:  # what this CPU machine cannot show: the rule on a GPU
        on_a_gpu.setattr("mlintern.training.sft.resolve_device", lambda device: "cuda")
        assert not tokenize_lazily(LAZY_MIN_ROWS - 1, "auto") and tokenize_lazily(LAZY_MIN_ROWS, "auto")
    model, tok = load_for_training(smol_model)
    plan = ExperimentPlan(hyperparameters={"max_steps": 2, "per_device_batch_size": 2, "max_length": 64})
    data = sft_rows(intern_env / "rows.jsonl", n=300)
    built = {}
    for forced in ("0", "1"):
        monkeypatch.setenv("INTERN_LAZY_TOKENIZE", forced)
        get_settings.cache_clear()
        job = TrainJob(plan=plan, model_path=smol_model, data_path=data, output_dir=str(intern_env / f"out{forced}"),
                       device="cpu")
        trainer = build_sft_trainer(job, [], model, tok)
        assert trainer.args.dataloader_num_workers == (LAZY_LOADERS if forced == "1" else 0)
        built[forced] = [(r["input_ids"], r["labels"]) for r in trainer.train_dataset]
    assert len(built["1"]) == 300 and sorted(built["1"]) == sorted(built["0"])
    assert built["1"] != built["0"], "read in a shuffled order, not the file's"


def test_a_lazily_tokenized_packed_run_trains_past_the_end_of_its_rows(intern_env, monkeypatch, smol_model):
    """An iterable training set has no length: the run must still train its steps when they need more
    rows than there are (a second pass), through the DataLoader's processes."""
    from mlintern.settings import get_settings

    monkeypatch.setenv("INTERN_LAZY_TOKENIZE", "1")
    get_settings.cache_clear()
    code, outcome, run, client = run_job(intern_env, monkeypatch, smol_model, packing=True, max_steps=6)
    assert code == 0 and outcome["status"] == "succeeded", outcome
    assert outcome["steps"] == 6, outcome

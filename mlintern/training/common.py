"""Settings shared by every trl trainer."""

from __future__ import annotations

import importlib.util
import os

from mlintern.schemas import Hyperparameters
from mlintern.training.job import TrainJob


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but no CUDA device is visible (check CUDA_VISIBLE_DEVICES)")
    return device


def base_args(job: TrainJob) -> dict:
    """TrainingArguments common to SFT, DPO and GRPO."""
    hp = job.plan.hyperparameters
    on_gpu = resolve_device(job.device) == "cuda"
    return dict(
        output_dir=job.output_dir,
        max_steps=job.fidelity.max_steps_bound or hp.max_steps,  # a paced run re-times below its bound
        per_device_train_batch_size=hp.per_device_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        warmup_steps=hp.warmup_ratio,  # a float < 1 is a ratio of max_steps in transformers 5
        weight_decay=hp.weight_decay,
        lr_scheduler_type=hp.lr_scheduler,
        # every step for short runs (tests read one loss per step), ~200 points for long ones
        logging_steps=max(1, hp.max_steps // 200),
        save_strategy="no",
        report_to=["mlflow"],
        run_name=job.plan.plan_id(),
        seed=job.seed,
        data_seed=job.seed,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
        gradient_checkpointing=False,  # trl's default (True) costs 2.6x throughput (bench/RESULTS.md)
        use_liger_kernel=on_gpu and importlib.util.find_spec("liger_kernel") is not None,
        disable_tqdm=True,
        logging_nan_inf_filter=False,  # the default hides NaN losses from our DivergenceGuard
    )


ROWS_PER_PROC = 2000  # below this a tokenizing process costs more to start than it saves


def dataset_procs(rows: int) -> int | None:
    """Processes for trl's dataset preparation (chat template + tokenization of every row, before the
    first step, the GPU idle meanwhile): one process took 65-121 s of 142-221 s scale-up jobs on 2 x H200
    (bench/RESULTS.md part 12). A quarter of the host's CPUs (several GPU workers share them), at most 16,
    and none for a small set. INTERN_DATASET_PROCS overrides it (1: one process)."""
    if os.environ.get("INTERN_DATASET_PROCS"):
        procs = int(os.environ["INTERN_DATASET_PROCS"])
    else:
        procs = min(16, max(2, len(os.sched_getaffinity(0)) // 4), rows // ROWS_PER_PROC)
    return procs if procs >= 2 else None


def lora_config(hp: Hyperparameters):
    if not hp.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=hp.lora.r, lora_alpha=hp.lora.alpha, lora_dropout=0.0,
        target_modules="all-linear", task_type="CAUSAL_LM",
    )


def load_jsonl(path: str):
    from datasets import load_dataset

    return load_dataset("json", data_files=path, split="train")

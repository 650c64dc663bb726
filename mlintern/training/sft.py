"""Supervised fine-tuning with trl's SFTTrainer (full or LoRA)."""

from __future__ import annotations

from mlintern.training.common import base_args, load_jsonl, lora_config, resolve_device
from mlintern.training.job import TrainJob


def build_sft_trainer(job: TrainJob, callbacks: list):
    from trl import SFTConfig, SFTTrainer

    hp = job.plan.hyperparameters
    extra = {}
    if hp.packing:
        # padding-free packing; on GPU with flex attention (packing with sdpa attends across the
        # whole packed row and was slower, bench/RESULTS.md)
        extra["packing"] = True
        if resolve_device(job.device) == "cuda":
            extra["model_init_kwargs"] = {"attn_implementation": "flex_attention"}
    args = SFTConfig(
        **base_args(job),
        max_length=hp.max_length,
        completion_only_loss=True,
        **extra,
    )
    return SFTTrainer(
        model=job.model_path,
        args=args,
        train_dataset=load_jsonl(job.data_path),
        peft_config=lora_config(hp),
        callbacks=callbacks,
    )

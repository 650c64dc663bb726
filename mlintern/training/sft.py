"""Supervised fine-tuning with trl's SFTTrainer (full or LoRA)."""

from __future__ import annotations

from mlintern.training.common import base_args, load_jsonl, lora_config
from mlintern.training.job import TrainJob


def build_sft_trainer(job: TrainJob, callbacks: list):
    from trl import SFTConfig, SFTTrainer

    hp = job.plan.hyperparameters
    args = SFTConfig(
        **base_args(job),
        max_length=hp.max_length,
        completion_only_loss=True,
    )
    return SFTTrainer(
        model=job.model_path,
        args=args,
        train_dataset=load_jsonl(job.data_path),
        peft_config=lora_config(hp),
        callbacks=callbacks,
    )

"""Supervised fine-tuning with trl's SFTTrainer (full or LoRA)."""

from __future__ import annotations

from mlintern.training.common import base_args, dataset_procs, load_jsonl, lora_config, resolve_device
from mlintern.training.job import TrainJob


def attn_implementation(job: TrainJob) -> str | None:
    return attn_for(job.plan.hyperparameters.packing, job.device)


def attn_for(packing: bool, device: str) -> str | None:
    """Padding-free packing runs with flex attention on a GPU (packing with sdpa attends across the
    whole packed row and was slower, bench/RESULTS.md); everything else keeps the default."""
    if packing and resolve_device(device) == "cuda":
        return "flex_attention"
    return None


def build_sft_trainer(job: TrainJob, callbacks: list, model, tokenizer):
    from trl import SFTConfig, SFTTrainer

    hp = job.plan.hyperparameters
    extra = {"packing": True} if hp.packing else {}
    rows = load_jsonl(job.data_path)
    args = SFTConfig(
        **base_args(job),
        max_length=hp.max_length,
        completion_only_loss=True,
        dataset_num_proc=dataset_procs(len(rows)),
        **extra,
    )
    return SFTTrainer(
        model=model,
        processing_class=tokenizer,
        args=args,
        train_dataset=rows,
        peft_config=lora_config(hp),
        callbacks=callbacks,
    )

"""Supervised fine-tuning with trl's SFTTrainer (full or LoRA)."""

from __future__ import annotations

from mlintern.settings import get_settings
from mlintern.training.common import base_args, dataset_procs, load_jsonl, lora_config, resolve_device
from mlintern.training.job import TrainJob

LAZY_MIN_ROWS = 8000  # below this the whole set tokenizes in about a second before the first step
LAZY_LOADERS = 2  # DataLoader processes tokenizing ahead of the GPU (an H200 step of SmolLM2 needs ~400 rows/s)


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
    lazy = tokenize_lazily(len(rows), job.device)
    loader = {"dataloader_num_workers": LAZY_LOADERS} if lazy else {}
    args = SFTConfig(
        **base_args(job) | loader,
        max_length=hp.max_length,
        completion_only_loss=True,
        dataset_num_proc=None if lazy else dataset_procs(len(rows)),
        **extra,
    )
    if lazy:
        # the rows in a fixed random order (an iterable is read in order), in shards that the DataLoader's
        # processes tokenize (and pack) as training reads them
        rows = rows.shuffle(seed=job.seed).to_iterable_dataset(num_shards=min(len(rows), 4 * LAZY_LOADERS))
    return SFTTrainer(
        model=model,
        processing_class=tokenizer,
        args=args,
        train_dataset=rows,
        peft_config=lora_config(hp),
        callbacks=callbacks,
    )


def tokenize_lazily(rows: int, device: str) -> bool:
    """Whether trl tokenizes the rows as training reads them (an iterable dataset, prepared lazily) instead
    of all of them before the first step: for a large set on a GPU. The eager build grows with the rows
    (100,000 asked: 21.9 s eager, 1.9 s lazy on one H200), and the GPU waits for it on a loop's first job,
    on a job dispatched to a free GPU, and on a job built behind one that ends early (a pruned trial: 15 s
    in bench/RESULTS.md part 18). Lazily, the DataLoader's processes tokenize during training, at 1.03x
    eager's steps per second (part 20: eager, lazy, lazy, eager in one process). INTERN_LAZY_TOKENIZE=1/0
    forces it."""
    forced = get_settings().lazy_tokenize
    if forced is not None:
        return forced
    return rows >= LAZY_MIN_ROWS and resolve_device(device) == "cuda"

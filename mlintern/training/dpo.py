"""Direct preference optimisation with trl's DPOTrainer (full or LoRA).

Rows are conversational preference pairs: {"prompt": [user msg], "chosen": [assistant msg],
"rejected": [assistant msg]}. With LoRA the reference model is the policy with its adapter
disabled (no second copy in memory); with full fine-tuning trl makes a frozen reference copy
of the starting model.
"""

from __future__ import annotations

from mlintern.training.common import base_args, dataset_procs, load_jsonl, lora_config
from mlintern.training.job import TrainJob


def build_dpo_trainer(job: TrainJob, callbacks: list, model, tokenizer):
    from trl import DPOConfig, DPOTrainer

    hp = job.plan.hyperparameters
    rows = load_jsonl(job.data_path)
    args = DPOConfig(
        **base_args(job),
        beta=hp.dpo.beta,
        max_length=hp.max_length,
        dataset_num_proc=dataset_procs(len(rows)),
    )
    return DPOTrainer(
        model=model,
        processing_class=tokenizer,
        args=args,
        train_dataset=rows,
        peft_config=lora_config(hp),
        callbacks=callbacks,
    )

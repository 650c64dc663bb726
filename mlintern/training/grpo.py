"""Group relative policy optimisation with trl's GRPOTrainer (full or LoRA), rewarded by the
benchmark's own scorer (see rewards.py).

Batch arithmetic in trl 1.16: per_device_train_batch_size counts completions, not prompts.
One generation batch of per_device_train_batch_size * num_processes * gradient_accumulation_steps
completions (= that / num_generations prompts) is sampled per optimizer step, so that product
must be a multiple of num_generations; ExperimentPlan validates it for one process, and more
processes keep it a multiple. Generation runs through transformers' generate (no vLLM), so CPU
works. With LoRA and beta > 0 the reference is the adapter-disabled policy; with full
fine-tuning and beta > 0 trl loads a reference copy; beta = 0 needs no reference at all.
"""

from __future__ import annotations

from mlintern.training.common import base_args, load_jsonl, lora_config
from mlintern.training.job import TrainJob
from mlintern.training.rewards import reward_setup


def build_grpo_trainer(job: TrainJob, callbacks: list, model, tokenizer):
    from trl import GRPOConfig, GRPOTrainer

    hp = job.plan.hyperparameters
    reward_funcs, reward_weights = reward_setup()
    if job.plan.reward_code:
        from mlintern.training.rewards import sandboxed_reward

        reward_funcs = [*reward_funcs, sandboxed_reward(job.plan.reward_code)]
        reward_weights = [*reward_weights, 0.5]
    args = GRPOConfig(
        **base_args(job),
        num_generations=hp.grpo.num_generations,
        max_completion_length=hp.grpo.max_completion_length,
        beta=hp.grpo.beta,
        reward_weights=reward_weights,
        use_vllm=False,
        remove_unused_columns=False,  # the reward functions read answer, rg_task, ... columns
    )
    return GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        args=args,
        train_dataset=load_jsonl(job.data_path),
        reward_funcs=reward_funcs,
        peft_config=lora_config(hp),
        callbacks=callbacks,
    )

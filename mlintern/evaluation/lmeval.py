"""Score a model on an lm-eval task with `simple_evaluate`: from a saved folder, or from a model
already in memory (the training worker scores its rungs and final dev set without reloading)."""

from __future__ import annotations

import contextlib
import logging
import math

from pydantic import BaseModel

from mlintern.schemas import EvalScore

log = logging.getLogger(__name__)


class EvalSpec(BaseModel):
    """What to score a model on: one lm-eval task of a prepared benchmark."""

    task: str
    metric: str
    include_path: str | None = None
    apply_chat_template: bool = True
    batch_size: int = 16
    limit: int | None = None  # score only the first N items (rung checks)


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_batch_size(device: str, configured: int) -> int:
    """Scoring is generation-bound: a GPU takes far larger batches than the CPU default."""
    return max(configured, 64) if _device(device).startswith("cuda") else configured


def _task_manager(include_path: str | None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=False) if include_path else TaskManager()


def _score(results: dict, task: str, metric: str) -> EvalScore:
    task_results = results["results"][task]
    key = next((k for k in task_results if k.split(",")[0] == metric and "stderr" not in k), None)
    if key is None:
        raise KeyError(f"lm-eval task {task} reported no metric {metric!r}; it has {sorted(task_results)}")
    filt = key.split(",", 1)[1] if "," in key else "none"
    stderr = task_results.get(f"{metric}_stderr,{filt}")
    n = int(results.get("n-samples", {}).get(task, {}).get("effective", 0))
    value = float(task_results[key])
    if not isinstance(stderr, (int, float)) or math.isnan(stderr):
        # Bernoulli-style fallback so noise-aware selection always has a width to use
        stderr = math.sqrt(max(value * (1 - value), 1e-9) / max(n, 1)) if n else None
    return EvalScore(task=task, metric=metric, value=value, stderr=stderr, n=n)


def evaluate_model(
    model_path: str,
    task: str,
    metric: str,
    include_path: str | None = None,
    *,
    device: str = "auto",
    batch_size: int = 16,
    apply_chat_template: bool = True,
    limit: int | None = None,
    seed: int = 0,
    log_samples: bool = False,
) -> tuple[EvalScore, dict]:
    """Evaluate the saved model at `model_path` on lm-eval `task`; returns the score and lm-eval's raw results."""
    from lm_eval import simple_evaluate

    dev = _device(device)
    dtype = "bfloat16" if dev.startswith("cuda") else "float32"
    results = simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_path},dtype={dtype}",
        tasks=[task],
        task_manager=_task_manager(include_path),
        device=dev,
        batch_size=batch_size,
        apply_chat_template=apply_chat_template,
        limit=limit,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        log_samples=log_samples,
        bootstrap_iters=0 if metric == "score" else 100,
    )
    return _score(results, task, metric), results


def evaluate_loaded(model, tokenizer, spec: EvalSpec, *, seed: int = 0) -> EvalScore:
    """Score a model object in memory (a training model between steps, or a cached one).

    Puts the model in eval mode for the call and restores train mode after; a PEFT model is scored
    through its base model with the adapters active. On CUDA, generation runs under bf16 autocast
    (training keeps fp32 master weights)."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    net = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training = net.training
    padding_side = getattr(tokenizer, "padding_side", None)
    device = next(net.parameters()).device
    net.eval()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    try:
        lm = HFLM(pretrained=net, tokenizer=tokenizer, batch_size=spec.batch_size, device=str(device))
        with autocast:
            results = simple_evaluate(
                model=lm, tasks=[spec.task], task_manager=_task_manager(spec.include_path),
                apply_chat_template=spec.apply_chat_template, limit=spec.limit, random_seed=seed, numpy_random_seed=seed,
                torch_random_seed=seed, fewshot_random_seed=seed,
                bootstrap_iters=0 if spec.metric == "score" else 100,
            )
    finally:
        if was_training:
            net.train()
        if padding_side is not None:
            tokenizer.padding_side = padding_side
    return _score(results, spec.task, spec.metric)

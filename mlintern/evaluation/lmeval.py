"""Score a model on an lm-eval task with `simple_evaluate`."""

from __future__ import annotations

import logging
import math

from mlintern.schemas import EvalScore

log = logging.getLogger(__name__)


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
    """Evaluate `model_path` on lm-eval `task`; returns the score and lm-eval's raw results."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    dev = _device(device)
    task_manager = (
        TaskManager(include_path=include_path, include_defaults=False) if include_path else TaskManager()
    )
    dtype = "bfloat16" if dev.startswith("cuda") else "float32"
    results = simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_path},dtype={dtype}",
        tasks=[task],
        task_manager=task_manager,
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
    return EvalScore(task=task, metric=metric, value=value, stderr=stderr, n=n), results

from __future__ import annotations

import json
import logging
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlintern.benchmarks import PreparedBenchmark
from mlintern.budget import default_batch_sizes, model_params, prior_throughput, rung_seconds, sizing, tokens_per_example
from mlintern.schemas import Goal, Hyperparameters
from mlintern.settings import get_settings

log = logging.getLogger(__name__)


def on_accelerator(goal: Goal) -> bool:
    """Whether experiments train on a GPU: the goal says so, or they are dispatched to GPU workers, or
    this host has one."""
    if goal.device != "auto":
        return goal.device == "cuda"
    if get_settings().experiment_deployment:
        return True
    import torch

    return torch.cuda.is_available()


def loop_lanes(goal: Goal) -> int:
    """Experiments the loop runs at once: goal.parallel_experiments where an experiment deployment
    dispatches them to GPU workers, else one (embedded)."""
    return goal.parallel_experiments if get_settings().experiment_deployment is not None else 1


def hub_params(model_id: str) -> float | None:
    """Parameter count from a hub model's config.json (online; one small file)."""
    try:
        from huggingface_hub import hf_hub_download

        cfg = Path(hf_hub_download(model_id, "config.json"))
    except Exception as exc:  # offline, gated, unknown: a conservative default is used
        log.warning("could not read %s's config for the throughput prior (%s); assuming 1.5B parameters",
                    model_id, type(exc).__name__)
        return None
    return model_params(str(cfg.parent))


@task(name="budget-facts", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, timeout_seconds=120)
def budget_facts(goal: Goal, base_model: str, bench: PreparedBenchmark) -> dict:
    """The throughput prior (model size, device, example length) and the exploration rungs, fixed for
    the goal so that every trial is checked at the same training times."""
    on_gpu = on_accelerator(goal)
    params = model_params(base_model) if Path(base_model).exists() else (hub_params(base_model) or 1.5e9)
    prior = prior_throughput(params, on_gpu, tokens_per_example(bench.dev_file))
    batches = goal.search_space.batch_sizes or default_batch_sizes(on_gpu)
    default = Hyperparameters().per_device_batch_size
    rungs = rung_seconds(goal, sizing(goal, 0.0, prior, on_gpu), default if default in batches else batches[0],
                         loop_lanes(goal))
    log.info("throughput prior for %.0fM parameters on %s: %s", params / 1e6, "GPU" if on_gpu else "CPU",
             json.dumps(prior.model_dump()))
    return {"prior": prior, "on_gpu": on_gpu, "rungs": rungs}

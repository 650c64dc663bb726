from __future__ import annotations

import time

from prefect import task

from mlintern.benchmarks import PreparedBenchmark
from mlintern.evaluation import evaluate_model
from mlintern.evaluation.lmeval import EvalSpec, default_batch_size
from mlintern.schemas import EvalScore
from mlintern.settings import get_settings


def eval_spec(bench: PreparedBenchmark, split: str, device: str = "auto") -> EvalSpec:
    """The lm-eval task of one split (dev, confirm or test) of a prepared benchmark."""
    return EvalSpec(task=bench.task_for(split), metric=bench.metric, include_path=bench.include_path,
                    apply_chat_template=bench.spec.apply_chat_template,
                    batch_size=default_batch_size(device, get_settings().eval_batch_size))


@task(name="evaluate", retries=1, retry_delay_seconds=5, timeout_seconds=4 * 3600)
def evaluate(model_path: str, bench: PreparedBenchmark, split: str, device: str = "auto") -> EvalScore:
    """lm-eval on the benchmark's dev, confirmation or held-out test task, on this device's persistent
    worker (the fresh path: in this process). Retried once: a transient failure (a busy GPU, a flaky
    data read) should not cost an experiment."""
    from mlintern.tasks.train import gpu_slot, use_worker

    spec = eval_spec(bench, split, device)
    if not use_worker():
        score, _ = evaluate_model(model_path, spec.task, spec.metric, spec.include_path, device=device,
                                  batch_size=spec.batch_size, apply_chat_template=spec.apply_chat_template)
        return score
    from mlintern.worker.client import submit
    from mlintern.worker.protocol import EvalJob, WorkerRequest

    reply = submit(WorkerRequest(kind="eval", eval=EvalJob(model_path=model_path, spec=spec, device=device)),
                   timeout_s=4 * 3600, gpu=gpu_slot)  # on a GPU's worker, never beside a training job
    if not reply.ok:
        raise RuntimeError(f"evaluating {model_path} on {spec.task} failed in the training worker: {reply.error}")
    return reply.score


def timed_evaluate(model_path: str, bench: PreparedBenchmark, split: str, device: str = "auto") -> tuple[EvalScore, float]:
    """`evaluate`, and the seconds it held the accelerator (the controller's confirmation checks are budgeted)."""
    start = time.time()
    score = evaluate(model_path, bench, split, device)
    return score, time.time() - start

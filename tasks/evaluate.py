from __future__ import annotations

from prefect import task

from mlintern.benchmarks import PreparedBenchmark
from mlintern.evaluation import evaluate_model
from mlintern.schemas import EvalScore
from mlintern.settings import get_settings


@task(name="evaluate", retries=1, retry_delay_seconds=5, timeout_seconds=4 * 3600)
def evaluate(model_path: str, bench: PreparedBenchmark, split: str, device: str = "auto") -> EvalScore:
    """lm-eval on the benchmark's dev, confirmation or held-out test task. Retried once: a transient
    failure (a busy GPU, a flaky data read) should not cost an experiment."""
    task_name = bench.task_for(split)
    score, _ = evaluate_model(
        model_path, task_name, bench.metric, bench.include_path, device=device,
        batch_size=get_settings().eval_batch_size, apply_chat_template=bench.spec.apply_chat_template,
    )
    return score

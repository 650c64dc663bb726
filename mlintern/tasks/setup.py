from __future__ import annotations

from prefect import task

from mlintern.benchmarks import PreparedBenchmark, prepare_benchmark
from mlintern.errors import retry_unless_goal_error
from mlintern.models import resolve_model
from mlintern.schemas import BenchmarkSpec
from mlintern.settings import get_settings


@task(name="prepare-benchmark", retries=2, retry_delay_seconds=10, timeout_seconds=1800,
      retry_condition_fn=retry_unless_goal_error)
def prepare(spec: BenchmarkSpec) -> PreparedBenchmark:
    """Materialise the dev and held-out test sets as lm-eval tasks (hub reads may be flaky and are
    retried; a task that does not exist is not)."""
    return prepare_benchmark(spec, get_settings().work_dir.resolve())


@task(name="resolve-model", retries=2, retry_delay_seconds=10, timeout_seconds=1800,
      retry_condition_fn=retry_unless_goal_error)
def resolve(base_model: str) -> str:
    settings = get_settings()
    return resolve_model(base_model, settings.work_dir.resolve(), settings.models_dir)

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlintern.benchmarks import PreparedBenchmark
from mlintern.data.build import BuiltDataset, build_training_data
from mlintern.data.lineage import log_lineage
from mlintern.llm import LLMClient
from mlintern.schemas import ExperimentPlan


@task(name="build-training-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10,
      timeout_seconds=3600)
def build_data(plan: ExperimentPlan, bench: PreparedBenchmark, work_dir: Path, mlflow_run_id: str,
               llm: LLMClient | None = None) -> BuiltDataset:
    """Source, reformat and decontaminate the plan's training data; log its lineage to the run.
    For a hub dataset without a column map, the LLM (if configured) proposes one, validated on
    sample rows before use. Retried: hub downloads are the flaky part."""
    built = build_training_data(plan.dataset, plan.method, bench, work_dir=work_dir, llm=llm)
    with mlflow.start_run(run_id=mlflow_run_id):
        log_lineage(built)
    return built

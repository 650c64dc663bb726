"""`prepare_benchmark`: a BenchmarkSpec made concrete by its kind's module. It sits above the kinds
(base.py imports none of them), so no lazy import is needed to pick one."""

from __future__ import annotations

from pathlib import Path

from mlintern.benchmarks import lmeval_tasks, rgym
from mlintern.benchmarks.base import PreparedBenchmark
from mlintern.schemas import BenchmarkSpec


def prepare_benchmark(spec: BenchmarkSpec, work_dir: Path) -> PreparedBenchmark:
    if spec.kind == "reasoning_gym":
        return rgym.prepare(spec, work_dir)
    return lmeval_tasks.prepare(spec, work_dir)

"""Benchmarks: materialise dev and held-out test sets as lm-eval tasks, plus a training source."""

from mlintern.benchmarks.base import PreparedBenchmark
from mlintern.benchmarks.prepare import prepare_benchmark

__all__ = ["PreparedBenchmark", "prepare_benchmark"]

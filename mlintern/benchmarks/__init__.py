"""Benchmarks: materialise dev and held-out test sets as lm-eval tasks, plus a training source."""

from mlintern.benchmarks.base import PreparedBenchmark, prepare_benchmark

__all__ = ["PreparedBenchmark", "prepare_benchmark"]

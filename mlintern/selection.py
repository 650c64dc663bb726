"""Honest selection: promote a candidate only when it beats the champion beyond eval noise."""

from __future__ import annotations

import math

from mlintern.schemas import EvalScore, LossTail


def noise_margin(candidate: EvalScore | LossTail, champion: EvalScore | LossTail, z: float) -> float:
    """z combined standard errors of two estimates (scores, or losses)."""
    se_c = candidate.stderr or 0.0
    se_h = champion.stderr or 0.0
    return z * math.sqrt(se_c**2 + se_h**2)


def pooled(a: EvalScore, b: EvalScore) -> EvalScore:
    """One score over two disjoint item sets (e.g. dev and the confirmation set)."""
    n = max(a.n + b.n, 1)
    value = (a.value * a.n + b.value * b.n) / n
    stderr = math.sqrt(((a.stderr or 0.0) * a.n) ** 2 + ((b.stderr or 0.0) * b.n) ** 2) / n
    return EvalScore(task=f"{a.task}+{b.task}", metric=a.metric, value=value, stderr=stderr, n=a.n + b.n)


def beats(candidate: EvalScore, champion: EvalScore, z: float) -> bool:
    """True when candidate - champion > z * combined standard error (and strictly positive)."""
    delta = candidate.value - champion.value
    return delta > 0 and delta > noise_margin(candidate, champion, z)

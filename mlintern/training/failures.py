"""Classify a failed training job from its exception and log tail."""

from __future__ import annotations

import re

from mlintern.schemas import Failure, FailureKind

_PATTERNS: list[tuple[FailureKind, re.Pattern]] = [
    (FailureKind.disk_full, re.compile(r"No space left on device|ENOSPC|Disk quota exceeded", re.I)),
    (FailureKind.oom, re.compile(r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|std::bad_alloc|Killed", re.I)),
    (FailureKind.nan, re.compile(r"\bnan\b|\binf\b|diverged|DivergenceError", re.I)),
    (FailureKind.bad_data, re.compile(r"KeyError|column|DatasetGenerationError|ArrowInvalid|JSONDecodeError|"
                                      r"empty dataset|num_samples=0|UnicodeDecodeError|bad data", re.I)),
    (FailureKind.timeout, re.compile(r"timed out|TimeoutExpired|timeout", re.I)),
]


def classify_text(text: str, *, exit_code: int | None = None) -> FailureKind:
    if exit_code in (-9, 137):  # SIGKILL: the kernel's OOM killer, most often
        return FailureKind.oom
    head = text[-4000:]
    for kind, pattern in _PATTERNS:
        if pattern.search(head):
            return kind
    return FailureKind.crash


def classify(exc: BaseException | None, log_tail: str, *, exit_code: int | None = None) -> Failure:
    kind = FailureKind.oom if exc is not None and "OutOfMemory" in type(exc).__name__ else None
    if kind is None and exc is not None and type(exc).__name__ == "DivergenceError":
        kind = FailureKind.nan
    if kind is None:
        kind = classify_text(f"{type(exc).__name__}: {exc}" if exc else log_tail, exit_code=exit_code)
        if kind == FailureKind.crash and exc is not None:
            kind = classify_text(log_tail, exit_code=exit_code)
    message = f"{type(exc).__name__}: {exc}" if exc else (log_tail.strip().splitlines() or ["no output"])[-1]
    return Failure(kind=kind, message=message[:2000], log_tail=log_tail[-4000:])

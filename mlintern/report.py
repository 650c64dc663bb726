from __future__ import annotations

from mlintern.prompts import render
from mlintern.schemas import EvalScore, LoopReport


def fmt(score: EvalScore | None) -> str:
    if score is None:
        return "-"
    if score.stderr is None:
        return f"{score.value:.4f}"
    return f"{score.value:.4f} ± {score.stderr:.4f}"


def render_report(report: LoopReport) -> str:
    return render("report.md", r=report, fmt=fmt)

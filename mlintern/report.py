from __future__ import annotations

import logging

from mlintern.prompts import render
from mlintern.retention import DiskUsage, disk_usage, human
from mlintern.schemas import EvalScore, LoopReport

log = logging.getLogger(__name__)


def fmt(score: EvalScore | None) -> str:
    if score is None:
        return "-"
    if score.stderr is None:
        return f"{score.value:.4f}"
    return f"{score.value:.4f} ± {score.stderr:.4f}"


def measure_disk(report: LoopReport) -> DiskUsage | None:
    try:
        return disk_usage(report.goal, report.experiments)
    except Exception as exc:  # noqa: BLE001 - a report without the disk line beats no report
        log.warning("disk usage not measured: %s", exc)
        return None


def render_report(report: LoopReport, disk: DiskUsage | None = None) -> str:
    """Markdown report. Template variables: r (the LoopReport), fmt (a score), number (plan id ->
    its row number), disk (DiskUsage or None), human (bytes -> text)."""
    number = {e.plan_id: i for i, e in enumerate(report.experiments, start=1)}
    return render("report.md", r=report, fmt=fmt, number=number, human=human,
                  disk=disk if disk is not None else measure_disk(report))

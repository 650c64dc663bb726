"""The progress chart: dev score of every experiment against cumulative accelerator time."""

from __future__ import annotations

import base64
import io

from mlintern.schemas import EvalScore, ExperimentResult

STAGE_STYLE = {  # marker, colour
    "explore": ("o", "#4C72B0"), "scale_up": ("D", "#C44E52"), "single": ("s", "#55A868"),
    "search": ("^", "#8172B3"), "retry": ("x", "#937860"),
}


def progress_png(history: list[ExperimentResult], baseline: EvalScore, budget_s: float, title: str) -> bytes:
    """A PNG: each experiment's dev score (pruned trials hollow, at their last rung) at the cumulative
    accelerator-seconds when it finished, the best finished score so far as a step line, the base
    model's dev score and the budget as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    used = 0.0
    best_x, best_y = [0.0], [baseline.value]
    labels: set[str] = set()
    for r in history:
        used += r.accelerator_hours * 3600
        if r.dev is None:  # failed
            ax.plot([used], [baseline.value], "x", color="grey", alpha=0.6)
            continue
        marker, colour = STAGE_STYLE.get(r.plan.stage, ("o", "black"))
        label = r.plan.stage + (" (pruned)" if r.status == "pruned" else "")
        ax.plot([used], [r.dev.value], marker, color=colour, markersize=7,
                markerfacecolor="none" if r.status == "pruned" else colour, label=None if label in labels else label)
        labels.add(label)
        if r.status == "succeeded" and r.confirmed is not False and r.dev.value > best_y[-1]:
            best_x.append(used)
            best_y.append(r.dev.value)
    best_x.append(max(used, budget_s))
    best_y.append(best_y[-1])
    ax.step(best_x, best_y, where="post", color="black", linewidth=1.2, label="best dev so far")
    ax.axhline(baseline.value, color="grey", linestyle=":", linewidth=1, label="base model")
    ax.axvline(budget_s, color="grey", linestyle="--", linewidth=1, label="budget")
    ax.set_xlabel("cumulative accelerator seconds")
    ax.set_ylabel(f"dev {baseline.metric}")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(budget_s, used) * 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str = "progress") -> str:
    """The PNG inline (a data URI), so a Prefect markdown artifact shows it without a file server."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"

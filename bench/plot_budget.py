"""Held-out test score against accounted accelerator budget, per arm, one panel per benchmark goal,
from bench/budget_arms.py results.

  python bench/plot_budget.py bench/results/2026-11-27-h200x4/arms_*.json --out bench/budget_quality.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

LABELS = {"a": "(a) one default run", "b": "(b) Optuna TPE", "c": "(c) the loop"}
STYLE = {"a": ("s-", "#55A868"), "b": ("^-", "#8172B3"), "c": ("o-", "#C44E52")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="SmolLM2-135M on basic_arithmetic, 2 x H200, through the real flow")
    args = ap.parse_args()
    # goal -> arm -> budget -> held-out scores; a run's goal is its name before "-<arm>-b<budget>-s<seed>"
    points: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    base: dict[str, float] = {}
    for f in args.results:
        for r in json.loads(Path(f).read_text())["results"]:
            if r.get("final_test") is None:
                continue
            goal = r["name"].rsplit(f"-{r['arm']}-b", 1)[0]
            points[goal][r["arm"]][r["budget_s"]].append(r["final_test"])
            base[goal] = r["base_test"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    goals = sorted(points)
    fig, axes = plt.subplots(1, len(goals), figsize=(5.0 * len(goals), 4.0), dpi=110, squeeze=False)
    for ax, goal in zip(axes[0], goals):
        panel(ax, goal, points[goal], base.get(goal))
    fig.suptitle(args.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}: " + "; ".join(f"{g}: " + ", ".join(f"{a}: {dict(points[g][a])}" for a in sorted(points[g]))
                                         for g in goals))


def panel(ax, goal: str, points: dict[str, dict[int, list[float]]], base: float | None) -> None:
    for arm in sorted(points):
        budgets = sorted(points[arm])
        means = [sum(points[arm][b]) / len(points[arm][b]) for b in budgets]
        marker, colour = STYLE.get(arm, ("o-", "black"))
        ax.plot(budgets, means, marker, color=colour, label=LABELS.get(arm, arm))
        for b in budgets:
            ax.plot([b] * len(points[arm][b]), points[arm][b], marker[0], color=colour, alpha=0.35)
    if base is not None:
        ax.axhline(base, color="grey", linestyle=":", label="base model")
    ax.set_xlabel("accounted accelerator budget (s)")
    ax.set_ylabel("held-out test score (500 items)")
    top = max(v for arm in points.values() for vals in arm.values() for v in vals)
    ax.set_ylim(0, 1.02 if top > 0.3 else top * 1.3 + 0.01)
    ax.set_title(goal, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if top > 0.3 else "upper left")


if __name__ == "__main__":
    main()

"""Held-out test score against accounted accelerator budget, per arm, from bench/budget_arms.py results.

  python bench/plot_budget.py bench/results/2026-11-27-h200x2/arms_*.json --out bench/budget_quality.png
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
    points: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    base = None
    for f in args.results:
        for r in json.loads(Path(f).read_text())["results"]:
            if r.get("final_test") is None:
                continue
            points[r["arm"]][r["budget_s"]].append(r["final_test"])
            base = r["base_test"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.0), dpi=110)
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
    ax.set_ylim(0, 1.02)
    ax.set_title(args.title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{a}: {dict(points[a])}" for a in sorted(points)))


if __name__ == "__main__":
    main()

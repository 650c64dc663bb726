"""`ml-intern` command line: run the research loop, print or validate a goal, free disk space."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from mlintern.settings import apply_env_defaults

if TYPE_CHECKING:
    from mlintern.schemas import Goal

app = typer.Typer(add_completion=False, help="ml-intern: an autonomous post-training research agent.")
console = Console(stderr=True)


def load_goal(goal_file: Optional[Path], overrides: dict) -> "Goal":
    from mlintern.schemas import Goal

    data = json.loads(goal_file.read_text()) if goal_file else {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return Goal.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        console.print("[red]Invalid goal; nothing was run:[/red]\n" + "\n".join(lines))
        raise typer.Exit(2)


@app.command()
def run(
    goal_file: Optional[Path] = typer.Option(None, "--goal", help="Goal JSON file (see `ml-intern goal`)."),
    name: Optional[str] = typer.Option(None, help="Goal name (MLflow experiment and registry name)."),
    base_model: Optional[str] = typer.Option(None, help="Hub id, local folder, or builtin:smollm2-135m-instruct."),
    benchmark: Optional[str] = typer.Option(None, help="reasoning-gym task, or lm-eval task with --benchmark-kind lm_eval."),
    benchmark_kind: Optional[str] = typer.Option(None, help="reasoning_gym | lm_eval"),
    max_experiments: Optional[int] = typer.Option(None, help="Experiment budget."),
    gpu_hours: Optional[float] = typer.Option(None, help="Accelerator-hour budget."),
    llm_dollars: Optional[float] = typer.Option(None, help="LLM spend budget in USD."),
    wall_minutes: Optional[float] = typer.Option(None, help="Wall-clock budget in minutes."),
    target: Optional[float] = typer.Option(None, help="Stop when the champion's dev score reaches this."),
    planner: Optional[str] = typer.Option(None, help="auto | llm | search | random"),
    llm_model: Optional[str] = typer.Option(None, help="litellm model name, e.g. openai/gpt-4o-mini."),
    llm_api_base: Optional[str] = typer.Option(None, help="Base URL of an OpenAI-compatible server."),
    no_literature: bool = typer.Option(False, "--no-literature", help="Skip the arXiv search."),
    report_json: Optional[Path] = typer.Option(None, help="Also write the final report (LoopReport) as JSON here."),
) -> None:
    """Run the research loop until the target is met or the budget is spent."""
    apply_env_defaults()
    goal = load_goal(goal_file, {
        "name": name, "base_model": base_model, "benchmark.name": benchmark,
        "benchmark.kind": benchmark_kind, "budget.max_experiments": max_experiments,
        "budget.gpu_hours": gpu_hours, "budget.llm_dollars": llm_dollars,
        "budget.wall_time_minutes": wall_minutes, "target_score": target, "planner": planner,
        "llm_model": llm_model, "llm_api_base": llm_api_base,
        "use_literature": False if no_literature else None,
    })
    _preflight(goal)
    from mlintern.flows.research_loop import research_loop

    _own_temporary_server()
    report = research_loop(goal)
    if report_json is not None:
        report_json.write_text(report.model_dump_json(indent=2, exclude={"markdown"}))
    base, champ = report.baseline_test, report.champion_test or report.baseline_test
    console.print(f"\n[bold]held-out test ({report.baseline_dev.metric}):[/bold] "
                  f"base {base.value:.4f} -> champion {champ.value:.4f} "
                  f"({'champion ' + report.champion_plan_id if report.champion_plan_id else 'base kept'})")


def _preflight(goal: "Goal") -> None:
    """Fail in seconds, before a Prefect server starts, on what no retry can fix."""
    from mlintern.preflight import check_goal

    problems = check_goal(goal)
    if problems:
        console.print("[red]The goal cannot run; nothing was started:[/red]\n" + "\n".join(f"  {p}" for p in problems))
        raise typer.Exit(2)


def _own_temporary_server() -> None:
    """Embedded mode (no PREFECT_API_URL): stop temporary Prefect servers that crashed runs left
    behind, then start this run's own, tied to this process (mlintern/tempserver.py)."""
    from mlintern.tempserver import reap_stale_servers, start_tied_server

    reaped = reap_stale_servers()
    if reaped:
        console.print(f"stopped {len(reaped)} temporary Prefect server(s) left by crashed runs: {reaped}")
    start_tied_server()


@app.command()
def gc(
    name: Optional[str] = typer.Option(None, help="Only the goals with this name (default: every goal)."),
    keep: Optional[int] = typer.Option(None, help="Override each goal's retention.keep_best_candidates."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be deleted; delete nothing."),
    partial_age_hours: float = typer.Option(6.0, help="Delete half-written saves older than this."),
) -> None:
    """Free disk space: apply each goal's retention (keep the champion and the best few candidates'
    weights; metrics, configs and lineage stay in MLflow), delete stale half-written saves and
    nightly champion downloads nobody uses, and stop orphaned temporary Prefect servers."""
    apply_env_defaults()
    import logging

    from mlintern.retention import collect_garbage, disk_bytes, human
    from mlintern.settings import get_settings
    from mlintern.tempserver import reap_stale_servers
    from mlintern.tracking import init_tracking

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    init_tracking()
    work = get_settings().work_dir.resolve()
    before = disk_bytes(work)
    summary = collect_garbage(goal_filter=name, keep=keep, dry_run=dry_run, partial_age_hours=partial_age_hours)
    reaped = [] if dry_run else reap_stale_servers()
    after = disk_bytes(work)
    console.print(summary.line())
    if reaped:
        console.print(f"stopped orphaned temporary Prefect servers: {reaped}")
    console.print(f"work dir {work}: {human(before)} -> {human(after)}")


@app.command()
def budget(
    goal_file: Optional[Path] = typer.Option(None, "--goal", help="Goal JSON file (see `ml-intern goal`)."),
    base_model: Optional[str] = typer.Option(None, help="Hub id, local folder, or builtin:smollm2-135m-instruct."),
    gpu_hours: Optional[float] = typer.Option(None, help="Accelerator-hour budget."),
    wall_minutes: Optional[float] = typer.Option(None, help="Wall-clock budget in minutes."),
    max_experiments: Optional[int] = typer.Option(None, help="Experiment budget."),
    device: str = typer.Option("cuda", help="Where experiments will train: cuda or cpu."),
    params: Optional[float] = typer.Option(None, help="Parameter count (default: read from the model's config)."),
    tokens_per_example: float = typer.Option(200.0, help="Tokens of a training example (prompt + answer)."),
) -> None:
    """Dry run: the experiment sizes the loop would choose for a goal's budget (no GPU work)."""
    apply_env_defaults()
    from mlintern.budget import model_params, prior_throughput
    from mlintern.preview import preview

    g = load_goal(goal_file, {"base_model": base_model, "budget.gpu_hours": gpu_hours,
                              "budget.wall_time_minutes": wall_minutes, "budget.max_experiments": max_experiments})
    if params is None:
        from mlintern.tasks.budget import hub_params

        params = model_params(g.base_model) if Path(g.base_model).exists() else (hub_params(g.base_model) or 1.5e9)
    on_gpu = device == "cuda"
    sys.stdout.write(preview(g, prior_throughput(params, on_gpu, tokens_per_example), on_gpu, params) + "\n")


@app.command()
def goal(goal_file: Optional[Path] = typer.Argument(None, help="Validate this goal file instead.")) -> None:
    """Print the default goal as JSON (a template), or validate a goal file."""
    from mlintern.schemas import Goal

    g = load_goal(goal_file, {}) if goal_file else Goal()
    sys.stdout.write(g.model_dump_json(indent=2) + "\n")


if __name__ == "__main__":
    app()

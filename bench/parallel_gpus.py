"""The research loop on every GPU of a host, through the deployment path (issue 10).

Starts a Prefect server, creates the pools and deploys prefect.yaml (deployments/setup.sh), starts
one process worker per GPU plus the controller worker (deployments/start_workers.sh), triggers the
`research-loop` deployment with a goal whose `parallel_experiments` is the GPU count (what the UI's
Run button does), samples nvidia-smi every 0.5 s while it runs, and writes: experiments per hour,
each GPU's busy fraction (samples with utilisation > 0 over the loop's wall clock) and held fraction
(the share of the wall clock an experiment held it, from the experiments' MLflow runs) and job-held
fraction (the same from their training jobs, which a GPU's queue runs back to back), the held-out
result, the per-experiment job costs and timeline. Stops the workers with the documented stop command.

  python bench/parallel_gpus.py --goal bench/goals/arith.json --budget 300 --gpus 0,1,2,3 --out $OUT/x4.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_arms import sample_gpus, start_prefect  # noqa: E402

from mlintern.settings import get_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def busy_fractions(smi: Path, start: float, end: float) -> dict[str, dict]:
    """Per GPU: the share of samples in [start, end] with utilisation > 0, and the mean utilisation."""
    from datetime import datetime

    per: dict[str, list[float]] = {}
    with open(smi) as f:
        for row in csv.reader(f):
            if len(row) < 3:
                continue
            try:
                ts = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            except ValueError:
                continue
            if start <= ts <= end:
                per.setdefault(row[1].strip(), []).append(float(row[2]))
    return {g: {"busy_fraction": round(sum(u > 0 for u in v) / len(v), 4), "mean_util": round(sum(v) / len(v), 1),
                "samples": len(v)} for g, v in per.items() if v}


def server_503s(log: Path, start: float, end: float) -> list[float]:
    """When the Prefect server answered a retryable error (a 503; on SQLite "database is locked"), in seconds
    from the loop's start: its log's lines "HH:MM:SS.mmm | ERROR | ... Encountered retryable exception",
    logged with PREFECT_SERVER_LOG_RETRYABLE_ERRORS (bench/budget_arms.py start_prefect). Prefect's client
    waits 2 s, then 4 s, after each one."""
    from datetime import datetime

    day = datetime.fromtimestamp(start).date()
    times = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if "Encountered retryable exception" not in line:
            continue
        try:
            clock = datetime.strptime(line.split(" | ")[0].strip(), "%H:%M:%S.%f").time()
        except ValueError:
            continue
        t = datetime.combine(day, clock).timestamp()
        if t < start - 3600:  # the log gives no date: a loop that runs past midnight goes on to the next day
            t += 86400
        if start <= t <= end + 5:
            times.append(round(t - start, 1))
    return times


def handovers(timeline: list[dict], gpus: list[str], answers_503: list[float]) -> list[dict]:
    """Each GPU's gaps between one training job's end and the next one's start, with the server's 503s
    in them: a gap of about 2 s more than the others, with a 503 inside, is Prefect's client backing off."""
    out = []
    for g in gpus:
        jobs = _spans(timeline, g, "job")
        for (_, end), (start, _) in zip(jobs, jobs[1:]):
            out.append({"gpu": g, "t": end, "s": round(start - end, 1),
                        "server_503s": sum(end - 0.5 <= t <= start for t in answers_503)})
    return out


def timeline_row(client, e: dict, start: float) -> dict:
    """When an experiment ran (its MLflow run, seconds from the loop's start), what it was planned to do
    and what it cost: where a budget overrun came from."""
    row = {"stage": e["plan"]["stage"], "status": e["status"], "steps": e["steps"],
           "planned_steps": e["plan"]["hyperparameters"]["max_steps"], "job_s": round(e["job_seconds"], 1),
           "accel_s": round(e["accelerator_hours"] * 3600, 1), "eval_s": round(e["eval_seconds"], 1),
           "confirmed": e.get("confirmed"), "rationale": e["plan"].get("rationale", "")[-160:],
           # what the loop chose on (dev; the confirmation set for a would-be champion) and what it trained
           "dev": (e.get("dev") or {}).get("value"), "confirm": (e.get("confirm") or {}).get("value"),
           "hyperparameters": e["plan"]["hyperparameters"], "init_from": e["plan"].get("init_from")}
    row["phases"] = e.get("phases", {})
    if e.get("job_started_at"):  # when its job held the GPU (a queued run waits for it inside its MLflow run)
        row["t_job_start"] = round(e["job_started_at"] - start, 1)
        row["t_job_end"] = round(e["job_started_at"] + e["job_seconds"] - start, 1)
    if e.get("mlflow_run_id"):
        run = client.get_run(e["mlflow_run_id"])
        info = run.info
        row["gpu"] = run.data.tags.get("intern.gpu")
        row["t_start"] = round(info.start_time / 1000 - start, 1)
        row["t_end"] = round(info.end_time / 1000 - start, 1) if info.end_time else None
        if run.data.tags.get("prefect.flow_run_id"):
            row.update(flow_run_marks(run.data.tags["prefect.flow_run_id"], start))
    return row


def flow_run_marks(flow_run_id: str, start: float) -> dict:
    """When the experiment's Prefect flow run was created (t_scheduled: the controller dispatched it),
    picked up by its worker (t_pending), running in its own process (t_running) and ended: the
    dispatch's share of a gap between two experiments on one GPU."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        states = prefect.read_flow_run_states(flow_run_id)
    marks: dict[str, float] = {}
    for st in sorted(states, key=lambda st: st.timestamp):
        marks.setdefault(f"t_{st.type.value.lower()}", round(st.timestamp.timestamp() - start, 1))
    return marks


def controller_marks(flow_run_id: str, start: float) -> dict:
    """Where the controller's time went before and around the experiments: its flow run's states, and each
    of its task runs (the benchmark's preparation, the base model's scores, plans, the final tests) from
    its start to its end, in seconds from the trigger."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    marks = flow_run_marks(flow_run_id, start)
    with get_client(sync_client=True) as prefect:
        tasks = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    marks["tasks"] = sorted(
        ({"name": t.name, "t_start": round(t.start_time.timestamp() - start, 1),
          "t_end": round(t.end_time.timestamp() - start, 1) if t.end_time else None}
         for t in tasks if t.start_time is not None), key=lambda t: t["t_start"])
    return marks


def provisional_lines(flow_run_id: str, start: float) -> list[str]:
    """The controller's log lines on provisional experiments (queued, released, withdrawn), timed from the
    trigger."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs: list = []
    with get_client(sync_client=True) as prefect:
        while True:  # the server answers 200 at most at a time
            page = prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                     limit=200, offset=len(logs))
            logs += page
            if len(page) < 200:
                break
    return [f"{log.timestamp.timestamp() - start:.1f} {log.message[:200]}" for log in logs
            if log.message.startswith("provisional ")]


def _spans(timeline: list[dict], gpu: str, span: str) -> list[tuple[float, float]]:
    a, b = ("t_start", "t_end") if span == "run" else ("t_job_start", "t_job_end")
    return sorted((r[a], r[b]) for r in timeline if r.get("gpu") == gpu and r.get(a) is not None and r.get(b) is not None)


def idle_breakdown(timeline: list[dict], gpus: list[str], wall: float, span: str = "run") -> dict[str, dict]:
    """Per GPU, its idle seconds: before its first experiment, between experiments, after its last one
    (`span`: "run", an experiment's MLflow run; "job", its training job on the GPU)."""
    out = {}
    for g in gpus:
        spans = _spans(timeline, g, span)
        if not spans:
            out[g] = {"before_first": round(wall, 1), "between": 0.0, "after_last": 0.0}
            continue
        between, reach = 0.0, spans[0][1]
        for a, b in spans[1:]:
            between += max(0.0, a - reach)
            reach = max(reach, b)
        out[g] = {"before_first": spans[0][0], "between": round(between, 1), "after_last": round(wall - reach, 1),
                  "between_share": round(between / (reach - spans[0][0]), 4) if reach > spans[0][0] else None}
    return out


def held_fractions(timeline: list[dict], gpus: list[str], wall: float, span: str = "run") -> dict[str, float]:
    """Per GPU: the share of the loop's wall clock in which an experiment held it: `span` "run", from its
    MLflow run's start to its end (data, training, dev checks, save); "job", its training job only (what a
    GPU's queue keeps back to back). nvidia-smi's busy samples undercount a small model (part 8b: 0%
    samples inside a job); this counts what the loop could have kept busy."""
    out = {}
    for g in gpus:
        held, reach = 0.0, 0.0
        for a, b in _spans(timeline, g, span):  # union of the spans
            a = max(a, reach)
            if b > a:
                held += b - a
                reach = b
        out[g] = round(held / wall, 4) if wall else 0.0
    return out


def _device_names() -> list[str]:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--goal", required=True)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--gpus", default="0,1,2,3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/root/parallel")
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout-s", type=float, default=500)
    ap.add_argument("--wall-minutes", type=float, default=None,
                    help="the goal's budget.wall_time_minutes (default: the goal file's)")
    args = ap.parse_args()
    gpus = args.gpus.split(",")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    server, url = start_prefect(work / "prefect")
    env = dict(os.environ, PREFECT_API_URL=url, INTERN_WORK_DIR=str(work / "work"),
               INTERN_TRACKING_URI=f"sqlite:///{work}/mlflow.db", INTERN_LOG_DIR=str(work / "workers"),
               PREFECT_WORKER_QUERY_SECONDS="2", INTERN_RUNTIME_DIR=str(work / "rt"))
    os.environ.update(env)
    subprocess.run(["bash", "deployments/setup.sh", "--gpus", str(len(gpus))], cwd=ROOT, env=env, check=True,
                   stdout=open(work / "setup.log", "ab"), stderr=subprocess.STDOUT)
    subprocess.run(["bash", "deployments/start_workers.sh", "--gpus", " ".join(gpus), "--controller"], cwd=ROOT,
                   env=env, check=True)
    goal = json.loads(Path(args.goal).read_text())
    goal.update(name=f"{goal['name']}-x{len(gpus)}-b{args.budget}-s{args.seed}", planner="auto", seed=args.seed,
                parallel_experiments=len(gpus))
    goal["budget"] = {**goal["budget"], "gpu_hours": args.budget / 3600}
    if args.wall_minutes is not None:
        goal["budget"]["wall_time_minutes"] = args.wall_minutes
    stop = threading.Event()
    smi = Path(args.out).with_suffix(".smi.csv")
    threading.Thread(target=sample_gpus, args=(smi, stop), daemon=True).start()
    from prefect.deployments import run_deployment

    start = time.time()
    # polled every second: the loop's wall clock ends when the flow does, not up to 5 s later (the default)
    flow_run = run_deployment("research-loop/research-loop", parameters={"goal": goal}, timeout=args.timeout_s,
                              poll_interval=1)
    end = time.time()
    stop.set()
    time.sleep(1)
    from mlflow.tracking import MlflowClient

    import mlflow

    mlflow.set_tracking_uri(env["INTERN_TRACKING_URI"])
    client = MlflowClient()
    report = None
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], "tags.`intern.kind` = 'report'"):
            report = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/report.json"))
    result = {"device": _device_names(), "queue_depth": get_settings().queue_depth,
              "gpus": len(gpus), "budget_s": args.budget, "state": flow_run.state.name if flow_run.state else None,
              "wall_s": round(end - start, 1),
              # this run's GPUs only: another benchmark may use the host's others (beside_call.sh)
              "gpu": {g: v for g, v in busy_fractions(smi, start, end).items() if g in gpus},
              "controller": controller_marks(str(flow_run.id), start),
              "provisional": provisional_lines(str(flow_run.id), start),
              "server_503_s": server_503s(work / "prefect" / "server.log", start, end)}
    if report:
        exps = report["experiments"]
        result.update({
            "experiments": len(exps), "experiments_per_hour": round(len(exps) / ((end - start) / 3600), 1),
            "base_test": report["baseline_test"]["value"],
            "final_test": (report.get("champion_test") or report["baseline_test"])["value"],
            "used_s": report["used_seconds"], "stop_reason": report["stop_reason"],
            "job_seconds": [round(e["job_seconds"], 1) for e in exps],
            "stages": [f"{e['plan']['stage']}:{e['status']}" for e in exps],
            "timeline": [timeline_row(client, e, start) for e in exps],
        })
    busy = [g["busy_fraction"] for g in result["gpu"].values()]
    result["idle_fraction_mean"] = round(1 - sum(busy) / len(busy), 4) if busy else None
    if result.get("timeline"):
        held = held_fractions(result["timeline"], gpus, end - start)
        result["held_fraction"] = held
        result["idle_held_mean"] = round(1 - sum(held.values()) / len(held), 4)
        result["idle_s"] = idle_breakdown(result["timeline"], gpus, end - start)
        job_held = held_fractions(result["timeline"], gpus, end - start, span="job")
        result["job_held_fraction"] = job_held
        result["idle_job_mean"] = round(1 - sum(job_held.values()) / len(job_held), 4)
        result["idle_job_s"] = idle_breakdown(result["timeline"], gpus, end - start, span="job")
        result["handovers"] = handovers(result["timeline"], gpus, result["server_503_s"])
        result["experiment_s"] = sorted(round(r["t_end"] - r["t_start"], 1) for r in result["timeline"]
                                        if r.get("t_end") is not None and r.get("t_start") is not None)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    stop_script = ROOT / "deployments" / "stop_workers.sh"
    if stop_script.exists():
        subprocess.run(["bash", str(stop_script)], cwd=ROOT, env=env)
    server.terminate()


if __name__ == "__main__":
    main()

"""Research efficiency at equal accelerator budgets, through the REAL flow (issue 13).

Each arm is one `ml-intern run` (flows/research_loop.py -> flows/experiment.py, Prefect, MLflow,
lm-eval, the persistent training worker) on its own GPU, with a goal from bench/goals/ and:
  a = planner "single": ONE run with default hyperparameters sized to the whole budget;
  b = planner "search": Optuna TPE over budget-sized plans;
  c = planner "auto":   the loop (multi-fidelity search, then scale-up of the winner).
Runs are queued per GPU and run one at a time on it; all share one Prefect server. Results (every
arm's LoopReport summary, wall times, nvidia-smi samples) are written after each run, so a run cut
by the call's time limit keeps what finished.

  python bench/budget_arms.py --goal bench/goals/arith.json --budgets 120,300 --seeds 0,1 --arms a,b,c \
      --gpus 0,1,2,3 --out $OUT/arms.json --deadline-s 540
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLANNER = {"a": "single", "b": "search", "c": "auto"}


def start_prefect(home: Path) -> tuple[subprocess.Popen, str]:
    """One Prefect server for every arm (SQLite), so no run pays for a temporary server. On a port of its
    own: two benchmarks can run side by side on one host (bench/device/beside_call.sh)."""
    import socket
    import urllib.request

    home.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # each 503 it answers (SQLite's "database is locked") in its log, with the time: which of the loop's
    # waits were Prefect's client backing off (bench/parallel_gpus.py server_503s)
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=open(home / "server.log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    raise RuntimeError(f"Prefect server did not start; see {home / 'server.log'}")


def sample_gpus(path: Path, stop: threading.Event) -> None:
    with open(path, "w") as out:
        proc = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,index,utilization.gpu,memory.used",
                                 "--format=csv,noheader,nounits", "-lms", "500"], stdout=out)
        stop.wait()
        proc.terminate()


def lora_enabled(hp: dict) -> bool:
    """LoRA on or off, in a report of either plan layout (flat `lora: bool`, or the `lora` group)."""
    return hp["lora"]["enabled"] if isinstance(hp["lora"], dict) else bool(hp["lora"])


def summary(name: str, arm: str, seed: int, budget: int, report: dict, wall: float, gpu: str) -> dict:
    exps = report.get("experiments", [])
    base, champ = report.get("baseline_test") or {}, report.get("champion_test") or report.get("baseline_test") or {}
    return {
        "name": name, "arm": arm, "planner": report.get("planner"), "seed": seed, "budget_s": budget, "gpu": gpu,
        "base_test": base.get("value"), "final_test": champ.get("value"), "test_n": champ.get("n"),
        "gain": (champ.get("value") or 0) - (base.get("value") or 0),
        "base_dev": report["baseline_dev"]["value"], "champion_dev": (report.get("champion_dev") or {}).get("value"),
        "used_s": report.get("used_seconds"), "used_fraction": report.get("used_seconds", 0) / budget,
        "experiments": len(exps), "pruned": sum(e["status"] == "pruned" for e in exps),
        "failed": sum(e["status"] == "failed" for e in exps), "stop_reason": report.get("stop_reason"),
        "throughput": report.get("throughput"), "wall_s": round(wall, 1),
        "runs": [{"stage": e["plan"]["stage"], "status": e["status"], "steps": e["steps"],
                  "batch": e["plan"]["hyperparameters"]["per_device_batch_size"],
                  "lr": e["plan"]["hyperparameters"]["learning_rate"], "lora": lora_enabled(e["plan"]["hyperparameters"]),
                  "init": e["plan"]["init_from"], "dev": (e.get("dev") or {}).get("value"),
                  "accel_s": round(e["accelerator_hours"] * 3600, 2), "job_s": round(e["job_seconds"], 2),
                  "loop_s": round(e["train_loop_seconds"], 2), "eval_s": round(e["eval_seconds"], 2),
                  "recent_loss": (e.get("recent_loss") or {}).get("value")}
                 for e in exps],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--goal", action="append", required=True, help="goal JSON (repeatable)")
    ap.add_argument("--budgets", default="120,300")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--arms", default="a,b,c")
    ap.add_argument("--runs", default=None, help="explicit list arm:budget:seed,... (instead of the product)")
    ap.add_argument("--gpus", default="0")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/root/arms")
    ap.add_argument("--deadline-s", type=float, default=540, help="launch nothing after this; kill at +40 s")
    ap.add_argument("--device", default=None, help="override the goals' device (cpu for a local check)")
    ap.add_argument("--override", default="{}", help="JSON merged into every goal (local checks)")
    args = ap.parse_args()
    t0 = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    server, url = start_prefect(work / "prefect")
    stop = threading.Event()
    if args.device != "cpu":
        threading.Thread(target=sample_gpus, args=(out.with_suffix(".smi.csv"), stop), daemon=True).start()
    gpus = args.gpus.split(",")
    jobs = []
    if args.runs:
        combos = [(g, int(b), int(s), a) for g in args.goal for a, b, s in (r.split(":") for r in args.runs.split(","))]
    else:
        combos = list(itertools.product(args.goal, map(int, args.budgets.split(",")), map(int, args.seeds.split(",")),
                                        args.arms.split(",")))
    for goal_file, budget, seed, arm in combos:
        goal = json.loads(Path(goal_file).read_text())
        goal.update(json.loads(args.override))
        name = f"{goal['name']}-{arm}-b{budget}-s{seed}"
        goal.update(name=name, planner=PLANNER[arm], seed=seed)
        goal["budget"] = {**goal["budget"], "gpu_hours": budget / 3600}
        if args.device:
            goal["device"] = args.device
        jobs.append((name, arm, seed, budget, goal))
    jobs.sort(key=lambda j: -j[3])  # longest first: the queues end together
    # one queue per entry of --gpus; a GPU named twice runs two arms at once (small models leave it mostly idle)
    lanes = range(len(gpus))
    queues: dict[int, list] = {k: [] for k in lanes}
    load = {k: 0.0 for k in lanes}
    for job in jobs:
        k = min(lanes, key=lambda i: load[i])
        queues[k].append(job)
        load[k] += job[3] + 60
    print("plan:", {f"{k}:GPU{gpus[k]}": [j[0] for j in q] for k, q in queues.items()}, flush=True)
    results, lock = [], threading.Lock()

    def run_queue(lane: int) -> None:
        gpu = gpus[lane]
        for name, arm, seed, budget, goal in queues[lane]:
            if time.time() - t0 > args.deadline_s - budget:
                print(f"skip {name}: not enough time left", flush=True)
                continue
            d = work / name
            d.mkdir(parents=True, exist_ok=True)
            (d / "goal.json").write_text(json.dumps(goal))
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, INTERN_WORK_DIR=str(d / "work"),
                       INTERN_TRACKING_URI=f"sqlite:///{d}/mlflow.db", PREFECT_API_URL=url,
                       INTERN_RUNTIME_DIR=str(work / f"rt-{lane}"))
            start = time.time()
            left = args.deadline_s + 40 - (time.time() - t0)
            try:
                code = subprocess.run([sys.executable, "-m", "mlintern.cli", "run", "--goal", str(d / "goal.json"),
                                       "--report-json", str(d / "report.json")], env=env, cwd=ROOT, timeout=left,
                                      stdout=open(d / "run.log", "ab"), stderr=subprocess.STDOUT).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            wall = time.time() - start
            if (d / "report.json").exists():
                row = summary(name, arm, seed, budget, json.loads((d / "report.json").read_text()), wall, gpu)
                row.update(start_epoch=round(start, 1), end_epoch=round(time.time(), 1))
            else:
                row = {"name": name, "arm": arm, "seed": seed, "budget_s": budget, "error": f"exit {code}",
                       "log_tail": (d / "run.log").read_text()[-3000:]}
            with lock:
                results.append(row)
                out.write_text(json.dumps({"results": results, "elapsed_s": time.time() - t0}, indent=1))
            print(f"{name} on GPU {gpu}: {row.get('final_test')} (base {row.get('base_test')}), used "
                  f"{row.get('used_s')} of {budget} s, {row.get('experiments')} experiments, wall {wall:.0f} s, "
                  f"{row.get('stop_reason') or row.get('error')}", flush=True)

    threads = [threading.Thread(target=run_queue, args=(k,)) for k in lanes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    server.terminate()
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()

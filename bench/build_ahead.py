"""Build-ahead against one training worker a GPU, in one call (issue 10, bench/RESULTS.md part 17).

Two SFT jobs queued on one GPU, through the project's `train` task (tasks/train.py) with INTERN_GPU_ID
set, as a GPU's Prefect worker runs them: job A starts, job B is submitted 2 s later with more rows.
- arm `one-worker` (INTERN_BUILD_AHEAD=false): B waits for the GPU, then loads and builds (trl
  tokenizes its rows) while holding it;
- arm `build-ahead`: the GPU's second worker loads and builds B while A trains; B takes the GPU after.
Both arms' workers are started and warmed first (start_workers.sh does it). Printed per arm: each job's
training pace (optimizer steps a second: does a build beside a training job slow it?), its GPU-held
seconds (what the budget counts), B's build, the handover from A's end to B's start, and the GPU span
from A's start to B's end; then the ratios build-ahead / one-worker.

  python bench/build_ahead.py --steps 300 --batch 64 --rows-b 30000 --out $OUT/build_ahead.json
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rows-b", type=int, default=30000, help="job B's training rows (its build grows with them)")
    ap.add_argument("--dev", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default="/root/build_ahead")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["INTERN_WORK_DIR"] = str(work / "work")
    os.environ["INTERN_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    os.environ["INTERN_GPU_ID"] = os.environ.get("INTERN_GPU_ID", "0")

    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from mlintern.benchmarks import prepare_benchmark
    from mlintern.data.build import build_training_data
    from mlintern.models import resolve_model
    from mlintern.schemas import BUILTIN_BASE_MODEL, BenchmarkSpec, DatasetRecipe, ExperimentPlan, Method
    from mlintern.settings import get_settings
    from mlintern.tasks.evaluate import eval_spec
    from mlintern.tasks.train import train
    from mlintern.tracking import init_tracking
    from mlintern.training.job import TrainJob
    from mlintern.worker import client as workers

    uri = init_tracking()
    model = resolve_model(BUILTIN_BASE_MODEL, work, Path(os.environ.get("INTERN_MODELS_DIR", work / "models")))
    bench = prepare_benchmark(BenchmarkSpec(dev_size=args.dev, test_size=50), work)
    mlflow = MlflowClient()
    exp = mlflow.create_experiment(f"build-ahead-{int(time.time())}")
    arms = {}
    with prefect_test_harness():  # gpu_slot takes Prefect's concurrency limits too (none exist here)
        for i, (arm, ahead) in enumerate((("one-worker", "false"), ("build-ahead", "true"))):
            jobs = {}  # rows of its own for each arm: the same rows again would have trl's tokenizing read
            # from the datasets cache (the first run of this bench: B's build 8.7 s, then 0.8 s)
            for name, rows, seed in (("A", args.steps * args.batch, 1 + 2 * i), ("B", args.rows_b, 2 + 2 * i)):
                plan = ExperimentPlan(hyperparameters={"max_steps": args.steps, "per_device_batch_size": args.batch,
                                                       "learning_rate": 1e-4},
                                      dataset=DatasetRecipe(num_examples=rows, seed=seed))
                jobs[name] = (plan, build_training_data(plan.dataset, Method.sft, bench, work_dir=work).path)
            os.environ["INTERN_BUILD_AHEAD"] = ahead
            os.environ["INTERN_RUNTIME_DIR"] = str(work / arm / "rt")
            get_settings.cache_clear()
            for slot in range(workers.slot_count()):
                workers.warm(model, device=args.device, slot=slot)
            out: dict = {}

            def run(name: str, delay: float, jobs: dict = jobs) -> None:
                time.sleep(delay)
                plan, data = jobs[name]
                job = TrainJob(plan=plan, model_path=model, data_path=data, output_dir=str(work / arm / name),
                               device=args.device, evaluation=eval_spec(bench, "dev", args.device))
                out[name + "_submitted"] = time.time()
                out[name] = train.fn(job, mlflow.create_run(exp).info.run_id, uri, 1800)

            threads = [threading.Thread(target=run, args=("A", 0.0)), threading.Thread(target=run, args=("B", 2.0))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            a, b = out["A"], out["B"]
            a_end = a.job_started_at + a.job_seconds
            arms[arm] = {
                "workers": workers.slot_count(),
                "jobs": {n: {"status": o.status, "steps": o.steps, "steps_per_s": round(o.steps / o.train_loop_seconds, 3),
                             "gpu_held_s": round(o.job_seconds, 3), "phases": o.phases,
                             "dev": o.dev.value if o.dev else None} for n, o in (("A", a), ("B", b))},
                "b_build_s": round(b.phases.get("load", 0) + b.phases.get("build", 0), 3),
                "handover_s": round(b.job_started_at - a_end, 3),
                "gpu_span_s": round(b.job_started_at + b.job_seconds - a.job_started_at, 3),
            }
            print(arm, json.dumps(arms[arm]), flush=True)
            workers.stop()
    one, ahead = arms["one-worker"], arms["build-ahead"]
    result = {
        "device": os.environ.get("DEVICE_NAME", args.device), "steps": args.steps, "batch": args.batch,
        "rows_a": args.steps * args.batch, "rows_b": args.rows_b, "arms": arms,
        "ratio_b_gpu_held": round(ahead["jobs"]["B"]["gpu_held_s"] / one["jobs"]["B"]["gpu_held_s"], 3),
        "ratio_gpu_span": round(ahead["gpu_span_s"] / one["gpu_span_s"], 3),
        "ratio_a_pace": round(ahead["jobs"]["A"]["steps_per_s"] / one["jobs"]["A"]["steps_per_s"], 3),
        "ratio_b_pace": round(ahead["jobs"]["B"]["steps_per_s"] / one["jobs"]["B"]["steps_per_s"], 3),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "arms"}, indent=1))


if __name__ == "__main__":
    main()

"""Per-experiment fixed cost: the persistent training worker vs a fresh process per job (issue 10).

Runs the same short SFT jobs through the project's `train` task (tasks/train.py), first on the
fresh-process path (`INTERN_TRAIN_WORKER=fresh`: `python -m mlintern.training.runner` per job), then on
the persistent worker, on one device, in the same call. Fixed cost of a job = its wall time as the
task sees it (submit -> outcome, process start and imports included) - optimizer-loop seconds - dev
scoring seconds. The first persistent job includes the worker's start; it is reported apart.

  python bench/worker_overhead.py --jobs 4 --steps 30 --out $OUT/overhead.json [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dev", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default="/root/overhead")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = Path(args.work)
    os.environ["INTERN_WORK_DIR"] = str(work / "work")
    os.environ["INTERN_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    os.environ.setdefault("INTERN_RUNTIME_DIR", str(work / "rt"))
    work.mkdir(parents=True, exist_ok=True)

    from mlflow.tracking import MlflowClient

    from mlintern.benchmarks import prepare_benchmark
    from mlintern.data.build import build_training_data
    from mlintern.models import resolve_model
    from mlintern.schemas import BUILTIN_BASE_MODEL, BenchmarkSpec, DatasetRecipe, ExperimentPlan, Method
    from mlintern.settings import get_settings
    from mlintern.tracking import init_tracking
    from mlintern.training.job import TrainJob
    from mlintern.tasks.evaluate import eval_spec
    from mlintern.tasks.train import train

    uri = init_tracking()
    model = resolve_model(BUILTIN_BASE_MODEL, work, Path(os.environ.get("INTERN_MODELS_DIR", work / "models")))
    bench = prepare_benchmark(BenchmarkSpec(dev_size=args.dev, test_size=50), work)
    client = MlflowClient()
    exp = client.create_experiment(f"overhead-{int(time.time())}")
    rows = {}
    for mode in ("fresh", "persistent"):
        os.environ["INTERN_TRAIN_WORKER"] = mode
        get_settings.cache_clear()
        rows[mode] = []
        for i in range(args.jobs):
            plan = ExperimentPlan(hyperparameters={"max_steps": args.steps, "per_device_batch_size": args.batch,
                                                   "learning_rate": 1e-4},
                                  dataset=DatasetRecipe(num_examples=args.steps * args.batch, seed=i))
            data = build_training_data(plan.dataset, Method.sft, bench, work_dir=work)
            run_id = client.create_run(exp).info.run_id
            job = TrainJob(plan=plan, model_path=model, data_path=data.path, output_dir=str(work / mode / str(i)),
                           device=args.device, evaluation=eval_spec(bench, "dev", args.device))
            start = time.time()
            out = train.fn(job, run_id, uri, 1800)
            wall = time.time() - start
            fixed = wall - out.train_loop_seconds - out.eval_seconds
            rows[mode].append({"job": i, "status": out.status, "wall_s": round(wall, 3),
                               "loop_s": round(out.train_loop_seconds, 3), "eval_s": round(out.eval_seconds, 3),
                               "fixed_s": round(fixed, 3), "dev": out.dev.value if out.dev else None,
                               # where the fixed cost goes: inside the job (load, trainer build, the part of
                               # trainer.train() outside the optimizer loop and dev checks, save), and outside
                               # it (dispatch, process start or socket, the task's MLflow logging)
                               "phases": out.phases,
                               "in_train_call_s": round(out.phases.get("train_call", 0) - out.train_loop_seconds
                                                        - (out.eval_seconds - out.phases.get("final_eval", 0)), 3),
                               "outside_job_s": round(wall - out.train_seconds, 3)})
            print(mode, rows[mode][-1], flush=True)
    steady = [r["fixed_s"] for r in rows["persistent"][1:]]
    fresh = [r["fixed_s"] for r in rows["fresh"]]
    result = {
        "device": os.environ.get("DEVICE_NAME", args.device), "jobs": args.jobs, "steps": args.steps, "dev_items": args.dev,
        "fresh_fixed_s_median": statistics.median(fresh),
        "persistent_first_job_fixed_s": rows["persistent"][0]["fixed_s"],
        "persistent_fixed_s_median": statistics.median(steady) if steady else None,
        "ratio_fresh_over_persistent": statistics.median(fresh) / statistics.median(steady) if steady else None,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    from mlintern.worker import client as worker_client

    worker_client.stop()


if __name__ == "__main__":
    main()

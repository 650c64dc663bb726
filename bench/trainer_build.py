"""How long trl's SFTTrainer takes to build (dataset preparation: chat template + tokenization of every
row) for a scale-up-sized training set, with the project's `dataset_num_proc` against one process, in
the same run. Part 12 of bench/RESULTS.md found the build at 65-121 s of 142-221 s scale-up jobs on
2 x H200, the GPU idle meanwhile.

  python bench/trainer_build.py --rows 20000 [--model DIR] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from mlintern.benchmarks import prepare_benchmark
    from mlintern.data.build import build_training_data
    from mlintern.models import resolve_model
    from mlintern.schemas import BenchmarkSpec, DatasetRecipe, ExperimentPlan, Method
    from mlintern.settings import get_settings
    from mlintern.training import common
    from mlintern.training.job import TrainJob
    from mlintern.training.loading import load_for_training
    from mlintern.training.sft import build_sft_trainer

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    if torch.cuda.is_available():  # as in the persistent worker: the CUDA context exists before any fork
        torch.zeros(1, device="cuda")
    work = Path(tempfile.mkdtemp(prefix="trainer-build-"))
    settings = get_settings()
    model_dir = resolve_model(args.model, settings.work_dir.resolve(), settings.models_dir)
    bench = prepare_benchmark(BenchmarkSpec(dev_size=50, test_size=50), work)
    built = build_training_data(DatasetRecipe(num_examples=args.rows, seed=7), Method.sft, bench, work_dir=work)
    model, tok = load_for_training(model_dir)
    plan = ExperimentPlan(hyperparameters={"max_steps": 10, "per_device_batch_size": 8, "max_length": 256})
    times = {}
    for label, procs in (("one process", None), ("dataset_num_proc", common.dataset_procs(built.rows_after))):
        os.environ["INTERN_DATASET_PROCS"] = str(procs or 1)
        data = work / f"{label.replace(' ', '_')}.jsonl"  # its own file: datasets would reuse the other's cache
        data.write_bytes(Path(built.path).read_bytes())
        job = TrainJob(plan=plan, model_path=model_dir, data_path=str(data), output_dir=str(work / label),
                       device=args.device)
        start = time.time()
        trainer = build_sft_trainer(job, [], model, tok)
        times[label] = {"procs": procs or 1, "seconds": round(time.time() - start, 2),
                        "rows": len(trainer.train_dataset)}
        del trainer
    result = {"host": platform.node(), "cpus": os.cpu_count(),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "rows": built.rows_after, "builds": times,
              "ratio": round(times["one process"]["seconds"] / times["dataset_num_proc"]["seconds"], 2)}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""How long trl's SFTTrainer takes to build (dataset preparation: chat template + tokenization of every
row) for a scale-up-sized training set, with the project's `dataset_num_proc` against one process, in
the same run. Part 12 of bench/RESULTS.md found the build at 65-121 s of 142-221 s scale-up jobs on
2 x H200, the GPU idle meanwhile.

  python bench/trainer_build.py --rows 20000 [--model DIR] [--device cpu|cuda]

`--packed` builds a long GPU run's trainer instead (packed rows, flex attention, Liger: the scale-up's
fast path), twice in one process, the first under cProfile: part 13 measured 22.6 s for a scale-up's
build in the loop, against 0.9-4.1 s for its unpacked trials.
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
    ap.add_argument("--packed", action="store_true", help="the scale-up's packed trainer, cold then warm, profiled")
    ap.add_argument("--procs", default=None,
                    help="comma-separated dataset_num_proc arms, the first the baseline (default: 1, then the "
                         "project's dataset_procs for these rows)")
    args = ap.parse_args()
    import torch

    if torch.cuda.is_available():  # as in the persistent worker: the CUDA context exists before any fork
        torch.zeros(1, device="cuda")
    work = Path(tempfile.mkdtemp(prefix="trainer-build-"))
    settings = get_settings()
    model_dir = resolve_model(args.model, settings.work_dir.resolve(), settings.models_dir)
    bench = prepare_benchmark(BenchmarkSpec(dev_size=50, test_size=50), work)
    built = build_training_data(DatasetRecipe(num_examples=args.rows, seed=7), Method.sft, bench, work_dir=work)
    if args.packed:
        return packed_builds(args, work, model_dir, built)
    model, tok = load_for_training(model_dir)
    plan = ExperimentPlan(hyperparameters={"max_steps": 10, "per_device_batch_size": 8, "max_length": 256})
    times = {}
    arms = [("one process", None), ("dataset_num_proc", common.dataset_procs(built.rows_after))]
    if args.procs:
        arms = [(f"{n} process(es)", n) for n in map(int, args.procs.split(","))]
    for label, procs in arms:
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
              "dataset_procs": common.dataset_procs(built.rows_after),
              "ratio_to_first": {label: round(times[arms[0][0]]["seconds"] / t["seconds"], 2) for label, t in times.items()}}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


def packed_builds(args, work: Path, model_dir: str, built) -> None:
    """The scale-up's trainer (packing, flex attention on a GPU, Liger where installed) built twice in one
    process: the first build pays what a process pays once (imports, kernels), the second what every
    build pays; the first one's profile says which is which."""
    import cProfile
    import io
    import pstats

    import torch

    from mlintern.schemas import ExperimentPlan
    from mlintern.training import common
    from mlintern.training.job import TrainJob
    from mlintern.training.loading import load_for_training
    from mlintern.training.sft import attn_for, build_sft_trainer

    plan = ExperimentPlan(hyperparameters={"max_steps": 10, "per_device_batch_size": 4, "max_length": 256,
                                           "packing": True})
    builds, profile = [], ""
    for i in range(2):
        load_start = time.time()
        model, tok = load_for_training(model_dir, attn_for(True, args.device if args.device != "auto" else
                                                           ("cuda" if torch.cuda.is_available() else "cpu")))
        loaded = time.time() - load_start
        data = work / f"packed{i}.jsonl"
        data.write_bytes(Path(built.path).read_bytes())
        job = TrainJob(plan=plan, model_path=model_dir, data_path=str(data), output_dir=str(work / f"p{i}"),
                       device=args.device)
        prof = cProfile.Profile() if i == 0 else None
        start = time.time()
        if prof:
            prof.enable()
        trainer = build_sft_trainer(job, [], model, tok)
        if prof:
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
            profile = out.getvalue()
        builds.append({"build": ["cold", "warm"][i], "seconds": round(time.time() - start, 2), "load_s": round(loaded, 2),
                       "rows": len(trainer.train_dataset), "procs": common.dataset_procs(built.rows_after) or 1,
                       "liger": bool(trainer.args.use_liger_kernel)})
        del trainer, model
    result = {"host": platform.node(), "cpus": os.cpu_count(),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "rows": built.rows_after, "packed_builds": builds}
    print(json.dumps(result, indent=1))
    print(profile[:6000])
    if args.out:
        Path(args.out).write_text(json.dumps(result | {"profile": profile}, indent=1))


if __name__ == "__main__":
    main()

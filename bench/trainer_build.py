"""How long trl's SFTTrainer takes to build (dataset preparation: chat template + tokenization of every
row) for a scale-up-sized training set, with the project's `dataset_num_proc` against one process, in
the same run. Part 12 of bench/RESULTS.md found the build at 65-121 s of 142-221 s scale-up jobs on
2 x H200, the GPU idle meanwhile.

  python bench/trainer_build.py --rows 20000 [--model DIR] [--device cpu|cuda]

`--packed` builds a long GPU run's trainer instead (packed rows, flex attention, Liger: the scale-up's
fast path), twice in one process, the first under cProfile: part 13 measured 22.6 s for a scale-up's
build in the loop, against 0.9-4.1 s for its unpacked trials.

`--lazy STEPS` builds the same trainer eagerly (every row tokenized before the first step) and lazily
(mlintern.training.sft.tokenize_lazily: DataLoader processes tokenize as training reads), each on a fresh
copy of the model, and trains STEPS steps with each, after an untimed warm-up run: the build each saves
against what the lazy one costs per step (part 18 measured a 132,000-row build at 36.5 s, the GPU idle).
`--order ELLE` runs each arm twice, eager-lazy-lazy-eager, so that a drift over the call cancels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
    ap.add_argument("--lazy", type=int, default=0, metavar="STEPS",
                    help="eager against lazy tokenization: build, then train STEPS steps with each")
    ap.add_argument("--batch", type=int, default=64, help="--lazy's per-device batch (the loop's trials: 64)")
    ap.add_argument("--order", default="EL", help="--lazy's arms in the order run, E eager and L lazy: ELLE "
                    "runs each twice, in an order that cancels a drift over the call")
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
    if args.lazy:
        return lazy_against_eager(args, work, model_dir, built)
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


def lazy_against_eager(args, work: Path, model_dir: str, built) -> None:
    """Build and train the same job with eager and with lazy tokenization (INTERN_LAZY_TOKENIZE), in one
    process: the build's seconds, the training's steps per second, and the two against each other."""
    import torch
    from transformers.integrations import MLflowCallback

    from mlintern.schemas import ExperimentPlan
    from mlintern.settings import get_settings
    from mlintern.training.job import TrainJob
    from mlintern.training.loading import load_for_training
    from mlintern.training.sft import build_sft_trainer

    def run(label: str, lazy: str, steps: int, rows_file: Path) -> dict:
        os.environ["INTERN_LAZY_TOKENIZE"] = lazy
        get_settings.cache_clear()
        model, tok = load_for_training(model_dir)
        plan = ExperimentPlan(hyperparameters={"max_steps": steps, "per_device_batch_size": args.batch, "max_length": 256,
                                               "learning_rate": 1e-4})
        job = TrainJob(plan=plan, model_path=model_dir, data_path=str(rows_file), output_dir=str(work / label),
                       device=args.device)
        start = time.time()
        trainer = build_sft_trainer(job, [], model, tok)
        trainer.remove_callback(MLflowCallback)
        build = time.time() - start
        start = time.time()
        out = trainer.train()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        train = time.time() - start
        del trainer, model
        return {"build_s": round(build, 2), "train_s": round(train, 2), "steps": int(out.global_step),
                "steps_per_s": round(out.global_step / train, 3), "total_s": round(build + train, 2)}

    small = work / "warmup.jsonl"
    small.write_text("".join(Path(built.path).read_text().splitlines(keepends=True)[:2000]))
    warmup = run("warmup", "0", 20, small)
    order = args.order.upper()
    if set(order) != {"E", "L"}:
        raise SystemExit(f"--order {args.order!r}: E (eager) and L (lazy) each at least once, nothing else")
    runs = []
    for i, arm in enumerate(order):
        label = {"E": "eager", "L": "lazy"}[arm]
        data = work / f"{label}{i}.jsonl"  # its own file: datasets would reuse another run's cache
        data.write_bytes(Path(built.path).read_bytes())
        runs.append(run(f"{label}{i}", "1" if arm == "L" else "0", args.lazy, data) | {"arm": label, "order": i})
    arms = {label: {k: round(statistics.mean(r[k] for r in runs if r["arm"] == label), 3)
                    for k in ("build_s", "train_s", "steps_per_s", "total_s")} for label in ("eager", "lazy")}
    result = {"host": platform.node(), "cpus": os.cpu_count(),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "rows": built.rows_after, "order": order, "warmup": warmup, "runs": runs, "arms": arms,
              "lazy_over_eager": {k: round(arms["lazy"][k] / arms["eager"][k], 3)
                                  for k in ("build_s", "steps_per_s", "total_s")}}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""One training job: load, train (dev checks at rungs, Optuna pruning, time cap), score dev and save,
from the weights in memory.

It runs inside the persistent per-GPU training worker (mlintern.worker) or, as the fresh-process
path, as `python -m mlintern.training.runner JOB.json OUTCOME.json` (one process per job: what
`accelerate launch` needs, and the baseline the worker is measured against). MLflow logging goes to
the job's run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from mlintern.schemas import Failure, FailureKind, Method
from mlintern.training.callbacks import DivergenceError, DivergenceGuard, loss_tail
from mlintern.training.job import GateOpened, JobWithdrawn, TrainJob, TrainOutcome

log = logging.getLogger("mlintern.training")


class FaultInjector:
    """Test and drill hook: simulates a memory cap or a real NaN inside real training."""

    def __new__(cls, faults: dict, job: TrainJob):
        from transformers import TrainerCallback

        hp = job.plan.hyperparameters

        class _Injector(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                cap = faults.get("oom_above_batch")
                if cap is not None and hp.per_device_batch_size > int(cap):
                    import torch

                    raise torch.OutOfMemoryError(
                        "CUDA out of memory. Tried to allocate 2.00 GiB (injected: micro-batch "
                        f"{hp.per_device_batch_size} > simulated cap {cap})"
                    )

            def on_step_end(self, args, state, control, model=None, **kwargs):
                if faults.get("die_at_step") is not None and state.global_step >= int(faults["die_at_step"]):
                    os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-run, with no goodbye
                lr_cap = faults.get("nan_above_lr")
                if lr_cap is not None and hp.learning_rate > float(lr_cap) and model is not None:
                    import torch

                    with torch.no_grad():  # a real NaN in the weights, propagating through real steps
                        next(p for p in model.parameters() if p.requires_grad).fill_(math.nan)

        return _Injector()


def build_trainer(job: TrainJob, callbacks: list, model, tokenizer):
    if job.plan.method == Method.sft:
        from mlintern.training.sft import build_sft_trainer

        return build_sft_trainer(job, callbacks, model, tokenizer)
    if job.plan.method == Method.dpo:
        from mlintern.training.dpo import build_dpo_trainer

        return build_dpo_trainer(job, callbacks, model, tokenizer)
    from mlintern.training.grpo import build_grpo_trainer

    return build_grpo_trainer(job, callbacks, model, tokenizer)


def save_model(trainer, out: Path, faults: dict | None = None) -> None:
    """Save a full model (LoRA adapters merged) so evaluation and the next plan load it alike.
    Under DDP/FSDP every rank joins the gather; only rank 0 writes and publishes the folder.

    Format: safetensors; bf16 when the model trained with bf16 compute (the GPU path: evaluation
    loads bf16 there too, so the scored model is exactly the saved one, at half the disk of fp32
    master weights); otherwise the weights' own dtype (CPU: fp32, what CPU evaluation uses; rounding
    to bf16 would erase the small updates of short CPU runs)."""
    if faults and faults.get("disk_full_on_save"):
        import errno

        raise OSError(errno.ENOSPC, f"No space left on device: '{out}' (injected)")
    tmp = out.with_suffix(".partial")
    if trainer.is_world_process_zero():
        _remove(tmp)  # left by an attempt that died while saving
    model = trainer.model
    bf16 = getattr(trainer.args, "bf16", False)
    single = trainer.accelerator.num_processes == 1
    if hasattr(model, "merge_and_unload"):
        if trainer.is_world_process_zero():
            merged = model.merge_and_unload()
            (_in_bf16(merged) if bf16 else merged).save_pretrained(tmp)
    elif bf16 and single:  # cast in memory (the job is over): one bf16 write, not fp32 then a rewrite
        _in_bf16(model).save_pretrained(tmp)
    else:
        trainer.save_model(str(tmp))  # gathers sharded (FSDP) weights on every rank
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        tok = getattr(trainer, "processing_class", None)
        if tok is not None:
            getattr(tok, "tokenizer", tok).save_pretrained(tmp)
        for junk in ("training_args.bin",):
            (tmp / junk).unlink(missing_ok=True)
        if bf16 and not single:
            _to_bf16(tmp)
        _remove(out)  # an interrupted earlier attempt at this plan finished saving
        tmp.rename(out)


def _in_bf16(model):
    """The model with its float32 weights cast to bfloat16, in place."""
    import torch

    return model.to(torch.bfloat16)


def _remove(path: Path) -> None:
    import shutil

    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _to_bf16(folder: Path) -> None:
    """Rewrite the float32 tensors of every safetensors file in `folder` as bfloat16 (one file in
    memory at a time) and record the dtype in config.json and the shard index."""
    import torch
    from safetensors.torch import load_file, save_file

    changed, total = False, 0
    for path in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(path))
        if any(t.dtype == torch.float32 for t in tensors.values()):
            tensors = {k: t.to(torch.bfloat16) if t.dtype == torch.float32 else t for k, t in tensors.items()}
            save_file(tensors, str(path), metadata={"format": "pt"})
            changed = True
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    if not changed:
        return
    config = folder / "config.json"
    if config.exists():
        data = json.loads(config.read_text())
        data["dtype"] = "bfloat16"
        if "torch_dtype" in data:
            data["torch_dtype"] = "bfloat16"
        config.write_text(json.dumps(data, indent=2) + "\n")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(data, indent=2) + "\n")


def use_job_tracking(job: TrainJob) -> None:
    """Point transformers' MLflow callback at the job's run (the worker clears the previous job's)."""
    for key, value in (("MLFLOW_RUN_ID", job.mlflow_run_id), ("MLFLOW_TRACKING_URI", job.tracking_uri)):
        if value:
            os.environ[key] = value
    os.environ.setdefault("HF_MLFLOW_LOG_ARTIFACTS", "0")
    os.environ.setdefault("MLFLOW_FLATTEN_PARAMS", "1")


def _curve_logger(job: TrainJob):
    if not job.mlflow_run_id:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(job.tracking_uri)

    def log_point(point, step: int) -> None:
        client.log_metric(job.mlflow_run_id, "dev_score", point.value, step=step)
        client.log_metric(job.mlflow_run_id, "dev_score_train_seconds", point.train_seconds, step=step)

    return log_point


def run(job: TrainJob, faults: dict | None = None, cache=None,
        gate: Callable[[], GateOpened] | None = None) -> TrainOutcome:
    """Train `job`, check dev at its rungs (pruning), score dev at the end and save, all from the
    weights in memory. Raises on failure (the caller classifies); returns the outcome otherwise.

    `gate` (the persistent worker's build-ahead) is called once the model is loaded and the trainer built;
    it returns when this job has the GPU, and the job's clock (its time cap, `train_seconds`) starts then.
    A provisional job's gate brings the limits the controller set when it released it: they replace the
    job's (its time cap, pacing target and the pruner's peers), within the steps its rows were built for.
    It raises JobWithdrawn if the controller withdrew the job instead."""
    from mlintern.evaluation.lmeval import evaluate_loaded
    from mlintern.selection import beats
    from mlintern.training.loading import load_for_training
    from mlintern.training.pruning import FidelityCallback
    from mlintern.training.sft import attn_implementation

    faults = faults if faults is not None else job.faults
    use_job_tracking(job)
    hp = job.plan.hyperparameters
    # GRPO's loss starts near 0 (it is KL-dominated), so only NaN/inf count as divergence there.
    guard = DivergenceGuard(factor=math.inf) if job.plan.method == Method.grpo else DivergenceGuard()
    start = time.time()
    phases: dict[str, float] = {}
    model, tokenizer = load_for_training(job.model_path, attn_implementation(job), cache)
    phases["load"] = time.time() - start
    holder: dict = {}

    def score_dev(rung: bool):
        spec = job.evaluation
        if rung and job.fidelity.rung_dev_items:
            spec = spec.model_copy(update={"limit": job.fidelity.rung_dev_items})
        return evaluate_loaded(holder["trainer"].model, tokenizer, spec, seed=job.seed)

    eps = hp.per_device_batch_size * hp.gradient_accumulation_steps * int(os.environ.get("WORLD_SIZE", "1"))
    fidelity = FidelityCallback(job.fidelity, score_dev if job.evaluation else None, eps, _curve_logger(job),
                                job_started=start)
    callbacks = [guard, fidelity] + ([FaultInjector(faults, job)] if faults else [])
    mark = time.time()
    trainer = build_trainer(job, callbacks, model, tokenizer)
    holder["trainer"] = trainer
    phases["build"] = time.time() - mark
    if gate is not None:  # built ahead of the GPU: the load and the build are outside the job, by the rows
        phases["ahead"] = time.time() - start
        start, released = gate()
        if released is not None:
            from mlintern.release import released_limits

            job = job.model_copy(update={"fidelity": released_limits(job.fidelity, released)})
            fidelity.update(job.fidelity)
        fidelity.set_job_start(start)
    mark = time.time()
    result = trainer.train()
    phases["train_call"] = time.time() - mark
    loop_seconds = fidelity.train_clock()
    if guard.reason:
        raise DivergenceError(f"training stopped early: {guard.reason}")
    steps = int(result.global_step)
    tokens = next((int(e["num_tokens"]) for e in reversed(trainer.state.log_history) if "num_tokens" in e), 0)
    outcome = TrainOutcome(
        status="pruned" if fidelity.pruned_at is not None else "succeeded", train_loss=guard.last_loss,
        recent_loss=loss_tail(guard.losses),
        steps=steps, examples=steps * eps, tokens=tokens, train_loop_seconds=loop_seconds,
        pruned_at=fidelity.pruned_at, stopped_by_time_limit=fidelity.time_capped,
        warmup_seconds=fidelity.warmup_seconds,
    )
    if outcome.status == "succeeded":
        mark = time.time()
        if job.evaluation is not None:
            if fidelity.last_eval_step != steps:
                fidelity.check(steps, None)
            outcome.dev = fidelity.last_score
        phases["final_eval"] = time.time() - mark
        above = job.fidelity.confirm_above
        if job.confirmation is not None and above is not None and outcome.dev is not None and beats(
                outcome.dev, above, job.fidelity.noise_z):
            mark = time.time()
            outcome.confirm = evaluate_loaded(trainer.model, tokenizer, job.confirmation, seed=job.seed)
            phases["confirm_eval"] = time.time() - mark
        mark = time.time()
        out = Path(job.output_dir) / "model"
        save_model(trainer, out, faults)
        outcome.model_path = str(out)
        phases["save"] = time.time() - mark
    elif fidelity.last_score is not None:
        outcome.dev = fidelity.last_score  # the pruned trial's last rung
    outcome.curve = fidelity.curve
    outcome.eval_seconds = fidelity.eval_seconds + phases.get("confirm_eval", 0.0)
    outcome.train_seconds = time.time() - start
    outcome.phases = {k: round(v, 3) for k, v in phases.items()}
    return outcome


def run_safely(job: TrainJob, faults: dict | None = None, cache=None,
               gate: Callable[[], GateOpened] | None = None) -> TrainOutcome:
    """`run`, with any exception turned into a classified failed outcome (the log keeps the traceback).
    A withdrawn job is not a failure of the job: it ends as one, with the reason, and no traceback."""
    try:
        return run(job, faults, cache, gate)
    except JobWithdrawn as exc:
        return TrainOutcome(status="failed", failure=Failure(kind=FailureKind.crash, message=str(exc)))
    except Exception as exc:  # classified from the type, message and traceback
        from mlintern.training.failures import classify

        traceback.print_exc()
        return TrainOutcome(status="failed", failure=classify(exc, traceback.format_exc()))


def main(argv: list[str]) -> int:
    """The fresh-process path: `python -m mlintern.training.runner JOB.json OUTCOME.json [FAULTS]`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    job_path, outcome_path = Path(argv[0]), Path(argv[1])
    job = TrainJob.model_validate_json(job_path.read_text())
    faults = json.loads(argv[2]) if len(argv) > 2 and argv[2] else None
    outcome = run_safely(job, faults)
    if int(os.environ.get("RANK", "0")) == 0:  # one outcome file, from rank 0
        outcome_path.write_text(outcome.model_dump_json())
    return 0 if outcome.status != "failed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

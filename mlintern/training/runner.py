"""Child-process entry point: `python -m mlintern.training.runner JOB.json OUTCOME.json`.

Running each training job in its own process releases all memory between experiments,
lets the controller enforce a hard timeout, and turns a crash into a classified failure
instead of a dead controller. MLflow logging goes to the run named by MLFLOW_RUN_ID.
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
from pathlib import Path

from mlintern.schemas import Method
from mlintern.training.callbacks import DivergenceError, DivergenceGuard
from mlintern.training.job import TrainJob, TrainOutcome

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


def build_trainer(job: TrainJob, callbacks: list):
    if job.plan.method == Method.sft:
        from mlintern.training.sft import build_sft_trainer

        return build_sft_trainer(job, callbacks)
    if job.plan.method == Method.dpo:
        from mlintern.training.dpo import build_dpo_trainer

        return build_dpo_trainer(job, callbacks)
    from mlintern.training.grpo import build_grpo_trainer

    return build_grpo_trainer(job, callbacks)


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
    if hasattr(model, "merge_and_unload"):
        if trainer.is_world_process_zero():
            model.merge_and_unload().save_pretrained(tmp)
    else:
        trainer.save_model(str(tmp))  # gathers sharded (FSDP) weights on every rank
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        tok = getattr(trainer, "processing_class", None)
        if tok is not None:
            getattr(tok, "tokenizer", tok).save_pretrained(tmp)
        for junk in ("training_args.bin",):
            (tmp / junk).unlink(missing_ok=True)
        if getattr(trainer.args, "bf16", False):
            _to_bf16(tmp)
        _remove(out)  # an interrupted earlier attempt at this plan finished saving
        tmp.rename(out)


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


def run(job: TrainJob, faults: dict | None = None) -> TrainOutcome:
    # GRPO's loss starts near 0 (it is KL-dominated), so only NaN/inf count as divergence there.
    guard = DivergenceGuard(factor=math.inf) if job.plan.method == Method.grpo else DivergenceGuard()
    callbacks = [guard] + ([FaultInjector(faults, job)] if faults else [])
    start = time.time()
    trainer = build_trainer(job, callbacks)
    result = trainer.train()
    if guard.reason:
        raise DivergenceError(f"training stopped early: {guard.reason}")
    out = Path(job.output_dir) / "model"
    save_model(trainer, out, faults)
    return TrainOutcome(
        status="succeeded", model_dir=str(out), final_loss=guard.last_loss,
        steps=int(result.global_step), train_seconds=time.time() - start,
    )


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    job_path, outcome_path = Path(argv[0]), Path(argv[1])
    job = TrainJob.model_validate_json(job_path.read_text())
    faults = json.loads(argv[2]) if len(argv) > 2 and argv[2] else None
    try:
        outcome = run(job, faults)
        code = 0
    except Exception as exc:  # classified by the parent from the type, message and log tail
        from mlintern.training.failures import classify

        traceback.print_exc()
        outcome = TrainOutcome(status="failed", failure=classify(exc, traceback.format_exc()))
        code = 1
    if int(os.environ.get("RANK", "0")) == 0:  # one outcome file, from rank 0
        outcome_path.write_text(outcome.model_dump_json())
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

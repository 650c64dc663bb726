"""The project's training child process, unchanged except for two bench hooks.

`python bench/child_train.py JOB.json OUTCOME.json TIMES.json` runs mlintern.training.runner.main
(the real SFT path: TrainJob -> base_args -> trl SFTConfig/SFTTrainer -> train -> save) with
  * report_to="none" instead of ["mlflow"] (MLflow is not on the GPU machine), and
  * timestamps written to TIMES.json: process start, imports done, trainer built, train begin/end
    (GPU-busy), model saved. Wall clock (time.time()) so the parent can line them up with its own.
BENCH_SFT_OVERRIDES (JSON) may add SFTConfig fields (used to try the recommended fast settings).
"""

from __future__ import annotations

import json
import os
import sys
import time

T = {"proc_start": time.time()}
# BENCH_SRC: a frozen copy of the mlintern package (bench/stage.sh snapshots it), else this checkout
sys.path.insert(0, os.environ.get("BENCH_SRC") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mlintern.training.common as common  # noqa: E402

_orig_base_args = common.base_args


def _base_args(job):
    args = dict(_orig_base_args(job), report_to="none")
    args.update(json.loads(os.environ.get("BENCH_SFT_OVERRIDES") or "{}"))
    return args


common.base_args = _base_args  # before sft.py imports the name

import mlintern.training.runner as runner  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


class _Times(TrainerCallback):
    def on_train_begin(self, args, state, control, **kw):
        import torch

        torch.cuda.synchronize() if torch.cuda.is_available() else None
        T["train_begin"] = time.time()

    def on_train_end(self, args, state, control, **kw):
        import torch

        torch.cuda.synchronize() if torch.cuda.is_available() else None
        T["train_end"] = time.time()


_orig_build, _orig_save = runner.build_trainer, runner.save_model


def _build(job, callbacks):
    T["build_begin"] = time.time()
    trainer = _orig_build(job, callbacks)
    trainer.add_callback(_Times())
    T["build_end"] = time.time()
    return trainer


def _save(trainer, out, *a, **k):
    T["save_begin"] = time.time()
    _orig_save(trainer, out, *a, **k)
    T["save_end"] = time.time()


runner.build_trainer, runner.save_model = _build, _save
import trl  # noqa: E402,F401  (imported here so the import time is counted before build)

T["imports_done"] = time.time()

if __name__ == "__main__":
    code = runner.main(sys.argv[1:3])
    T["proc_end"] = time.time()
    with open(sys.argv[3], "w") as f:
        json.dump(T, f)
    sys.exit(code)

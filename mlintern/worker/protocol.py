"""Messages between a training task and the persistent worker (JSON over a Unix socket)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from mlintern.evaluation.lmeval import EvalSpec
from mlintern.schemas import EvalScore, Fidelity
from mlintern.training.job import TrainJob, TrainOutcome


class EvalJob(BaseModel):
    model_path: str
    spec: EvalSpec
    device: str = "auto"


class WarmJob(BaseModel):
    """Load a model into the worker's cache ahead of the job that needs it (while that job's data is built)."""
    model_path: str
    packing: bool = False  # with `device`, picks the attention the job will load the model with
    device: str = "auto"


class WorkerRequest(BaseModel):
    kind: Literal["train", "eval", "ping", "warm"]
    train: TrainJob | None = None
    eval: EvalJob | None = None
    warm: WarmJob | None = None
    log_path: str | None = None  # the job's own log (stdout and stderr of the job go there)
    # Build ahead: the worker loads the model and builds the trainer, answers `ready`, and trains only when
    # the client, holding the GPU, sends `Go` (an evaluation waits for it before it starts).
    gate: bool = False


class Go(BaseModel):
    """The client's answer to a gated job's `ready`: it holds the GPU now, so train (with `fidelity`, the limits
    the controller set when it released a provisional job, where given); or `withdraw`: the job is not wanted
    after all and ends without touching the GPU (the worker stays up for the next one)."""

    fidelity: Fidelity | None = None
    withdraw: bool = False


class WorkerReply(BaseModel):
    ok: bool
    outcome: TrainOutcome | None = None
    score: EvalScore | None = None
    error: str | None = None
    job_seconds: float = 0.0  # wall time of the job inside the worker (load, train, eval, save); gated: from b"go"
    worker_pid: int = 0
    jobs_done: int = 0  # jobs this worker ran before this one (0: a fresh worker)
    cache_hits: int = 0
    start_seconds: float = 0.0  # set by the client: seconds it spent starting the worker for this job (0: it ran)
    ready: bool = False  # a gated job's first message: built, waiting for the GPU (not the answer)
    gpu_wait_seconds: float = 0.0  # set by the client: seconds a gated job, built, waited for the GPU
    gpu_started_at: float | None = None  # set by the client: Unix time a gated job got the GPU


# Environment that shapes a worker's behaviour: two processes that differ here get different workers.
# Per-job settings (work dir, tracking URI, fault injection) travel in the request instead.
_PER_JOB = {"INTERN_WORK_DIR", "INTERN_TRACKING_URI", "INTERN_INJECT_FAULTS", "INTERN_WORKER_OWNER_PID",
            "INTERN_EXPERIMENT_DEPLOYMENT", "INTERN_LLM_API_KEY"}
_PREFIXES = ("INTERN_", "HF_", "TRANSFORMERS_", "CUDA_", "PYTORCH_", "TORCH", "NCCL_", "OMP_", "MKL_")


def code_fingerprint() -> str:
    """Changes when the installed mlintern code changes, so a stale worker is never reused."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_mtime_ns}:{st.st_size}".encode())
    return h.hexdigest()[:12]


def worker_key() -> str:
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_PREFIXES) and k not in _PER_JOB)
    h = hashlib.sha256(repr((sys.executable, code_fingerprint(), env)).encode())
    return h.hexdigest()[:16]


# A Unix socket path holds at most 107 bytes; ours adds about 50 to the runtime dir.
_MAX_RUNTIME_DIR = 56


def runtime_dir() -> Path:
    """Sockets and locks live on local disk (a Unix socket does not work on NFS), per user. A
    configured folder too deep for a socket path falls back to /tmp."""
    base = os.environ.get("INTERN_RUNTIME_DIR") or os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    path = Path(base) / f"ml-intern-{os.getuid()}"
    if len(str(path)) > _MAX_RUNTIME_DIR:
        path = Path("/tmp") / f"ml-intern-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path

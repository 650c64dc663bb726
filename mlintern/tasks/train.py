"""Run one training job with a hard timeout, on this device's persistent training worker (default)
or in a fresh child process; classify what went wrong."""

from __future__ import annotations

import ctypes
import fcntl
import functools
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from prefect import task
from prefect.concurrency.sync import concurrency
from prefect.cache_policies import NO_CACHE

from mlintern.schemas import Failure, FailureKind
from mlintern.settings import get_settings
from mlintern.training.failures import classify
from mlintern.training.job import TrainJob, TrainOutcome
from mlintern.tasks import run_logger
from mlintern.worker.protocol import runtime_dir


def training_command(job_path: Path, outcome_path: Path, faults: str | None) -> list[str]:
    """Single process here; `accelerate launch` when INTERN_ACCELERATE_CONFIG names a config."""
    args = ["-m", "mlintern.training.runner", str(job_path), str(outcome_path), faults or ""]
    config = os.environ.get("INTERN_ACCELERATE_CONFIG")
    if config:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
        if os.environ.get("INTERN_ACCELERATE_NUM_PROCESSES"):  # one GPU per process on this host
            launch += ["--num_processes", os.environ["INTERN_ACCELERATE_NUM_PROCESSES"]]
        return [*launch, *args]
    return [sys.executable, *args]


@contextmanager
def gpu_slot():
    """Hold this worker's GPU while its job runs, so no GPU runs two jobs: a lock on this host first,
    then Prefect's global concurrency limits `gpu` and `gpu-<id>` (made by deployments/setup.sh). A GPU's
    worker takes a second experiment while one trains (deployments/start_workers.sh, --limit 2), whose
    flow run builds its rows meanwhile, and its training worker (the GPU's second, INTERN_BUILD_AHEAD)
    loads the model and builds the trainer; then it waits here, inside the `train` task, so that neither
    the task's start nor the end of the one before it stands between the two jobs. The host lock hands the GPU over the moment the
    job before ends; Prefect alone would have it retry after up to 30 s (the server's Retry-After for a
    limit whose slots are held for long). Yields the seconds it waited. A no-op where no GPU id is set."""
    gid = os.environ.get("INTERN_GPU_ID")
    if not gid:
        yield 0.0
        return
    began = time.time()
    with open(gpu_lock_path(gid), "a+") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released by the kernel if this process dies
        with concurrency(["gpu", f"gpu-{gid}"], occupy=1, strict=False):
            yield time.time() - began


def gpu_lock_path(gid: str) -> Path:
    """GPU `gid`'s host lock, taken by `gpu_slot`."""
    return runtime_dir() / f"gpu-{gid}.lock"


@contextmanager
def released_gpu_slot(hold: str, wait_s: float):
    """A provisional experiment's GPU: the controller's word first (mlintern.release; JobWithdrawn if it
    withdraws the job, or says nothing within `wait_s`), then `gpu_slot`. Yields the limits it released the
    job with (None: its own)."""
    from mlintern.release import wait_for_release

    released = wait_for_release(hold, wait_s)
    with gpu_slot():
        yield released


def use_worker() -> bool:
    """The persistent worker, unless a job needs several processes (accelerate) or it is turned off."""
    return get_settings().train_worker == "persistent" and not os.environ.get("INTERN_ACCELERATE_CONFIG")


@task(name="train", cache_policy=NO_CACHE, retries=0, log_prints=True)
def train(job: TrainJob, mlflow_run_id: str, tracking_uri: str, timeout_s: float, hold: str | None = None,
          hold_s: float = 0.0) -> TrainOutcome:
    """Train (with dev checks, pruning and the final dev score when the job asks for them). Failures
    come back as a classified TrainOutcome, not an exception, so the controller can diagnose and retry
    with a changed plan. `hold`: a provisional experiment's release (mlintern.release): the job is built,
    then waits up to `hold_s` for the controller's word before it takes the GPU; JobWithdrawn if withdrawn."""
    logger = run_logger()
    settings = get_settings()
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train.log"
    faults = job.faults if job.faults is not None else (
        json.loads(settings.inject_faults) if settings.inject_faults else None)
    job = job.model_copy(update={"mlflow_run_id": mlflow_run_id, "tracking_uri": tracking_uri, "faults": faults})
    logger.info("training plan %s (%s, %d steps) on the %s path", job.plan.plan_id(), job.plan.stage,
                job.plan.hyperparameters.max_steps, "persistent-worker" if use_worker() else "fresh-process")
    if use_worker():  # the worker builds the job first and takes the GPU (gpu_slot) only to train it
        gpu = gpu_slot if hold is None else functools.partial(released_gpu_slot, hold, hold_s)
        outcome = _on_worker(job, log_path, timeout_s, gpu)
    else:
        if hold is not None:
            from mlintern.release import released_limits, wait_for_release

            if (released := wait_for_release(hold, hold_s)) is not None:
                job = job.model_copy(update={"fidelity": released_limits(job.fidelity, released)})
        with gpu_slot() as waited_s:
            began = time.time()
            outcome = _in_child(job, out, log_path, timeout_s)
        outcome.phases["gpu_wait"], outcome.job_started_at = round(waited_s, 3), began
    if outcome.failure is not None and not outcome.failure.log_tail:
        outcome.failure.log_tail = _tail(log_path)
    if outcome.status == "failed":
        logger.warning("plan %s failed (%s): %s", job.plan.plan_id(), outcome.failure.kind.value,
                       outcome.failure.message[:300])
    return outcome


def _on_worker(job: TrainJob, log_path: Path, timeout_s: float, gpu) -> TrainOutcome:
    from mlintern.worker.client import WorkerDied, WorkerTimeout, submit
    from mlintern.worker.protocol import WorkerRequest

    start = time.time()
    try:
        reply = submit(WorkerRequest(kind="train", train=job, log_path=str(log_path)), timeout_s, gpu=gpu)
    # a failed job is charged from when it had the GPU (a gated job's build and its wait for the GPU are not
    # accelerator time), or from its submission where it died before it had it
    except WorkerTimeout as exc:
        began = exc.gpu_started_at or start
        return TrainOutcome(status="failed", job_seconds=time.time() - began, job_started_at=began, failure=Failure(
            kind=FailureKind.timeout, message=f"training exceeded its {timeout_s:.0f}s limit: {exc}"))
    except WorkerDied as exc:
        tail = _tail(log_path)
        failure = classify(None, tail, exit_code=-9 if "code -9" in str(exc) else None)
        failure.message = f"{exc}: {failure.message}"
        began = exc.gpu_started_at or start
        return TrainOutcome(status="failed", job_seconds=time.time() - began, job_started_at=began, failure=failure)
    outcome = reply.outcome
    outcome.job_seconds = reply.job_seconds
    outcome.phases["gpu_wait"] = round(reply.gpu_wait_seconds, 3)
    outcome.job_started_at = reply.gpu_started_at or start  # no GPU was taken: the job failed in its build
    if reply.start_seconds:  # the worker was started for this job: where a first job's fixed cost went
        outcome.phases["worker_start"] = round(reply.start_seconds, 3)
    return outcome


def _in_child(job: TrainJob, out: Path, log_path: Path, timeout_s: float) -> TrainOutcome:
    job_path, outcome_path = out / "job.json", out / "outcome.json"
    job_path.write_text(job.model_dump_json())
    outcome_path.unlink(missing_ok=True)
    cmd = training_command(job_path, outcome_path, None)
    start = time.time()
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return TrainOutcome(status="failed", job_seconds=time.time() - start, failure=Failure(
                kind=FailureKind.timeout, log_tail=_tail(log_path),
                message=f"training exceeded its {timeout_s:.0f}s limit and was killed"))
    if outcome_path.exists():
        outcome = TrainOutcome.model_validate_json(outcome_path.read_text())
    else:  # died without writing an outcome: killed (OOM killer) or a hard crash
        tail = _tail(log_path)
        outcome = TrainOutcome(status="failed", failure=classify(None, tail, exit_code=code))
        outcome.failure.message = f"training process exited with code {code}: {outcome.failure.message}"
    outcome.job_seconds = time.time() - start
    return outcome


def _die_with_parent() -> None:
    """Linux: the training process is SIGKILLed when the controller dies, so a killed and
    restarted controller never races an orphan still writing to the same run."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(path: Path, n: int = 6000) -> str:
    try:
        data = path.read_bytes()[-n:]
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")

"""Run one training job in a child process with a hard timeout; classify what went wrong."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlintern.schemas import Failure, FailureKind
from mlintern.settings import get_settings
from tasks import run_logger
from mlintern.training.failures import classify
from mlintern.training.job import TrainJob, TrainOutcome


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


@task(name="train", cache_policy=NO_CACHE, retries=0, log_prints=True)
def train(job: TrainJob, mlflow_run_id: str, tracking_uri: str, timeout_s: float) -> TrainOutcome:
    """Train in a child process. Failures come back as a classified TrainOutcome, not an exception,
    so the controller can diagnose and retry with a changed plan."""
    logger = run_logger()
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    job_path, outcome_path, log_path = out / "job.json", out / "outcome.json", out / "train.log"
    job_path.write_text(job.model_dump_json())
    outcome_path.unlink(missing_ok=True)
    env = dict(os.environ, MLFLOW_RUN_ID=mlflow_run_id, MLFLOW_TRACKING_URI=tracking_uri,
               HF_MLFLOW_LOG_ARTIFACTS="0", MLFLOW_FLATTEN_PARAMS="1")
    cmd = training_command(job_path, outcome_path, get_settings().inject_faults)
    logger.info("training plan %s: %s", job.plan.plan_id(), " ".join(cmd[1:4]))
    start = time.time()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=_die_with_parent)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            tail = _tail(log_path)
            return TrainOutcome(status="failed", train_seconds=time.time() - start, failure=Failure(
                kind=FailureKind.timeout, log_tail=tail,
                message=f"training exceeded its {timeout_s:.0f}s limit and was killed"))
    tail = _tail(log_path)
    if outcome_path.exists():
        outcome = TrainOutcome.model_validate_json(outcome_path.read_text())
        if outcome.failure is not None:
            outcome.failure.log_tail = tail
    else:  # died without writing an outcome: killed (OOM killer) or a hard crash
        outcome = TrainOutcome(status="failed", failure=classify(None, tail, exit_code=code))
        outcome.failure.message = f"training process exited with code {code}: {outcome.failure.message}"
    outcome.wall_seconds = time.time() - start
    outcome.train_seconds = outcome.train_seconds or outcome.wall_seconds
    if outcome.status == "failed":
        logger.warning("plan %s failed (%s): %s", job.plan.plan_id(), outcome.failure.kind.value,
                       outcome.failure.message[:300])
    return outcome


def _die_with_parent() -> None:
    """Linux: the training process is SIGKILLed when the controller dies, so a killed and
    restarted controller never races an orphan still writing to the same run."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(path: Path, n: int = 6000) -> str:
    data = path.read_bytes()[-n:]
    return data.decode("utf-8", errors="replace")

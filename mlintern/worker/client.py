"""Send a job to this process's persistent training worker, starting the worker when none runs."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Client
from pathlib import Path

from mlintern.schemas import Fidelity
from mlintern.training.job import JobWithdrawn
from mlintern.worker.protocol import Go, WarmJob, WorkerReply, WorkerRequest, runtime_dir, worker_key

log = logging.getLogger(__name__)
WITHDRAW_TIMEOUT_S = 60.0  # a withdrawn job's answer: the worker frees the built trainer
START_TIMEOUT_S = 300.0  # imports of torch + transformers + trl + lm-eval on a busy 2-core box
_spawned: dict[str, subprocess.Popen] = {}  # workers this process started (their exit codes are ours to read)


class WorkerDied(RuntimeError):
    """The worker process ended during the job (SIGKILL, the OOM killer, a hard crash). `gpu_started_at`:
    when a gated job had taken the GPU (None: before it did), where the budget's count of it starts."""

    def __init__(self, message: str, gpu_started_at: float | None = None):
        super().__init__(message)
        self.gpu_started_at = gpu_started_at


class WorkerTimeout(RuntimeError):
    """The job outran its timeout; the worker was killed. `gpu_started_at` as for WorkerDied."""

    def __init__(self, message: str, gpu_started_at: float | None = None):
        super().__init__(message)
        self.gpu_started_at = gpu_started_at


@dataclass
class WorkerPaths:
    folder: Path

    @property
    def sock(self) -> Path:
        return self.folder / "sock"

    @property
    def lock(self) -> Path:
        return self.folder / "lock"

    @property
    def pid(self) -> Path:
        return self.folder / "pid"

    @property
    def log(self) -> Path:
        return self.folder / "worker.log"

    @property
    def authkey(self) -> Path:
        return self.folder / "authkey"

    def worker_pid(self) -> int | None:
        try:
            return int(self.pid.read_text())
        except (OSError, ValueError):
            return None


def slot_count() -> int:
    """Workers for this process's device: two on a GPU with build-ahead on (one trains while the other
    builds the next job), else one (on a CPU, two workers would train side by side)."""
    from mlintern.settings import get_settings

    return 2 if os.environ.get("INTERN_GPU_ID") and get_settings().build_ahead else 1


def paths(slot: int = 0) -> WorkerPaths:
    folder = runtime_dir() / (f"worker-{worker_key()}" + (f"-{slot}" if slot else ""))
    folder.mkdir(mode=0o700, exist_ok=True)
    return WorkerPaths(folder)


def _free_slot(lock_files: list) -> int | None:
    """The first worker whose lock this process could take now (the lock is then held), or None."""
    for slot, lock_file in enumerate(lock_files):
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return slot
        except BlockingIOError:
            continue
    return None


def idle_seconds() -> float:
    return float(os.environ.get("INTERN_WORKER_IDLE_S", "600"))


def _owner() -> int:
    """The worker lives as long as this pid: INTERN_WORKER_OWNER_PID (the Prefect worker, set by
    deployments/start_workers.sh) or, by default, the process that starts it (the controller)."""
    return int(os.environ.get("INTERN_WORKER_OWNER_PID") or os.getpid())


def _connect(p: WorkerPaths):
    return Client(str(p.sock), family="AF_UNIX", authkey=p.authkey.read_bytes())


def _spawn(p: WorkerPaths) -> None:
    p.sock.unlink(missing_ok=True)
    p.authkey.write_bytes(secrets.token_bytes(32))
    p.authkey.chmod(0o600)
    log_file = open(p.log, "ab")
    cmd = [sys.executable, "-m", "mlintern.worker.server", "--dir", str(p.folder), "--owner", str(_owner()),
           "--idle", str(idle_seconds())]
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ))
    _spawned[str(p.folder)] = proc
    log.info("started a training worker (pid %d, log %s)", proc.pid, p.log)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise WorkerDied(f"the training worker exited with code {proc.returncode} while starting; "
                             f"its log ({p.log}) ends with:\n{_tail(p.log)}")
        if p.sock.exists():
            try:
                _connect(p).close()
                return
            except (ConnectionRefusedError, FileNotFoundError, EOFError, OSError):
                pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise WorkerTimeout(f"the training worker did not start within {START_TIMEOUT_S:.0f} s; see {p.log}")


@contextmanager
def _slot(timeout_s: float | None, only: int | None = None):
    """Hold one of this device's workers (its lock; `only`: that one) and yield its paths; wait for one at
    most `timeout_s` (None: do not wait, yield None when all are busy)."""
    slots = [paths(i) for i in range(slot_count()) if only is None or i == only]
    with ExitStack() as stack:
        locks = [stack.enter_context(open(p.lock, "a+")) for p in slots]
        deadline = time.time() + (timeout_s or 0.0)
        while (slot := _free_slot(locks)) is None:
            if timeout_s is None:
                yield None
                return
            if time.time() > deadline:
                raise WorkerTimeout(f"waited {timeout_s:.0f} s for this device's training worker, "
                                    "which is busy with another job") from None
            time.sleep(0.5)
        yield slots[slot]


def kill(p: WorkerPaths) -> None:
    pid = p.worker_pid()
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc = _spawned.pop(str(p.folder), None)
    if proc is not None:
        proc.wait()
    p.sock.unlink(missing_ok=True)
    p.pid.unlink(missing_ok=True)


def _reap() -> None:
    """Collect the exit status of workers this process started that have since exited (no zombies)."""
    for key, proc in list(_spawned.items()):
        if proc.poll() is not None:
            _spawned.pop(key, None)


def submit(req: WorkerRequest, timeout_s: float, queue_timeout_s: float | None = None,
           gpu: Callable[[], AbstractContextManager] | None = None) -> WorkerReply:
    """Run `req` on one of this device's workers; wait at most `timeout_s` for the job itself.

    With `gpu` (a context manager that holds the device, tasks.train.gpu_slot), the job is gated: the
    worker loads and builds it first, then the GPU is taken and held until the answer, and only that part
    counts in `job_seconds`. On a GPU a second worker builds the queued job while the first trains.
    Where `gpu` yields a Fidelity (a provisional job's release), the job trains to it; where it raises
    JobWithdrawn, the worker drops the built job and JobWithdrawn is raised here."""
    _reap()
    with _slot(queue_timeout_s if queue_timeout_s is not None else timeout_s) as p:
        if gpu is not None:
            req = req.model_copy(update={"gate": True})
        reply = _ask(p, req, timeout_s, kill_on_timeout=True, gpu=gpu)
    if reply is None:
        raise WorkerTimeout(f"the job outran its {timeout_s:.0f} s limit; its training worker was killed")
    return reply


def _ask(p: WorkerPaths, req: WorkerRequest, timeout_s: float, kill_on_timeout: bool,
         gpu: Callable[[], AbstractContextManager] | None = None) -> WorkerReply | None:
    """Send `req` to the running worker, or to one started now (the caller holds the lock), and return
    its answer with `start_seconds` set; None when none came within `timeout_s` (the worker killed first
    if `kill_on_timeout`). A gated job's `ready` is answered with `Go` once `gpu` is held; the time spent
    waiting for it is not part of `timeout_s`."""
    try:
        conn, started_s = _connect(p), 0.0
    except (ConnectionRefusedError, FileNotFoundError, EOFError, OSError):
        start = time.time()
        _spawn(p)
        conn, started_s = _connect(p), time.time() - start
    waited, began, withdrawn = 0.0, None, None
    with conn, ExitStack() as held:
        conn.send_bytes(req.model_dump_json().encode())
        deadline = time.time() + timeout_s
        while True:
            if not conn.poll(max(0.0, deadline - time.time())):
                if kill_on_timeout:
                    kill(p)
                    raise WorkerTimeout(f"the job outran its {timeout_s:.0f} s limit; its training worker was "
                                        "killed", began)
                return None
            try:
                reply = WorkerReply.model_validate_json(conn.recv_bytes())
            except (EOFError, OSError):
                raise WorkerDied(_death_message(p), began) from None
            if not reply.ready:
                break
            mark = time.time()
            try:
                released = held.enter_context(gpu())
            except JobWithdrawn as exc:  # the worker drops the built job and answers; it stays up
                withdrawn, deadline = exc, time.time() + WITHDRAW_TIMEOUT_S
                conn.send_bytes(Go(withdraw=True).model_dump_json().encode())
                continue
            began = time.time()
            waited = began - mark
            deadline += waited
            conn.send_bytes(Go(fidelity=released if isinstance(released, Fidelity) else None)
                            .model_dump_json().encode())
    if withdrawn is not None:
        raise withdrawn
    reply.start_seconds, reply.gpu_wait_seconds, reply.gpu_started_at = started_s, waited, began
    return reply


def warm(model_path: str | None = None, packing: bool = False, device: str = "auto",
         timeout_s: float = START_TIMEOUT_S, slot: int | None = None) -> WorkerReply | None:
    """Start a free worker of this device (`slot`: that one) if none runs, and load `model_path` into its
    cache, so the job that follows pays neither (the experiment flow calls it while the job's data is
    built; deployments/start_workers.sh, for each worker, when a GPU's Prefect worker starts). Returns
    None at once if it is busy (it runs, then): a warm-up never queues behind a job."""
    _reap()
    with _slot(None, slot) as p:
        if p is None:
            return None
        req = WorkerRequest(kind="warm" if model_path else "ping",
                            warm=WarmJob(model_path=model_path, packing=packing, device=device)
                            if model_path else None)
        reply = _ask(p, req, timeout_s, kill_on_timeout=False)
    if reply is None:
        raise WorkerTimeout(f"warming the training worker took over {timeout_s:.0f} s; see {p.log}")
    return reply


def _death_message(p: WorkerPaths) -> str:
    proc = _spawned.pop(str(p.folder), None)
    code = None
    if proc is not None:
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    pid = p.worker_pid()
    p.sock.unlink(missing_ok=True)
    p.pid.unlink(missing_ok=True)
    how = f"exited with code {code}" if code is not None else "died"
    return (f"the training worker (pid {pid}) {how} during the job (SIGKILL or the out-of-memory killer "
            f"if -9); the next job starts a new worker")


def stop() -> bool:
    """Stop this process's workers, if any runs (used at the end of an embedded loop)."""
    running = [p for p in (paths(i) for i in range(slot_count())) if p.worker_pid() is not None]
    for p in running:
        kill(p)
    return bool(running)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", errors="replace")
    except OSError:
        return ""

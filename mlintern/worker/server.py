"""The persistent training worker process: `python -m mlintern.worker.server --dir DIR --owner PID`.

DIR holds `sock` (the Unix socket), `authkey` (0600, written by whoever started it), `pid` and
`worker.log`. One job at a time; see mlintern/worker/__init__.py for the contract.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import os
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from multiprocessing.connection import Connection, Listener
from pathlib import Path

from mlintern.training.job import GateOpened, JobWithdrawn
from mlintern.worker.protocol import Go, WorkerReply, WorkerRequest

log = logging.getLogger("mlintern.worker")
_FATAL = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS_EXECUTION_FAILED",
          "NCCL error", "unspecified launch failure")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    def __init__(self, folder: Path, owner: int | None, idle_s: float):
        from mlintern.evaluation.lmeval import _device
        from mlintern.training.loading import ModelCache

        self.folder = folder
        self.owner = owner
        self.idle_s = idle_s
        self.busy = False
        self.last_active = time.time()
        self.jobs_done = 0
        self.cache = ModelCache(size=2, device=_device("auto"))

    def watchdog(self) -> None:
        """Exit when the owner is gone or the worker has been idle too long (never mid-job)."""
        while True:
            time.sleep(1.0)
            if self.busy:
                continue
            if self.owner and not _alive(self.owner):
                log.info("owner %s is gone: exiting", self.owner)
                self._exit(0)
            if time.time() - self.last_active > self.idle_s:
                log.info("idle for %.0f s: exiting", self.idle_s)
                self._exit(0)

    def _exit(self, code: int) -> None:
        for name in ("sock", "pid"):
            (self.folder / name).unlink(missing_ok=True)
        os._exit(code)

    def watch_client(self, conn: Connection, done: threading.Event, gate: Gate) -> None:
        """The client that sent the running job went away (its controller was killed): stop at once,
        so nothing more is written for a job nobody waits for. Its `Go` (it holds the GPU now, or it
        withdraws the job) opens the gate of a gated job."""
        while not done.is_set():
            try:
                if conn.poll(0.2) and not done.is_set():
                    gate.answer(Go.model_validate_json(conn.recv_bytes()))
            except (EOFError, OSError):
                if not done.is_set():
                    log.warning("client disconnected mid-job: exiting")
                    self._exit(3)
                return
            except ValueError as exc:  # not a Go: a client of another version
                log.warning("bad message from the client mid-job (%s): exiting", exc)
                self._exit(3)

    def handle(self, req: WorkerRequest, gate: Gate | None = None) -> tuple[WorkerReply, bool]:
        """Run one job; returns the reply and whether the worker must exit after answering. A gated job
        calls `gate` when it is ready for the GPU (training: after the model's load and the trainer's
        build) and its `job_seconds` count from when the gate opened."""
        from mlintern.training.runner import run_safely

        start = time.time()
        for key in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI"):  # never log into the previous job's run
            os.environ.pop(key, None)
        if req.kind == "ping":
            return WorkerReply(ok=True, worker_pid=os.getpid(), jobs_done=self.jobs_done), False
        if req.kind == "warm":
            return self._warm(req), False
        try:
            if req.kind == "train":
                outcome = run_safely(req.train, cache=self.cache, gate=gate)
                reply = WorkerReply(ok=True, outcome=outcome)
                fatal = outcome.failure is not None and any(m in outcome.failure.message + outcome.failure.log_tail
                                                            for m in _FATAL)
            else:
                if gate is not None:
                    gate()
                reply = WorkerReply(ok=True, score=self._evaluate(req))
                fatal = False
        except Exception as exc:  # an evaluation error: reported, the worker goes on
            traceback.print_exc()
            reply, fatal = WorkerReply(ok=False, error=f"{type(exc).__name__}: {exc}"), False
        reply.job_seconds = time.time() - (gate.opened_at if gate is not None and gate.opened_at else start)
        reply.worker_pid, reply.jobs_done, reply.cache_hits = os.getpid(), self.jobs_done, self.cache.hits
        self.jobs_done += 1
        mark = time.time()
        self._release()
        if reply.outcome is not None:  # the GPU stays held until this answer: what the cleanup adds to a handover
            reply.outcome.phases["release"] = round(time.time() - mark, 3)
        if fatal:  # a CUDA fault poisons the context: answer, then make room for a fresh worker
            reply.error = "the worker's CUDA context is unusable after this job; a new worker starts for the next one"
        return reply, fatal

    def _warm(self, req: WorkerRequest) -> WorkerReply:
        """Load a model into the cache (the next job's copy then takes a deep copy, not a disk read).
        Not a job: the worker's job count and its cleanup are untouched."""
        start = time.time()
        try:
            if req.warm is not None:
                from mlintern.training.sft import attn_for

                self.cache.load(req.warm.model_path, attn_for(req.warm.packing, req.warm.device))
            reply = WorkerReply(ok=True)
        except Exception as exc:  # noqa: BLE001 - the job that needs the model will report it properly
            reply = WorkerReply(ok=False, error=f"{type(exc).__name__}: {exc}")
        reply.job_seconds, reply.worker_pid, reply.jobs_done = time.time() - start, os.getpid(), self.jobs_done
        return reply

    def _evaluate(self, req: WorkerRequest):
        import torch

        from mlintern.evaluation.lmeval import _device, evaluate_loaded

        job = req.eval
        model, tok = self.cache.get(job.model_path, None)
        device = _device(job.device)
        if device.startswith("cuda"):
            model = model.to(device=device, dtype=torch.bfloat16)
        else:  # the kept model may live on the worker's GPU
            model = model.to(device)
        try:
            return evaluate_loaded(model, tok, job.spec)
        finally:
            del model

    def _release(self) -> None:
        """Free what the job held on the accelerator; reset accelerate's process-wide state."""
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(True)
            GradientState._reset_state()
        except Exception:  # noqa: BLE001 - cleanup is best effort
            log.exception("cleanup after a job failed")
        try:
            import mlflow

            while mlflow.active_run() is not None:
                mlflow.end_run()
        except Exception:  # noqa: BLE001
            log.exception("closing the MLflow run after a job failed")


@contextmanager
def job_output(path: str | None):
    """Send this job's stdout and stderr (Python and C level) to its own log file."""
    if not path:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab", buffering=0) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def warm_up() -> None:
    """Pay the imports once: this is most of a fresh process's fixed cost (bench/RESULTS.md part 3)."""
    import datasets  # noqa: F401
    import lm_eval.models.huggingface  # noqa: F401
    import mlflow  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from mlintern.training import runner, sft  # noqa: F401

    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")  # create the CUDA context now, not in the first job
        if importlib.util.find_spec("liger_kernel") is not None:  # a long GPU run's trainer patches the model with it
            import liger_kernel.transformers  # noqa: F401


class Gate:
    """A gated job's gate: tell the client the job is built, then wait for its `Go` (it has the GPU, or it
    withdraws the job). A client that leaves meanwhile ends the worker (watch_client)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.answered = threading.Event()
        self.go: Go | None = None
        self.opened_at: float | None = None

    def answer(self, go: Go) -> None:
        self.go = go
        self.answered.set()

    def __call__(self) -> GateOpened:
        began = time.time()
        self.conn.send_bytes(WorkerReply(ok=True, ready=True).model_dump_json().encode())
        self.answered.wait()
        if self.go.withdraw:
            log.info("job built, then withdrawn by the controller after %.1f s: it ends without the GPU",
                     time.time() - began)
            raise JobWithdrawn("withdrawn by the controller before it took the GPU")
        log.info("job built; waited %.1f s for the GPU", time.time() - began)
        self.opened_at = time.time()
        return GateOpened(self.opened_at, self.go.fidelity)


def serve(folder: Path, owner: int | None, idle_s: float) -> None:
    from mlintern.settings import apply_env_defaults

    apply_env_defaults()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    warm_up()
    worker = Worker(folder, owner, idle_s)
    authkey = (folder / "authkey").read_bytes()
    sock = folder / "sock"
    sock.unlink(missing_ok=True)
    listener = Listener(str(sock), family="AF_UNIX", authkey=authkey)
    (folder / "pid").write_text(str(os.getpid()))
    threading.Thread(target=worker.watchdog, daemon=True).start()
    log.info("ready (pid %d, owner %s, idle limit %.0f s)", os.getpid(), owner, idle_s)
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError) as exc:  # a client that failed authentication, or went away early
            log.warning("rejected a connection: %s", exc)
            continue
        try:
            req = WorkerRequest.model_validate_json(conn.recv_bytes())
        except EOFError:  # a client checking that the worker is up
            conn.close()
            continue
        except (OSError, ValueError) as exc:
            log.warning("bad request: %s", exc)
            conn.close()
            continue
        worker.busy = True
        done, gate = threading.Event(), Gate(conn)
        watcher = threading.Thread(target=worker.watch_client, args=(conn, done, gate), daemon=True)
        if req.kind in ("train", "eval"):  # a warm-up whose flow run ended early is not worth dying for
            watcher.start()
        with job_output(req.log_path):
            reply, fatal = worker.handle(req, gate if req.gate and watcher.is_alive() else None)
        done.set()
        if watcher.is_alive():
            watcher.join()
        try:
            conn.send_bytes(reply.model_dump_json().encode())
        except (OSError, EOFError):
            log.warning("the client left before the answer")
        conn.close()
        worker.busy = False
        worker.last_active = time.time()
        if fatal:
            worker._exit(4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ml-intern persistent training worker")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--owner", type=int, default=0, help="exit when this pid is gone (0: never)")
    parser.add_argument("--idle", type=float, default=600.0, help="exit after this many idle seconds")
    args = parser.parse_args(argv)
    serve(args.dir, args.owner or None, args.idle)


if __name__ == "__main__":
    main()

"""The persistent training worker: one long-lived process per accelerator that imports torch,
transformers, trl and lm-eval once, keeps the models it loaded, and runs training and evaluation
jobs one at a time from a local socket.

- `client.submit(request, timeout_s)` is what the Prefect `train` and `evaluate` tasks call: it
  finds the worker for this process's device (or starts it), queues behind other clients with a
  file lock, sends the job and waits for the answer within the task's timeout.
- On a GPU (INTERN_GPU_ID set) there are two workers, so that the next job is built while one trains:
  the client sends a gated job; the worker loads the model, builds the trainer (trl tokenizes the rows)
  and answers `ready`; the client takes the GPU (tasks.train.gpu_slot) and answers `Go`; the job's
  clock, its time cap and the budget's count start then. `INTERN_BUILD_AHEAD=false` keeps one worker.
  A provisional job (mlintern.release) waits for the controller's word first: `Go` then carries the
  limits it was released with, or withdraws it (the worker drops the built job and stays up).
- `server` is the worker. A job's exception is caught and returned as a classified failure, and the
  worker goes on; a hard death (SIGKILL, the OOM killer, a CUDA fault) is seen by the client as a
  failed job, and the next job starts a new worker.
- It dies with its controller: when the client that sent the running job goes away (the controller
  was killed), it exits at once, so a restarted controller never races a job still writing to its
  run; it also exits when its owner process is gone or it has been idle `INTERN_WORKER_IDLE_S`.
"""

from mlintern.worker.protocol import WorkerReply, WorkerRequest

__all__ = ["WorkerReply", "WorkerRequest"]

"""Start this device's training workers ahead of their first jobs, and optionally load a model into them.

    python -m mlintern.worker.warm [--model PATH]

deployments/start_workers.sh runs it beside each GPU's Prefect worker, with that worker's environment
and INTERN_WORKER_OWNER_PID set to its pid, so the first experiment on the GPU finds the imports done
and the CUDA context made (bench/RESULTS.md part 11c: 20-30 s of the first experiment on each GPU).
In a flow, `warm_in_background` does the same while the job's data is built.
"""

from __future__ import annotations

import argparse
import logging
import threading

log = logging.getLogger(__name__)


def warm_in_background(model_path: str | None = None, packing: bool = False, device: str = "auto") -> threading.Thread:
    """`client.warm` in a daemon thread: the job that follows queues on the worker's lock until it is
    done. A failure is only logged: the job then starts the worker itself and reports any real error."""
    from mlintern.worker.client import warm

    def run() -> None:
        try:
            warm(model_path, packing, device)
        except Exception as exc:  # noqa: BLE001 - best effort; the job itself reports failures
            log.warning("warming the training worker failed (the job will start one): %s", exc)

    thread = threading.Thread(target=run, name="warm-training-worker", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from mlintern.settings import apply_env_defaults
    from mlintern.worker.client import paths, slot_count, warm

    parser = argparse.ArgumentParser(description="start this device's ml-intern training workers ahead of their jobs")
    parser.add_argument("--model", default=None, help="a model folder to load into the workers' caches")
    args = parser.parse_args(argv)
    apply_env_defaults()  # the same environment as a flow run's, so it computes the same worker key
    slots = range(slot_count())  # two on a GPU: one trains while the other builds the next job
    with ThreadPoolExecutor(len(slots)) as pool:
        replies = list(pool.map(lambda slot: warm(args.model, slot=slot), slots))
    for slot, reply in zip(slots, replies):
        if reply is None:
            print(f"training worker busy (already running): {paths(slot).folder}")
        elif not reply.ok:
            raise SystemExit(f"training worker started but warming failed: {reply.error}")
        else:
            print(f"training worker pid {reply.worker_pid} ready in {reply.start_seconds:.1f} s: {paths(slot).folder}")


if __name__ == "__main__":
    main()

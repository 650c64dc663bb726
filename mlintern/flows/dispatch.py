"""Dispatch one experiment to the `experiment` deployment (a GPU work pool) and wait for it."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import httpx
from httpx_retries import Retry, RetryTransport
from prefect import get_client
from prefect.deployments import arun_deployment
from prefect.settings import PREFECT_API_ENABLE_HTTP2, PREFECT_API_URL

from mlintern.llm import LLMTranscript
from mlintern.schemas import ExperimentPlan, ExperimentResult, Failure, FailureKind, Fidelity, Goal
from mlintern.settings import get_settings
from mlintern.ledger import GoalLedger

log = logging.getLogger(__name__)


def gpu_lanes(width: int) -> list[str]:
    """The experiment deployment's per-GPU work queues (`gpu-<i>`, deployments/pools.py) whose worker is
    polling now, by GPU index, at most `width`: the controller sends each experiment to one of them.
    [] where the pool has none with a worker (the Docker pool, workers started by hand): experiments then
    go to the pool, one per GPU at a time."""
    from prefect.client.schemas.objects import WorkQueueStatus

    name = get_settings().experiment_deployment
    try:
        with get_client(sync_client=True) as client:
            pool = client.read_deployment_by_name(name).work_pool_name
            queues = client.read_work_queues(work_pool_name=pool) if pool else []
    except Exception as exc:  # the lanes are an optimisation: dispatch to the pool as before
        log.warning("could not read the work queues of deployment %s (%s); sending experiments to its pool",
                    name, exc)
        return []
    ready = [q for q in queues if re.fullmatch(r"gpu-\d+", q.name) and q.status == WorkQueueStatus.READY
             and not q.is_paused]
    ready.sort(key=lambda q: int(q.name.split("-")[1]))
    return [q.name for q in ready][:width]


def dispatch_experiment(goal: Goal, plan: ExperimentPlan, init_model: str, timeout_s: float,
                        fidelity: Fidelity | None = None,
                        llm_transcript: LLMTranscript | None = None, work_queue: str | None = None,
                        hold: str | None = None, hold_s: float = 0.0) -> ExperimentResult:
    """Idempotent per (goal, plan): a retried or resumed controller never starts a duplicate.
    `fidelity` (the schedule's dev checks and time cap) and `llm_transcript` (how the plan was made)
    travel with the run; the worker applies the one and logs the other. `work_queue`: a GPU's queue
    (`gpu_lanes`), else the deployment's own. `hold`, `hold_s`: a provisional experiment's release
    (mlintern.release); the caller drops what a withdrawn one returns."""
    name = get_settings().experiment_deployment
    plan_id = plan.plan_id()
    parameters = {"goal": goal.model_dump(mode="json"), "plan": plan.model_dump(mode="json"),
                  "init_model": init_model, "timeout_s": timeout_s,
                  "fidelity": (fidelity or Fidelity()).model_dump(mode="json")}
    if llm_transcript is not None:  # only when there is one: older deployments lack the parameter
        parameters["llm_transcript"] = llm_transcript.model_dump(mode="json")
    if hold is not None:  # likewise
        parameters.update(hold=hold, hold_s=hold_s)
    flow_run = run_deployment_quickly(
        name,
        parameters=parameters,
        # a provisional run may be withdrawn, and the same plan sent again later: its own key
        idempotency_key=f"{goal.goal_id()}-{plan_id}" + (f"-held-{time.time():.0f}" if hold else ""),
        timeout=None,
        poll_interval=1,  # Prefect's default 5 s left a GPU idle 2.5 s on average after each experiment
        as_subflow=True,
        work_queue_name=work_queue,
    )
    result = GoalLedger.open(goal).result(plan_id)
    if result is not None:
        return result
    state = flow_run.state.name if flow_run.state else "unknown"
    return ExperimentResult(
        plan_id=plan_id, plan=plan, status="failed",
        failure=Failure(kind=FailureKind.crash,
                        message=f"experiment flow run {flow_run.id} on deployment {name} ended {state} "
                                "without recording a result (worker died?); check the worker's logs"),
    )


def quick_retry_transport() -> RetryTransport:
    """The Prefect client's HTTP transport, retrying a 503 within tenths of a second (httpx-retries).

    A Prefect server on SQLite (the embedded default) answers 503 "database is locked" when a write meets
    another one, and Prefect's client waits 2 s, then 4 s, before it tries again. Its task-run recorder writes
    each task run's states just after the task ends, so an experiment created right after the
    `plan-experiment` task that planned it met one in 7 of 16 rounds (6.8 s at most; mean 1.31 s against
    0.21 s with this transport: bench/dispatch_backends.py --after-task, bench/RESULTS.md part 21). The lock
    lasts milliseconds: retried after 0.05-0.4 s here, the request goes through; Prefect's own back-off stays
    behind this for a longer lock. A 503 leaves nothing written (the transaction rolled back), and the flow
    run's idempotency key makes a repeat harmless anyway. Connection errors stay with Prefect's client."""
    retry = Retry(total=4, backoff_factor=0.05, status_forcelist=[503], retry_on_exceptions=[],
                  allowed_methods=["GET", "POST", "PUT", "PATCH", "DELETE"], respect_retry_after_header=True)
    # what PrefectClient gives its own transport (3 connection retries, HTTP/2 per setting, its pool limits):
    # a transport passed in replaces that one, so it is given the same
    inner = httpx.AsyncHTTPTransport(retries=3, http2=PREFECT_API_ENABLE_HTTP2.value(),
                                     limits=httpx.Limits(max_connections=16, max_keepalive_connections=8,
                                                         keepalive_expiry=25))
    return RetryTransport(transport=inner, retry=retry)


def run_deployment_quickly(name: str, **kwargs):
    """Prefect's run_deployment (as a subflow of the calling flow run, whose context this thread carries),
    through a client with `quick_retry_transport`. The synchronous run_deployment takes no client."""

    async def run():
        # only toward a server over HTTP (PREFECT_API_URL); Prefect's in-process app brings its own transport
        settings = {"transport": quick_retry_transport()} if PREFECT_API_URL.value() else None
        async with get_client(httpx_settings=settings) as client:
            return await arun_deployment(name, client=client, **kwargs)

    return asyncio.run(run())

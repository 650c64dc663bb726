"""Create (or update) ml-intern's work pools and concurrency limits, then deploy.

    python deployments/pools.py [--gpus N] [--docker] [--nightly | --no-nightly] [--no-deploy]
    (or: bash deployments/setup.sh ...)

Against the server in PREFECT_API_URL (or the local ephemeral one). Idempotent: run it again
after changing the GPU count, the Docker template or prefect.yaml.

Opt-in parts: the Docker pool and the `experiment-docker` deployment only with --docker (on a
host without Docker they only show as "Not Ready"); the `nightly-sweep` schedule is deployed
paused and runs only after --nightly (or its toggle in the UI); --no-nightly pauses it again.
Without either flag a re-run keeps the schedule as it was. The schedule and its next runs are
printed either way.

  intern-cpu         process pool for the controller (research-loop, nightly-sweep)
  intern-gpu         process pool for experiments: one worker per GPU, each started with
                     CUDA_VISIBLE_DEVICES=<i>, its own work queue gpu-<i> and --limit <depth>
                     (deployments/start_workers.sh); pool concurrency limit = GPUs x depth.
                     The controller sends each experiment to a GPU's queue, up to <depth> per GPU
                     (INTERN_QUEUE_DEPTH, default 2): one trains while the next builds its rows and
                     waits for the GPU, so the GPU does not idle between them
  intern-gpu-docker  (--docker) docker pool for experiments in the worker image
                     (deployments/docker-pool.json: GPU DeviceRequest, shm 8g)
  global concurrency limits: `gpu` (N slots, all GPUs of the fleet) and `gpu-<i>` (1 slot
                     each) for a flow that holds its GPU with
                     prefect.concurrency.sync.concurrency(...)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER_TEMPLATE = ROOT / "deployments" / "docker-pool.json"
CONTROLLER_POOL = "intern-cpu"
GPU_POOL = "intern-gpu"
DOCKER_POOL = "intern-gpu-docker"
DOCKER_DEPLOYMENT = "experiment-docker"
NIGHTLY = "nightly-sweep/nightly-sweep"


def queue_depth() -> int:
    """Experiments per GPU at once (one training, the rest preparing): the setting the controller reads
    too (INTERN_QUEUE_DEPTH, mlintern.settings)."""
    from mlintern.settings import get_settings

    return get_settings().queue_depth


def default_gpu_count() -> int:
    if os.environ.get("INTERN_GPUS"):
        return int(os.environ["INTERN_GPUS"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        return max(1, sum(1 for line in out.splitlines() if line.startswith("GPU ")))
    except (OSError, subprocess.SubprocessError):
        return 1


async def ensure_pools(gpus: int, controller_slots: int | None = None, docker: bool = False) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    process_template = ProcessWorker.get_default_base_job_template()
    docker_template = json.loads(DOCKER_TEMPLATE.read_text())
    pools = [
        WorkPoolCreate(name=CONTROLLER_POOL, type="process", base_job_template=process_template,
                       concurrency_limit=controller_slots,
                       description="ml-intern controllers (research-loop, nightly-sweep)"),
        WorkPoolCreate(name=GPU_POOL, type="process", base_job_template=process_template,
                       concurrency_limit=gpus * queue_depth(),
                       description=f"ml-intern experiments: one process worker per GPU ({gpus} GPUs, "
                                   f"{queue_depth()} experiments each: one trains, the next prepares)"),
    ]
    if docker:
        pools.append(WorkPoolCreate(name=DOCKER_POOL, type="docker", base_job_template=docker_template,
                                    concurrency_limit=gpus,
                                    description="ml-intern experiments in the worker image (GPU DeviceRequest, shm 8g)"))
    async with get_client() as client:
        for pool in pools:
            await client.create_work_pool(pool, overwrite=True)
            print(f"work pool {pool.name} ({pool.type}, concurrency {pool.concurrency_limit})")
        await ensure_gpu_queues(client, range(gpus))
        await client.upsert_global_concurrency_limit_by_name("gpu", gpus)
        for i in range(gpus):
            await client.upsert_global_concurrency_limit_by_name(f"gpu-{i}", 1)
        print(f"global concurrency limits: gpu ({gpus} slots), gpu-0..gpu-{gpus - 1} (1 slot each)")


async def ensure_gpu_queues(client, ids) -> None:
    """A work queue `gpu-<i>` in intern-gpu per GPU, polled by that GPU's worker only: the controller
    picks the GPU of each experiment (mlintern.flows.dispatch.gpu_lanes)."""
    from prefect.exceptions import ObjectAlreadyExists

    for i in ids:
        try:
            await client.create_work_queue(name=f"gpu-{i}", work_pool_name=GPU_POOL, concurrency_limit=queue_depth(),
                                           description=f"experiments for GPU {i}")
        except ObjectAlreadyExists:
            queue = await client.read_work_queue_by_name(f"gpu-{i}", work_pool_name=GPU_POOL)
            await client.update_work_queue(queue.id, concurrency_limit=queue_depth())
    print(f"work queues in {GPU_POOL}: " + ", ".join(f"gpu-{i}" for i in ids) + f" ({queue_depth()} experiments each)",
          file=sys.stderr)


async def _gpu_queues_only(ids: list[str]) -> None:
    from prefect import get_client

    async with get_client() as client:
        await ensure_gpu_queues(client, ids)


def deployment_names(docker: bool) -> list[str]:
    """The deployments of prefect.yaml to deploy: all but experiment-docker unless --docker."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return [d["name"] for d in spec["deployments"] if docker or d["name"] != DOCKER_DEPLOYMENT]


def deploy(docker: bool = False) -> None:
    # INTERN_PROJECT_DIR is left unset while deploying: prefect.yaml's pull step
    # `{{ $INTERN_PROJECT_DIR }}` then stays a placeholder in the deployment and each worker
    # resolves it from its own environment at run time (a checkout path per host, /opt/ml-intern
    # in the image). Set, `prefect deploy` would pin the deploying host's path.
    env = {k: v for k, v in os.environ.items() if k != "INTERN_PROJECT_DIR"}
    names = [arg for name in deployment_names(docker) for arg in ("--name", name)]
    subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", *names,
                    "--prefect-file", str(ROOT / "prefect.yaml")], cwd=ROOT, env=env, check=True, timeout=900)


async def nightly_active() -> bool | None:
    """Whether nightly-sweep's schedule is active now (None: not deployed yet)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            dep = await client.read_deployment_by_name(NIGHTLY)
        except ObjectNotFound:
            return None
        return any(s.active for s in dep.schedules)


async def set_nightly(active: bool) -> list[str]:
    """Activate or pause nightly-sweep's schedules; returns printable lines (cron, next runs)."""
    from prefect import get_client
    from prefect.server.schemas.schedules import CronSchedule

    lines = []
    async with get_client() as client:
        dep = await client.read_deployment_by_name(NIGHTLY)
        for sched in dep.schedules:
            if sched.active != active:
                await client.update_deployment_schedule(dep.id, sched.id, active=active)
            cron = getattr(sched.schedule, "cron", None)
            tz = getattr(sched.schedule, "timezone", None) or "UTC"
            text = f"nightly-sweep: cron '{cron}' ({tz}) " if cron else f"nightly-sweep: {sched.schedule} "
            if active and cron:
                upcoming = await CronSchedule(cron=cron, timezone=tz).get_dates(3)
                text += "ACTIVE; next runs " + ", ".join(d.strftime("%Y-%m-%d %H:%M %Z") for d in upcoming)
            else:
                text += ("PAUSED: no run is scheduled (enable it with `bash deployments/setup.sh --nightly` "
                         "or its schedule toggle in the UI)")
            lines.append(text)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPU slots in the fleet (default: $INTERN_GPUS, else nvidia-smi, else 1)")
    parser.add_argument("--controller-slots", type=int, default=None,
                        help="concurrent controllers on intern-cpu (default: unlimited)")
    parser.add_argument("--docker", action="store_true",
                        help=f"also the Docker pool {DOCKER_POOL} and the {DOCKER_DEPLOYMENT} deployment")
    nightly = parser.add_mutually_exclusive_group()
    nightly.add_argument("--nightly", dest="nightly", action="store_true", default=None,
                         help="activate the nightly-sweep schedule (deployed paused)")
    nightly.add_argument("--no-nightly", dest="nightly", action="store_false",
                         help="pause the nightly-sweep schedule")
    parser.add_argument("--no-deploy", action="store_true", help="only create pools and limits")
    parser.add_argument("--gpu-queues", default=None, metavar='"0 1"',
                        help="only make sure these GPUs' work queues exist, and print the queue depth (their "
                             "workers' --limit; deployments/start_workers.sh)")
    args = parser.parse_args(argv)
    if args.gpu_queues is not None:
        asyncio.run(_gpu_queues_only(args.gpu_queues.split()))
        print(queue_depth())
        return
    gpus = args.gpus or default_gpu_count()
    asyncio.run(ensure_pools(gpus, args.controller_slots, docker=args.docker))
    if args.no_deploy:
        return
    was_active = asyncio.run(nightly_active())
    deploy(docker=args.docker)
    active = args.nightly if args.nightly is not None else bool(was_active)
    for line in asyncio.run(set_nightly(active)):
        print(line)


if __name__ == "__main__":
    main()

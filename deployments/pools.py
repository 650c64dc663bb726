"""Create (or update) ml-intern's work pools and concurrency limits, then deploy everything.

    python deployments/pools.py [--gpus N] [--no-deploy]      (or: bash deployments/setup.sh)

Against the server in PREFECT_API_URL (or the local ephemeral one). Idempotent: run it again
after changing the GPU count, the Docker template or prefect.yaml.

  intern-cpu         process pool for the controller (research-loop, nightly-sweep)
  intern-gpu         process pool for experiments: one worker per GPU, each started with
                     CUDA_VISIBLE_DEVICES=<i> and --limit 1 (deployments/start_workers.sh);
                     pool concurrency limit = number of GPU slots
  intern-gpu-docker  docker pool for experiments in the worker image
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

ROOT = Path(__file__).resolve().parent.parent
DOCKER_TEMPLATE = ROOT / "deployments" / "docker-pool.json"
CONTROLLER_POOL = "intern-cpu"
GPU_POOL = "intern-gpu"
DOCKER_POOL = "intern-gpu-docker"


def default_gpu_count() -> int:
    if os.environ.get("INTERN_GPUS"):
        return int(os.environ["INTERN_GPUS"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        return max(1, sum(1 for line in out.splitlines() if line.startswith("GPU ")))
    except (OSError, subprocess.SubprocessError):
        return 1


async def ensure_pools(gpus: int, controller_slots: int | None = None) -> None:
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
                       concurrency_limit=gpus,
                       description=f"ml-intern experiments: one process worker per GPU ({gpus} slots)"),
        WorkPoolCreate(name=DOCKER_POOL, type="docker", base_job_template=docker_template,
                       concurrency_limit=gpus,
                       description="ml-intern experiments in the worker image (GPU DeviceRequest, shm 8g)"),
    ]
    async with get_client() as client:
        for pool in pools:
            await client.create_work_pool(pool, overwrite=True)
            print(f"work pool {pool.name} ({pool.type}, concurrency {pool.concurrency_limit})")
        await client.upsert_global_concurrency_limit_by_name("gpu", gpus)
        for i in range(gpus):
            await client.upsert_global_concurrency_limit_by_name(f"gpu-{i}", 1)
        print(f"global concurrency limits: gpu ({gpus} slots), gpu-0..gpu-{gpus - 1} (1 slot each)")


def deploy() -> None:
    # INTERN_PROJECT_DIR is left unset while deploying: prefect.yaml's pull step
    # `{{ $INTERN_PROJECT_DIR }}` then stays a placeholder in the deployment and each worker
    # resolves it from its own environment at run time (a checkout path per host, /opt/ml-intern
    # in the image). Set, `prefect deploy` would pin the deploying host's path.
    env = {k: v for k, v in os.environ.items() if k != "INTERN_PROJECT_DIR"}
    subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
                    "--prefect-file", str(ROOT / "prefect.yaml")], cwd=ROOT, env=env, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPU slots in the fleet (default: $INTERN_GPUS, else nvidia-smi, else 1)")
    parser.add_argument("--controller-slots", type=int, default=None,
                        help="concurrent controllers on intern-cpu (default: unlimited)")
    parser.add_argument("--no-deploy", action="store_true", help="only create pools and limits")
    args = parser.parse_args(argv)
    gpus = args.gpus or default_gpu_count()
    asyncio.run(ensure_pools(gpus, args.controller_slots))
    if not args.no_deploy:
        deploy()


if __name__ == "__main__":
    main()

"""How long the controller's dispatch takes when two experiments go out at once, with the Prefect
server on SQLite (the embedded default) against PostgreSQL (the scale-out backend), in one run.

Each arm starts a Prefect server on its database, deploys prefect.yaml (deployments/setup.sh), and then,
from inside a flow as the controller does, sends two `experiment` flow runs at once with the loop's real
parameters (`run_deployment`, as a subflow, `timeout=0`: created, not run), `--rounds` times. It
records how long each creation took and, per round, the slower of the two. On SQLite one of two
concurrent creations is refused ("database is locked", a 503), and Prefect's client retries after its
back-off of about 2 s. Prints the medians and the ratio of SQLite to PostgreSQL.

  python bench/dispatch_backends.py [--rounds 5] [--pg postgresql://postgres@127.0.0.1:5432] [--out x.json]
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def arm(rounds: int) -> dict:
    """In a process whose environment names the database: the server, the deployments, the dispatches."""
    from budget_arms import start_prefect

    work = Path(tempfile.mkdtemp(prefix="dispatch-"))
    server, url = start_prefect(work / "prefect")
    os.environ.update(PREFECT_API_URL=url, INTERN_WORK_DIR=str(work / "work"),
                      INTERN_TRACKING_URI=f"sqlite:///{work}/mlflow.db")
    try:
        subprocess.run(["bash", "deployments/setup.sh", "--gpus", "1"], cwd=ROOT, check=True,
                       stdout=open(work / "setup.log", "ab"), stderr=subprocess.STDOUT)
        from prefect import flow
        from prefect.deployments import run_deployment

        from mlintern.schemas import ExperimentPlan, Fidelity, Goal

        goal = Goal.model_validate(json.loads((ROOT / "bench/goals/arith_long.json").read_text()))

        def create(i: int) -> float:
            params = {"goal": goal.model_dump(mode="json"), "init_model": "builtin:smollm2-135m-instruct",
                      "plan": ExperimentPlan(hyperparameters={"max_steps": 100 + i}).model_dump(mode="json"),
                      "timeout_s": 600.0, "fidelity": Fidelity().model_dump(mode="json")}
            began = time.time()
            run_deployment("experiment/experiment", parameters=params, timeout=0, as_subflow=True,
                           work_queue_name="gpu-0", idempotency_key=f"{uuid.uuid4()}")
            return time.time() - began

        @flow(name="dispatch-probe")
        def controller() -> list[list[float]]:
            out = []
            with ThreadPoolExecutor(2) as pool:
                for r in range(rounds):
                    calls = [pool.submit(contextvars.copy_context().run, create, 2 * r + i) for i in range(2)]
                    out.append([round(c.result(), 3) for c in calls])
            return out

        pairs = controller()
    finally:
        server.terminate()
    slower = [max(p) for p in pairs]
    return {"pairs_s": pairs, "slower_median_s": round(statistics.median(slower), 3), "slower_max_s": max(slower)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pg", default=os.environ.get("INTERN_TEST_PG", "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        print("ARM " + json.dumps(arm(args.rounds)))
        return
    import psycopg2

    name = f"intern_dispatch_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(f"{args.pg}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    result = {"host": platform.node(), "cpus": os.cpu_count(), "rounds": args.rounds}
    try:
        for label, db in (("sqlite", None), ("postgres", f"{args.pg.replace('postgresql://', 'postgresql+asyncpg://')}/{name}")):
            env = dict(os.environ)
            env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
            if db:
                env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = db
            out = subprocess.run([sys.executable, __file__, "--arm", label, "--rounds", str(args.rounds)], env=env,
                                 cwd=ROOT, capture_output=True, text=True, timeout=600)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ARM ")), None)
            if line is None:
                raise SystemExit(f"the {label} arm failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            result[label] = json.loads(line[4:])
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    result["sqlite_over_postgres"] = round(result["sqlite"]["slower_median_s"] / result["postgres"]["slower_median_s"], 2)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

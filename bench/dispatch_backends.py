"""How long the controller's dispatch takes when two experiments go out at once, with the Prefect
server on SQLite (the embedded default) against PostgreSQL (the scale-out backend), in one run.

Each arm starts a Prefect server on its database, deploys prefect.yaml (deployments/setup.sh), and then,
from inside a flow as the controller does, sends two `experiment` flow runs at once with the loop's real
parameters (`run_deployment`, as a subflow, `timeout=0`: created, not run), `--rounds` times. It
records how long each creation took and, per round, the slower of the two. On SQLite one of two
concurrent creations is refused ("database is locked", a 503), and Prefect's client retries after its
back-off of about 2 s. Each round does it twice, through Prefect's `run_deployment` and through the
controller's `mlintern.flows.dispatch.run_deployment_quickly` (a 503 retried within tenths of a second).
Prints the medians and the ratios of SQLite to PostgreSQL, and on SQLite of Prefect's client to the quick one.

`--after-task`: the controller's other collision, on SQLite alone. Each round runs a task (as
`plan-experiment` does) and then creates one experiment flow run, as the controller does with the plan it
got, alternately through Prefect's `run_deployment` (the baseline) and through the controller's
`mlintern.flows.dispatch.run_deployment_quickly` (a 503 retried within tenths of a second), in one flow on
one server. Prints each one's mean, median and maximum, how many took over 1 s, and the ratio of the
means.

  python bench/dispatch_backends.py [--rounds 5] [--pg postgresql://postgres@127.0.0.1:5432] [--out x.json]
  python bench/dispatch_backends.py --after-task [--rounds 16] [--out x.json]
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
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


@contextmanager
def deployed(prefix: str):
    """A Prefect server of this process's own (on the database its environment names), prefect.yaml deployed
    to it, and `create(way, i, plan=None)`: one `experiment` flow run created (not run) from inside a flow, with
    the loop's real parameters, through Prefect's `run_deployment` (way "prefect") or the controller's
    `run_deployment_quickly` ("quick"); returns the seconds it took."""
    from budget_arms import start_prefect

    work = Path(tempfile.mkdtemp(prefix=prefix))
    server, url = start_prefect(work / "prefect")
    os.environ.update(PREFECT_API_URL=url, INTERN_WORK_DIR=str(work / "work"),
                      INTERN_TRACKING_URI=f"sqlite:///{work}/mlflow.db")
    try:
        subprocess.run(["bash", "deployments/setup.sh", "--gpus", "1"], cwd=ROOT, check=True,
                       stdout=open(work / "setup.log", "ab"), stderr=subprocess.STDOUT)
        from prefect.deployments import run_deployment

        from mlintern.flows.dispatch import run_deployment_quickly
        from mlintern.schemas import ExperimentPlan, Fidelity, Goal

        goal = Goal.model_validate(json.loads((ROOT / "bench/goals/arith_long.json").read_text()))
        ways = {"prefect": run_deployment, "quick": run_deployment_quickly}

        def create(way: str, i: int, plan: dict | None = None) -> float:
            params = {"goal": goal.model_dump(mode="json"), "init_model": "builtin:smollm2-135m-instruct",
                      "plan": plan or ExperimentPlan(hyperparameters={"max_steps": 100 + i}).model_dump(mode="json"),
                      "timeout_s": 600.0, "fidelity": Fidelity().model_dump(mode="json")}
            began = time.time()
            ways[way]("experiment/experiment", parameters=params, timeout=0, as_subflow=True,
                      work_queue_name="gpu-0", idempotency_key=f"{uuid.uuid4()}")
            return time.time() - began

        yield create
    finally:
        server.terminate()


def arm(rounds: int) -> dict:
    """In a process whose environment names the database: the server, the deployments, the dispatches."""
    with deployed("dispatch-") as create:
        from prefect import flow

        @flow(name="dispatch-probe")
        def controller() -> dict[str, list[list[float]]]:
            out: dict[str, list[list[float]]] = {"prefect": [], "quick": []}
            with ThreadPoolExecutor(2) as pool:
                for r in range(rounds):
                    for way in (("prefect", "quick") if r % 2 == 0 else ("quick", "prefect")):
                        calls = [pool.submit(contextvars.copy_context().run, create, way, 4 * r + 2 * (way == "quick") + i)
                                 for i in range(2)]
                        out[way].append([round(c.result(), 3) for c in calls])
                        time.sleep(0.5)
            return out

        pairs = controller()
    result = {}
    for way, rows in pairs.items():
        slower = [max(p) for p in rows]
        result[way] = {"pairs_s": rows, "slower_median_s": round(statistics.median(slower), 3),
                       "slower_max_s": max(slower)}
    return result


def after_task(rounds: int) -> dict:
    """In a process with a SQLite Prefect server of its own: a task, then one creation, `rounds` times, the two
    ways alternating (the first way switching every round, so neither always follows the other)."""
    with deployed("dispatch-task-") as create:
        from prefect import flow, task

        from mlintern.schemas import ExperimentPlan

        @task(name="plan-experiment")
        def plan(i: int) -> dict:
            return ExperimentPlan(hyperparameters={"max_steps": 100 + i}).model_dump(mode="json")

        @flow(name="dispatch-after-task-probe")
        def controller() -> dict[str, list[float]]:
            out: dict[str, list[float]] = {"prefect": [], "quick": []}
            for r in range(rounds):
                for way in (("prefect", "quick") if r % 2 == 0 else ("quick", "prefect")):
                    i = 2 * r + (way == "quick")
                    out[way].append(round(create(way, i, plan(i)), 3))
                    time.sleep(1.0)  # the next plan comes after a result, not at once
            return out

        times = controller()
    # the mean, not the median: a creation either meets a write (2 s and more) or not (0.15 s)
    result = {w: {"mean_s": round(statistics.mean(t), 3), "median_s": statistics.median(t), "max_s": max(t),
                  "over_1s": sum(x > 1 for x in t), "all_s": t} for w, t in times.items()}
    result["prefect_over_quick"] = round(result["prefect"]["mean_s"] / result["quick"]["mean_s"], 2)
    return result


def run_arm(flags: list[str], rounds: int, db: str | None, label: str) -> dict:
    """One arm in a process of its own, its Prefect server on `db` (None: SQLite, the embedded default)."""
    env = dict(os.environ)
    env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
    if db:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = db
    out = subprocess.run([sys.executable, __file__, *flags, "--rounds", str(rounds)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=1200)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ARM ")), None)
    if line is None:
        raise SystemExit(f"the {label} arm failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(line[4:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pg", default=os.environ.get("INTERN_TEST_PG", "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--arm-after-task", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--after-task", action="store_true",
                    help="SQLite only: a task, then one creation, Prefect's client against the controller's")
    args = ap.parse_args()
    if args.arm:
        print("ARM " + json.dumps(arm(args.rounds)))
        return
    if args.arm_after_task:
        print("ARM " + json.dumps(after_task(args.rounds)))
        return
    result = {"host": platform.node(), "cpus": os.cpu_count(), "rounds": args.rounds}
    if args.after_task:
        result.update(server="sqlite", **run_arm(["--arm-after-task"], args.rounds, None, "after-task"))
    else:
        import psycopg2

        name = f"intern_dispatch_{uuid.uuid4().hex[:8]}"
        admin = psycopg2.connect(f"{args.pg}/postgres")
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        try:
            pg = f"{args.pg.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
            for label, db in (("sqlite", None), ("postgres", pg)):
                result[label] = run_arm(["--arm", label], args.rounds, db, label)
        finally:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()
        for way in ("prefect", "quick"):
            result[f"sqlite_over_postgres_{way}"] = round(
                result["sqlite"][way]["slower_median_s"] / result["postgres"][way]["slower_median_s"], 2)
        result["sqlite_prefect_over_quick"] = round(
            result["sqlite"]["prefect"]["slower_median_s"] / result["sqlite"]["quick"]["slower_median_s"], 2)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

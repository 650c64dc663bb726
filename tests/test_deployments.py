"""Deployments: prefect.yaml, the work pools, the Docker GPU template, and real servers.

- the Docker pool's job configuration rendered offline (prefect-docker) carries the GPU
  DeviceRequest and the shm size (no Docker engine needed);
- a real `prefect server` (SQLite) + `deployments/pools.py` (pools, limits, deploy --all);
- the UI's Run button on `research-loop` with two GPU process workers: both get an experiment,
  each ends as an MLflow run (slow);
- the scale-out stack on the local PostgreSQL: Prefect server and `mlflow server` on throwaway
  databases (postgres).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import CACHE, ROOT, tiny_goal

PY = sys.executable
PREFECT = [PY, "-m", "prefect"]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


# --------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A subprocess with its own session and a log file; stop() ends it and its children."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_dir: Path, cwd: Path = ROOT):
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"{name}.log"
        self._fh = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        kill_tree(self.proc.pid)
        self._fh.close()


def kill_tree(pid: int, timeout: float = 15) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def wait_http(url: str, service: Service, timeout: float, ok=lambda r: r.status_code == 200) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited ({service.proc.returncode}):\n{service.tail()}")
        try:
            if ok(httpx.get(url, timeout=5)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{service.name} not healthy at {url} after {timeout}s:\n{service.tail()}")


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "INTERN_", "MLFLOW_TRACKING"))}
    env.update({
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "10",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": os.environ.get("HF_HOME", str(CACHE / "hf-home")),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "TOKENIZERS_PARALLELISM": "false",
        "INTERN_PROJECT_DIR": str(ROOT),
        "INTERN_WORK_DIR": str(tmp / "work"),
        "INTERN_MODELS_DIR": str(CACHE / "models"),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@contextmanager
def prefect_server(tmp: Path, database_url: str | None = None, scheduler: bool = False):
    """`prefect server start` on a free port (SQLite in PREFECT_HOME, or `database_url`); the
    scheduler service only if asked (it turns active cron schedules into runs)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = base_env(tmp, PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED=str(scheduler).lower(),
                   PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="2")
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    (tmp / "logs").mkdir(exist_ok=True)
    server = Service("prefect-server", [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                     env, tmp / "logs")
    try:
        wait_http(f"{api}/health", server, timeout=120)
        yield api, server
    finally:
        server.stop()


@contextmanager
def mlflow_server(tmp: Path, backend_uri: str):
    port = free_port()
    env = base_env(tmp, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    (tmp / "artifacts").mkdir(exist_ok=True)
    server = Service("mlflow-server", [PY, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
                                       "--artifacts-destination", str(tmp / "artifacts"),
                                       "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                     env, tmp / "logs")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server, timeout=120)
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.stop()


@contextmanager
def workers(tmp: Path, env: dict, gpus: str = "0 1", controller: bool = True):
    """deployments/start_workers.sh: one process worker per GPU (+ a controller worker)."""
    log_dir = tmp / "workers"
    cmd = ["bash", str(ROOT / "deployments" / "start_workers.sh"), "--gpus", gpus]
    if controller:
        cmd.append("--controller")
    out = subprocess.run(cmd, env={**env, "INTERN_LOG_DIR": str(log_dir)}, cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    pids = [int(p.read_text()) for p in log_dir.glob("*.pid")]
    try:
        yield log_dir
    finally:
        for pid in pids:
            kill_tree(pid)


def deploy_all(env: dict, gpus: int = 2, *flags: str) -> subprocess.CompletedProcess:
    out = subprocess.run([PY, str(ROOT / "deployments" / "pools.py"), "--gpus", str(gpus), *flags], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"pools.py failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def deployment(api: str, name: str) -> dict:
    r = httpx.get(f"{api}/deployments/name/{name}", timeout=30)
    r.raise_for_status()
    return r.json()


def run_from_ui(api: str, deployment_id: str, parameters: dict) -> httpx.Response:
    """What the UI's Run button posts (and, like the UI, posts again while the server answers 503:
    a SQLite-backed server busy with three workers starting answered one in CI)."""
    for attempt in range(5):
        r = httpx.post(f"{api}/deployments/{deployment_id}/create_flow_run",
                       json={"parameters": parameters, "state": {"type": "SCHEDULED", "message": "Run from the UI"}},
                       timeout=30)
        if r.status_code != 503:
            return r
        time.sleep(2 * (attempt + 1))
    return r


def flow_runs(api: str, **flow_run_filter) -> list[dict]:
    r = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": flow_run_filter, "limit": 200}, timeout=30)
    r.raise_for_status()
    return r.json()


def wait_flow_run(api: str, run_id: str, timeout: float, services: list[Service]) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(3)
    logs = "\n\n".join(f"== {s.name}\n{s.tail(40)}" for s in services)
    raise TimeoutError(f"flow run {run_id} still {run['state_type']} after {timeout}s\n{logs}")


def flow_run_logs(api: str, run_id: str) -> str:
    r = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200,
                                                "sort": "TIMESTAMP_ASC"}, timeout=30)
    return "\n".join(entry["message"] for entry in r.json())


def worker_logs(log_dir: Path) -> list[Service]:
    class _Log:
        def __init__(self, path):
            self.name, self.log = path.stem, path

        def tail(self, n=40):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
    return [_Log(p) for p in sorted(log_dir.glob("*.log"))]


def e2e_goal(**overrides) -> dict:
    """The tiny goal of the unit tests, dispatched two at a time: two exploration trials at once, then
    the scale-up of their winner (it waits for both)."""
    return tiny_goal(name="deploy-e2e", parallel_experiments=2, budget={"max_experiments": 3},
                     **overrides).model_dump(mode="json")


# --------------------------------------------------------------------------- offline checks

class _NoServer:
    """A client stand-in: rendering the job configuration must not need the Prefect API."""

    def __getattr__(self, name):
        raise AssertionError(f"rendering the docker job configuration called the API ({name})")


def _docker_host_config(job_variables: dict) -> dict:
    from docker.models.containers import _create_container_args
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    template = json.loads((ROOT / "deployments" / "docker-pool.json").read_text())
    config = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(template, job_variables,
                                                                                 client=_NoServer()))

    class Engine:  # what DockerWorker asks of the Docker engine while building the settings
        def version(self):
            return {"Version": "27.3.1"}

    settings = DockerWorker._build_container_settings(DockerWorker.__new__(DockerWorker), Engine(), config)
    # docker-py's own translation of create() kwargs into the container's HostConfig
    args = _create_container_args({**settings, "version": "1.45"})
    return {"config": config, "settings": settings, "host_config": dict(args["host_config"])}


def test_docker_pool_job_configuration_requests_gpus():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    dep = next(d for d in spec["deployments"] if d["name"] == "experiment-docker")
    assert dep["work_pool"]["name"] == "intern-gpu-docker"
    gpu = [{"Driver": "nvidia", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    for job_variables in (dep["work_pool"]["job_variables"], {}):  # the deployment's, and the pool's defaults
        rendered = _docker_host_config(job_variables)
        hc = rendered["host_config"]
        assert hc["DeviceRequests"] == gpu
        assert hc["ShmSize"] == 8 * 1024**3
        assert rendered["config"].image == "ml-intern-worker:latest"
        assert rendered["config"].env["INTERN_PROJECT_DIR"] == "/opt/ml-intern"
    rendered = _docker_host_config(dep["work_pool"]["job_variables"])
    assert rendered["config"].env["INTERN_WORK_DIR"] == "/srv/ml-intern/work"
    assert "/srv/ml-intern:/srv/ml-intern" in rendered["host_config"]["Binds"]
    # a deployment can narrow the request to one device
    one = _docker_host_config({"container_create_kwargs": {
        "device_requests": [{"driver": "nvidia", "device_ids": ["1"], "capabilities": [["gpu"]]}], "shm_size": "2g"}})
    assert one["host_config"]["DeviceRequests"][0]["DeviceIDs"] == ["1"]
    assert one["host_config"]["ShmSize"] == 2 * 1024**3


def test_prefect_yaml_defaults_and_wiring():
    from mlintern.schemas import Goal

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory":
                             {"directory": "{{ $INTERN_PROJECT_DIR }}"}}]
    deps = {d["name"]: d for d in spec["deployments"]}
    assert set(deps) == {"research-loop", "experiment", "experiment-docker", "nightly-sweep"}
    assert deps["research-loop"]["parameters"]["goal"] == Goal().model_dump(mode="json"), \
        "the deployment's default goal must be the embedded default (mlintern.schemas.Goal())"
    assert deps["nightly-sweep"]["parameters"]["goal"] == Goal().model_dump(mode="json")
    for name in ("research-loop", "nightly-sweep"):
        pool = deps[name]["work_pool"]
        assert pool["name"] == "intern-cpu"
        assert pool["job_variables"]["env"]["INTERN_EXPERIMENT_DEPLOYMENT"] == "experiment/experiment"
    assert deps["experiment"]["work_pool"]["name"] == "intern-gpu"
    assert deps["nightly-sweep"]["schedules"][0]["cron"] == "0 1 * * *"
    assert deps["nightly-sweep"]["schedules"][0]["active"] is False, "the nightly sweep is opt-in"


def test_nightly_resumes_from_champion(intern_env, tmp_path):
    """fetch_champion downloads the `champion` alias; the nightly goal starts from it with a carried budget."""
    from mlflow.tracking import MlflowClient

    from mlintern.flows.nightly import fetch_champion, nightly_goal
    from mlintern.schemas import Budget, EvalScore, ExperimentPlan, ExperimentResult, Hyperparameters
    from mlintern.ledger import GoalLedger

    goal = tiny_goal(name="nightly-t")
    tonight = Budget(max_experiments=3, gpu_hours=2.0, wall_time_minutes=90)
    assert fetch_champion.fn(goal) is None, "no registered model yet"
    fresh = nightly_goal(goal, None, tonight)
    assert fresh.base_model == goal.base_model and fresh.budget == tonight

    # one finished experiment on the base goal, promoted to champion
    ledger = GoalLedger.open(goal)
    ledger.record_baseline("dev", EvalScore(task="t", metric="acc", value=0.1, stderr=0.01, n=12))
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text('{"model_type": "llama"}')
    plan = ExperimentPlan(hyperparameters=Hyperparameters(learning_rate=1e-4, max_steps=2))
    run_id = ledger.start_run(plan, None)
    result = ExperimentResult(plan_id=plan.plan_id(), plan=plan, status="succeeded", mlflow_run_id=run_id,
                              model_path=str(weights), accelerator_hours=0.25,
                              dev=EvalScore(task="t", metric="acc", value=0.5, stderr=0.01, n=12))
    ledger.finish_run(run_id, result)
    # same goal, no champion yet: tonight's budget comes on top of what was spent
    carried = nightly_goal(goal, None, tonight)
    assert carried.goal_id() == goal.goal_id()
    assert carried.budget.max_experiments == 1 + 3 and carried.budget.gpu_hours == pytest.approx(2.25)
    assert carried.stop.patience == goal.stop.patience  # the one experiment improved: patience not used

    ledger.register_champion(result)
    version = MlflowClient().get_model_version_by_alias(f"intern-{goal.name}", "champion").version
    champ = fetch_champion.fn(goal)
    assert champ is not None and champ.version == str(version) and champ.run_id == run_id
    assert (Path(champ.path) / "config.json").read_text() == '{"model_type": "llama"}'
    assert Path(champ.path).is_relative_to(intern_env / "work" / "champions")
    again = fetch_champion.fn(goal)
    assert again.path == champ.path, "downloaded once per model version"
    night = nightly_goal(goal, champ, tonight)
    assert night.base_model == champ.path and night.goal_id() != goal.goal_id()
    assert night.budget == tonight and night.name == goal.name


# --------------------------------------------------------------------------- real Prefect server

def test_setup_deploys_everything_on_a_real_server(tmp_path):
    """deployments/pools.py against `prefect server start` (scheduler on): pools, limits, the
    deployments, the UI form's schema; the Docker pool and deployment only with --docker; the
    nightly schedule paused (no run queued) until --nightly, and paused again by --no-nightly."""
    from mlintern.schemas import Goal

    with prefect_server(tmp_path, scheduler=True) as (api, _server):
        env = base_env(tmp_path, PREFECT_API_URL=api)
        out = deploy_all(env, gpus=2)
        assert "nightly-sweep: cron '0 1 * * *' (UTC) PAUSED" in out.stdout, out.stdout[-2000:]

        pools = {p["name"]: p for p in httpx.post(f"{api}/work_pools/filter", json={}, timeout=30).json()}
        assert pools["intern-cpu"]["type"] == "process"
        # 2 GPUs, 2 experiments each: one trains while the next prepares
        assert pools["intern-gpu"]["type"] == "process" and pools["intern-gpu"]["concurrency_limit"] == 4
        queues = {q["name"]: q for q in httpx.post(f"{api}/work_pools/intern-gpu/queues/filter", json={},
                                                     timeout=30).json()}
        assert {"gpu-0", "gpu-1"} <= set(queues) and queues["gpu-0"]["concurrency_limit"] == 2, queues
        assert "intern-gpu-docker" not in pools, "no Docker pool unless asked for"
        assert httpx.get(f"{api}/deployments/name/experiment/experiment-docker", timeout=30).status_code == 404
        limits = {c["name"]: c["limit"] for c in httpx.post(f"{api}/v2/concurrency_limits/filter", json={},
                                                              timeout=30).json()}
        assert limits["gpu"] == 2 and limits["gpu-0"] == 1 and limits["gpu-1"] == 1

        loop = deployment(api, "research-loop/research-loop")
        assert loop["work_pool_name"] == "intern-cpu"
        assert loop["job_variables"]["env"]["INTERN_EXPERIMENT_DEPLOYMENT"] == "experiment/experiment"
        assert loop["parameters"]["goal"] == Goal().model_dump(mode="json")
        assert loop["pull_steps"] == [{"prefect.deployments.steps.set_working_directory":
                                       {"directory": "{{ $INTERN_PROJECT_DIR }}"}}]
        schema = loop["parameter_openapi_schema"]
        assert schema["required"] == ["goal"]
        goal_def = schema["definitions"]["Goal"]
        assert {"base_model", "benchmark", "budget", "search_space", "parallel_experiments",
                "retention"} <= set(goal_def["properties"])
        assert deployment(api, "experiment/experiment")["work_pool_name"] == "intern-gpu"
        nightly = deployment(api, "nightly-sweep/nightly-sweep")
        assert [(s["schedule"]["cron"], s["active"]) for s in nightly["schedules"]] == [("0 1 * * *", False)]
        time.sleep(8)  # several scheduler passes over recently deployed deployments
        assert flow_runs(api, deployment_id={"any_": [nightly["id"]]}) == [], "a paused sweep queues nothing"

        # the Run button: a bad goal is refused by the server, a good one becomes a scheduled run
        bad = run_from_ui(api, loop["id"], {"goal": {**e2e_goal(), "parallel_experiments": 0}})
        assert bad.status_code in (409, 422), bad.text
        ok = run_from_ui(api, loop["id"], {"goal": e2e_goal()})
        assert ok.status_code == 201, ok.text
        assert ok.json()["state_type"] == "SCHEDULED" and ok.json()["work_queue_name"] == "default"

        # opt in: the Docker pool and deployment, the nightly schedule (its next runs printed)
        out = deploy_all(env, 2, "--docker", "--nightly")
        assert "nightly-sweep: cron '0 1 * * *' (UTC) ACTIVE; next runs" in out.stdout, out.stdout[-2000:]
        docker = {p["name"]: p for p in httpx.post(f"{api}/work_pools/filter", json={}, timeout=30).json()}[
            "intern-gpu-docker"]
        assert docker["type"] == "docker" and docker["concurrency_limit"] == 2
        assert docker["base_job_template"]["variables"]["properties"]["container_create_kwargs"]["default"][
            "device_requests"][0]["capabilities"] == [["gpu"]]
        assert deployment(api, "experiment/experiment-docker")["job_variables"]["container_create_kwargs"][
            "shm_size"] == "8g"
        nightly = deployment(api, "nightly-sweep/nightly-sweep")
        assert [s["active"] for s in nightly["schedules"]] == [True]
        queued = wait_for(lambda: flow_runs(api, deployment_id={"any_": [nightly["id"]]}), 60)
        assert queued and all(r["state_type"] == "SCHEDULED" and r["auto_scheduled"] for r in queued)

        out = deploy_all(env, 2, "--no-nightly")
        assert "PAUSED" in out.stdout
        assert flow_runs(api, deployment_id={"any_": [nightly["id"]]}) == [], "pausing removes the queued runs"


def wait_for(fetch, timeout: float, step: float = 2.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fetch()
        if value:
            return value
        time.sleep(step)
    return fetch()


def goal_from_ui(tmp_path: Path, goal: dict, tracking_uri: str, gpus: str, prefect_db: str | None = None) -> list[dict]:
    """Run button on research-loop with `goal` -> the controller worker -> experiments on the GPU workers
    `gpus` (start_workers.sh); the experiment deployment's flow runs once the loop has completed."""
    with prefect_server(tmp_path, database_url=prefect_db) as (api, server):
        env = base_env(tmp_path, PREFECT_API_URL=api, INTERN_TRACKING_URI=tracking_uri)
        deploy_all(env, gpus=len(gpus.split()))
        with workers(tmp_path, env, gpus=gpus, controller=True) as log_dir:
            loop = deployment(api, "research-loop/research-loop")
            created = run_from_ui(api, loop["id"], {"goal": goal})
            assert created.status_code == 201, created.text
            run = wait_flow_run(api, created.json()["id"], timeout=1300, services=[server, *worker_logs(log_dir)])
            assert run["state_type"] == "COMPLETED", (
                f"research-loop ended {run['state_name']}\n{flow_run_logs(api, run['id'])[-6000:]}")
            assert run["labels"].get("prefect.worker.name", "").startswith("controller-")
            return flow_runs(api, deployment_id={"any_": [deployment(api, "experiment/experiment")["id"]]})


def run_loop_from_ui(tmp_path: Path, tracking_uri: str, prefect_db: str | None = None) -> None:
    """Run button on research-loop -> controller worker -> 2 experiments on 2 GPU workers -> MLflow."""
    from mlflow.tracking import MlflowClient

    runs = goal_from_ui(tmp_path, e2e_goal(), tracking_uri, "0 1", prefect_db)
    assert len(runs) == 3, [r["name"] for r in runs]
    assert all(r["state_type"] == "COMPLETED" for r in runs), [(r["name"], r["state_name"]) for r in runs]
    runs.sort(key=lambda r: r["start_time"])
    trials, scale_up = runs[:2], runs[2]
    names = {r["labels"]["prefect.worker.name"] for r in trials}
    host = names and next(iter(names)).rsplit("-", 1)[0]
    assert names == {f"{host}-0", f"{host}-1"}, f"both GPU workers must get one trial: {names}"
    when = datetime.fromisoformat
    assert when(scale_up["start_time"]) >= max(when(r["end_time"]) for r in trials), \
        "the scale-up continues the trials' winner: it starts once both are done"
    # the controller picks each experiment's GPU: its queue, polled by that GPU's worker alone
    assert all(r["work_queue_name"] == "gpu-" + r["labels"]["prefect.worker.name"].rsplit("-", 1)[1]
               and r["idempotency_key"] for r in runs), [(r["work_queue_name"], r["labels"]) for r in runs]
    assert all(r["parent_task_run_id"] for r in runs), "dispatched runs are the controller's subflows"

    client = MlflowClient(tracking_uri)
    exp = next(e for e in client.search_experiments() if e.name.startswith("intern-deploy-e2e-"))
    mlruns = client.search_runs([exp.experiment_id], "tags.`intern.kind` = 'experiment'")
    assert len(mlruns) == 3
    assert {r.data.tags["prefect.flow_run_id"] for r in mlruns} == {r["id"] for r in runs}
    assert all(r.data.tags["intern.state"] == "done" and r.info.status == "FINISHED" for r in mlruns), \
        [(r.info.status, r.data.tags.get("intern.failure")) for r in mlruns]
    assert all("dev_score" in r.data.metrics for r in mlruns)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    phases = [json.loads(mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/result.json"))["phases"]
              for r in mlruns]
    assert all("train_call" in p for p in phases), phases
    assert not any("worker_start" in p for p in phases), (
        "start_workers.sh starts each GPU's training worker with its Prefect worker, in the environment "
        f"its flow runs have: no experiment starts one itself ({phases})")
    kinds = {r.data.tags.get("intern.kind") for r in client.search_runs([exp.experiment_id])}
    assert {"baseline-dev", "baseline-test", "experiment", "report"} <= kinds
    # SQLite store: artifacts next to the db (mlintern.tracking); server: its --artifacts-destination
    artifacts = tmp_path / ("mlartifacts" if tracking_uri.startswith("sqlite:") else "artifacts")
    assert len(list(artifacts.rglob("result.json"))) == 3, "artifacts stayed in tmp"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_ui_run_dispatches_experiments_to_two_gpu_workers(tmp_path, monkeypatch):
    """SQLite backends: Prefect server in PREFECT_HOME, MLflow store file shared by the workers."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_loop_from_ui(tmp_path, f"sqlite:///{tmp_path}/mlflow.db")
    keep = os.environ.get("INTERN_KEEP_E2E_STORE")  # scripts/screenshots.py --tracking-uri can reuse it
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "mlflow.db", Path(keep) / "mlflow.db")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_gpu_prepares_its_next_experiment_while_one_trains(tmp_path, monkeypatch):
    """One GPU worker, one lane: the controller sends the next experiment to the GPU's queue while one
    trains (queue depth 2). Its flow run starts and builds its rows meanwhile, then takes the GPU when the
    job before it ends: no two jobs overlap, and the GPU changes hands within seconds, not after a
    flow-run process start, a data build and Prefect's retry of the GPU's limit."""
    from mlflow.tracking import MlflowClient

    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    # two trials dispatched at once on the one lane, the next each time one ends, then the scale-up
    goal = tiny_goal(name="deploy-lane", parallel_experiments=1, budget={"max_experiments": 5}).model_dump(mode="json")
    runs = {r["id"]: r for r in goal_from_ui(tmp_path, goal, tracking_uri, "0")}
    assert len(runs) == 5 and all(r["state_type"] == "COMPLETED" and r["work_queue_name"] == "gpu-0"
                                  for r in runs.values()), [(r["name"], r["state_name"], r["work_queue_name"]) for r in runs.values()]
    client = MlflowClient(tracking_uri)
    exp = next(e for e in client.search_experiments() if e.name.startswith("intern-deploy-lane-"))
    mlflow.set_tracking_uri(tracking_uri)
    results = sorted((json.loads(mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/result.json")) | {
        "flow_run": runs[r.data.tags["prefect.flow_run_id"]]}
        for r in client.search_runs([exp.experiment_id], "tags.`intern.kind` = 'experiment'")),
        key=lambda e: e["job_started_at"])
    assert [e["plan"]["stage"] for e in results] == ["explore"] * 4 + ["scale_up"], [e["plan"]["stage"] for e in results]
    when = lambda r, key: datetime.fromisoformat(r["flow_run"][key]).timestamp()  # noqa: E731
    for before, after in zip(results, results[1:]):
        job_end = before["job_started_at"] + before["job_seconds"]
        assert after["job_started_at"] >= job_end - 0.5, "two jobs held the one GPU at once"
    first, second = results[0], results[1]
    first_end = first["job_started_at"] + first["job_seconds"]
    assert when(second, "start_time") < first_end and second["phases"]["gpu_wait"] > 0, (
        "the second experiment's flow run started, and built its rows, while the first trained", second["phases"])
    # the controller scores the base model beside the first experiments: their plans do not need it
    base = {k: client.search_runs([exp.experiment_id], f"tags.`intern.kind` = 'baseline-{k}'") for k in ("dev", "confirm")}
    assert all(len(found) == 1 for found in base.values()), "each base score evaluated once, in the background"
    scored = max(found[0].info.start_time / 1000 for found in base.values())  # a baseline run is made when it is in
    first_dispatch = min(when(r, "created") for r in results)
    assert first_dispatch < base["dev"][0].info.start_time / 1000, (
        "the first experiments go out while the controller scores the base model", first_dispatch - scored)
    # a queued experiment takes the GPU as it frees (on this 2-core box, only once the base model's scores
    # are in: they share the cores with the jobs and the handover's Prefect calls)
    handovers = [after["job_started_at"] - (before["job_started_at"] + before["job_seconds"])
                 for before, after in zip(results, results[1:])
                 if when(after, "start_time") < before["job_started_at"] + before["job_seconds"] and
                 after["phases"]["gpu_wait"] > 0 and before["job_started_at"] + before["job_seconds"] > scored]
    assert handovers and max(handovers) < 5.0, ("queued handovers after the base scores", handovers, [
        (e["job_started_at"] - first_dispatch, e["job_seconds"], e["phases"]) for e in results])
    # the scale-up waits for the last trial's result, so nothing was queued behind that trial: a provisional
    # scale-up was (planned on the champion then), built while the trial trained, and released when it ended
    log = "".join(f.read_text() for f in (tmp_path / "workers").glob("controller-*.log"))
    assert re.search(r"provisional scale_up \w+ queued behind", log) and re.search(r"provisional scale_up \w+: released", log)
    last, up = results[-2], results[-1]
    assert up["job_started_at"] - (last["job_started_at"] + last["job_seconds"]) < 5.0, (
        "the scale-up took the GPU within seconds of the last trial's end", last["phases"], up["phases"])


# --------------------------------------------------------------------------- PostgreSQL scale-out

PG = os.environ.get("INTERN_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def _pg_connect(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(f"{PG}/{dbname}", connect_timeout=5)
    conn.autocommit = True
    return conn


@pytest.fixture
def pg_databases():
    """Two throwaway databases on the local PostgreSQL (skips if it is down); dropped after."""
    try:
        conn = _pg_connect()
    except Exception as exc:  # noqa: BLE001 - any connection failure means: no PostgreSQL here
        pytest.skip(f"PostgreSQL not reachable at {PG}: {exc}")
    suffix = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    names = {"prefect": f"intern_test_prefect_{suffix}", "mlflow": f"intern_test_mlflow_{suffix}"}
    with conn.cursor() as cur:
        for name in names.values():
            cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {k: f"{PG}/{v}" for k, v in names.items()}
    finally:
        with conn.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


SMOKE_FLOW = '''
import os
import mlflow
from prefect import flow


@flow(name="pg-smoke")
def pg_smoke(n: int = 2) -> list[str]:
    mlflow.set_tracking_uri(os.environ["INTERN_TRACKING_URI"])
    mlflow.set_experiment("intern-pg-smoke")
    ids = []
    for i in range(n):
        with mlflow.start_run(run_name=f"smoke-{i}") as run:
            mlflow.log_param("i", i)
            mlflow.log_metric("dev_score", 0.1 * i)
            mlflow.log_text("hello", "note.txt")
            ids.append(run.info.run_id)
    return ids
'''


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_postgres_prefect_and_mlflow_servers(tmp_path, pg_databases):
    """Scale-out backends: Prefect on PostgreSQL (asyncpg), `mlflow server` on PostgreSQL; a deployment
    run through a worker logs MLflow runs that the tracking server's REST API returns."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "smoke.py").write_text(SMOKE_FLOW)
    (project / "prefect.yaml").write_text(yaml.safe_dump({
        "name": "pg-smoke", "build": None, "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
        "deployments": [{"name": "pg-smoke", "entrypoint": "smoke.py:pg_smoke", "parameters": {"n": 2},
                         "work_pool": {"name": "intern-cpu", "work_queue_name": "default"}}],
    }))
    prefect_db = pg_databases["prefect"].replace("postgresql://", "postgresql+asyncpg://")
    with prefect_server(tmp_path, database_url=prefect_db) as (api, server), \
            mlflow_server(tmp_path, pg_databases["mlflow"].replace("postgresql://", "postgresql+psycopg2://")) \
            as (mlflow_url, _mlflow):
        env = base_env(tmp_path, PREFECT_API_URL=api, INTERN_TRACKING_URI=mlflow_url)
        assert httpx.get(f"{api}/admin/version", timeout=10).status_code == 200
        out = subprocess.run([PY, str(ROOT / "deployments" / "pools.py"), "--gpus", "1", "--no-deploy"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        out = subprocess.run([*PREFECT, "--no-prompt", "deploy", "--all"], env=env, cwd=project,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        dep = deployment(api, "pg-smoke/pg-smoke")
        worker = Service("worker-pg", [*PREFECT, "worker", "start", "--pool", "intern-cpu", "--type", "process",
                                       "--name", "pg-worker"], env, tmp_path / "logs", cwd=project)
        try:
            created = run_from_ui(api, dep["id"], {"n": 2})
            assert created.status_code == 201, created.text
            run = wait_flow_run(api, created.json()["id"], timeout=600, services=[server, worker])
            assert run["state_type"] == "COMPLETED", flow_run_logs(api, run["id"])[-4000:]
            assert run["labels"]["prefect.worker.name"] == "pg-worker"
        finally:
            worker.stop()

        exps = httpx.get(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
                         params={"experiment_name": "intern-pg-smoke"}, timeout=30).json()["experiment"]
        found = httpx.post(f"{mlflow_url}/api/2.0/mlflow/runs/search",
                           json={"experiment_ids": [exps["experiment_id"]], "max_results": 10}, timeout=30).json()
        runs = found.get("runs", [])
        assert len(runs) == 2 and all(r["info"]["status"] == "FINISHED" for r in runs)
        run_id = runs[0]["info"]["run_id"]
        arts = httpx.get(f"{mlflow_url}/api/2.0/mlflow/artifacts/list", params={"run_id": run_id}, timeout=30).json()
        assert [f["path"] for f in arts["files"]] == ["note.txt"]
        assert list((tmp_path / "artifacts").rglob("note.txt")), "artifacts proxied to --artifacts-destination"

    # both stores really are the PostgreSQL databases
    with _pg_connect(pg_databases["prefect"].rsplit("/", 1)[1]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM deployment WHERE name = 'pg-smoke'")
        assert cur.fetchone()[0] == 1
    with _pg_connect(pg_databases["mlflow"].rsplit("/", 1)[1]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'")
        assert cur.fetchone()[0] == 2


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(1500)
def test_ui_run_dispatches_experiments_on_postgres_servers(tmp_path, pg_databases, monkeypatch):
    """The scale-out stack: Prefect server and `mlflow server` on PostgreSQL, artifacts proxied by MLflow."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with mlflow_server(tmp_path, pg_databases["mlflow"].replace("postgresql://", "postgresql+psycopg2://")) \
            as (mlflow_url, _mlflow):
        run_loop_from_ui(tmp_path, mlflow_url,
                         prefect_db=pg_databases["prefect"].replace("postgresql://", "postgresql+asyncpg://"))


def test_the_controllers_prefect_client_retries_a_locked_server_within_tenths_of_a_second():
    """A Prefect server on SQLite answers 503 when a write meets another one; Prefect's client then waits 2 s
    (then 4 s). The controller's dispatch client (mlintern.flows.dispatch.quick_retry_transport) retries
    within tenths of a second, with the same request body, and still hands a lasting 503 back to Prefect's
    client. Against a real HTTP server that is locked for its first two answers."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prefect.client.orchestration import PrefectClient
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_CLIENT_CSRF_SUPPORT_ENABLED, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from mlintern.flows.dispatch import quick_retry_transport

    seen: list[tuple[str, bytes]] = []
    locked = {"left": 2}

    class Locked(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.path, body))
            if locked["left"] > 0:  # what Prefect's server sends for "database is locked"
                locked["left"] -= 1
                payload, code = b'{"exception_message": "Service Unavailable"}', 503
            else:
                payload, code = b'{"id": "made"}', 201
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Locked)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}/api"

    async def create(prefect_tries: int) -> tuple[httpx.Response, float]:
        with temporary_settings({PREFECT_CLIENT_CSRF_SUPPORT_ENABLED: False,  # the stand-in has no /csrf-token
                                 PREFECT_CLIENT_MAX_RETRIES: prefect_tries - 1}):
            async with PrefectClient(api, httpx_settings={"transport": quick_retry_transport()}) as client:
                began = time.time()
                response = await client._client.post("/deployments/d/create_flow_run", json={"idempotency_key": "k"})
                return response, time.time() - began

    try:
        response, took = asyncio.run(create(6))
        assert response.status_code == 201 and len(seen) == 3, seen
        assert took < 1.0, f"{took:.2f} s: Prefect's own back-off (2 s) answered, not the quick retry"
        assert {body for _, body in seen} == {b'{"idempotency_key":"k"}'}, "every attempt sent the same body"
        locked["left"], seen[:] = 100, []  # locked for good: after its own 5 tries, Prefect's client decides
        with pytest.raises(PrefectHTTPStatusError, match="503"):
            asyncio.run(create(2))
        assert len(seen) == 2 * 5, "each of Prefect's 2 tries made 5 quick ones"
    finally:
        server.shutdown()

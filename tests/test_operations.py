"""Operations for weeks-long use: disk retention, workers that stop, no orphaned Prefect servers.

- retention on real MLflow stores with small stand-in weight folders (fast), `ml-intern gc`, and
  a real loop of 6 experiments on SmolLM2-135M that keeps at most the configured weights and
  whose registry champion loads with transformers (slow);
- the save format: bf16 safetensors when training computed in bf16 (GPU), the weights' dtype
  otherwise, with a real trl trainer;
- deployments/start_workers.sh + deployments/stop_workers.sh against a real Prefect server, with
  a real flow run in progress that spawned a process in a session of its own;
- an embedded `ml-intern run` SIGKILLed: its temporary Prefect server does not outlive it, and
  `ml-intern gc` stops a temporary server that a killed process started the stock way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlintern.retention import disk_bytes, enforce, run_dir
from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Hyperparameters
from mlintern.settings import get_settings
from mlintern.ledger import GoalLedger
from tests.conftest import ROOT, tiny_goal
from tests.test_deployments import PY

MB = 1_000_000


def _wait(cond, timeout: float, what: str, step: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(what)


# ----------------------------------------------------------------------------- retention

def _weights(folder: Path, mb: int = 2) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(os.urandom(mb * MB))
    return folder


def _candidate(goal, i: int, dev: float) -> ExperimentResult:
    """A finished experiment as flows/experiment.py leaves it: weights in the work dir, run done."""
    ledger = GoalLedger.open(goal)
    plan = ExperimentPlan(hyperparameters=Hyperparameters(learning_rate=1e-4, max_steps=2 + i))
    run_id = ledger.start_run(plan, None)
    path = _weights(run_dir(goal, plan.plan_id()) / "model")
    result = ExperimentResult(plan_id=plan.plan_id(), plan=plan, status="succeeded", mlflow_run_id=run_id,
                              model_path=str(path), dev=EvalScore(task="t", metric="acc", value=dev, n=12))
    ledger.finish_run(run_id, result)
    return result


def _on_disk(goal) -> list[Path]:
    """Candidate weight folders of the goal in the work dir (links to the registry copy included)."""
    runs = get_settings().work_dir.resolve() / "runs" / goal.goal_id()
    return [p for p in runs.glob("*/model") if p.exists()]


def _registry_loads(name: str, dst: Path) -> Path:
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@champion", dst_path=str(dst)))
    assert (local / "config.json").exists()
    return local


def test_retention_keeps_champion_and_best_few_once(intern_env):
    """keep_best_candidates=1 through promotions and demotions: at most champion + 1 weight
    folders; the champion exists once (in its run's artifacts, linked from the work dir); a
    former champion that falls out loses its registry version; MLflow keeps every result."""
    goal = tiny_goal(name="retain", retention={"keep_best_candidates": 1})
    ledger = GoalLedger.open(goal)
    client = MlflowClient()
    history, champion = [], None

    def step(i, dev, promote=False):
        nonlocal champion
        result = _candidate(goal, i, dev)
        history.append(result)
        if promote:
            champion = result
            ledger.register_champion(result)
        summary = enforce(goal, history, champion)
        assert len(_on_disk(goal)) <= 1 + 1, summary
        return result, summary

    r1, _ = step(1, 0.20, promote=True)
    link = Path(r1.model_path)
    assert link.is_symlink() and (link / "config.json").exists(), "the loop keeps using the same path"
    stored = Path(os.path.realpath(link))
    assert stored.is_relative_to(intern_env / "mlartifacts"), "one copy: in the run's artifacts"
    assert client.get_run(r1.mlflow_run_id).data.tags["intern.weights"] == "artifacts"
    r2, _ = step(2, 0.10)
    r3, s3 = step(3, 0.15)
    assert s3.deleted == [r2.plan_id] and not Path(r2.model_path).exists()
    r4, _ = step(4, 0.50, promote=True)  # r1 demoted, still the best other: kept
    assert Path(r1.model_path).exists() and not Path(r3.model_path).exists()
    versions = client.search_model_versions("name = 'intern-retain'")
    assert len(versions) == 2
    r5, s5 = step(5, 0.30)  # r1 falls out: its stored weights and registry version go
    assert r1.plan_id in s5.deleted and not stored.exists() and not link.is_symlink()
    assert [v.run_id for v in client.search_model_versions("name = 'intern-retain'")] == [r4.mlflow_run_id]
    assert s5.freed_bytes >= 2 * MB

    kept = {p.parent.name for p in _on_disk(goal)}
    assert kept == {r4.plan_id, r5.plan_id}
    _registry_loads("intern-retain", intern_env / "dl")
    for r in (r1, r2, r3):  # metrics, plan and result stay; the run says the weights are gone
        run = client.get_run(r.mlflow_run_id)
        assert run.data.tags["intern.weights"] == "deleted" and "dev_score" in run.data.metrics
        assert run.data.params["plan.hyperparameters.max_steps"] == str(r.plan.hyperparameters.max_steps)
        assert mlflow.artifacts.load_text(f"runs:/{r.mlflow_run_id}/result.json")
    # the champion's bytes are on disk once: work dir + artifacts hold 2 models, not 3
    total = disk_bytes(intern_env / "work") + disk_bytes(intern_env / "mlartifacts")
    assert 4 * MB <= total < 5 * MB, total
    # a resumed controller calls register_champion again: nothing moves, nothing is copied
    assert ledger.register_champion(r4) == ledger.register_champion(r4)
    assert disk_bytes(intern_env / "work") + disk_bytes(intern_env / "mlartifacts") == total


def test_register_champion_repairs_an_interrupted_move(intern_env):
    """Killed between moving the weights into the artifacts and linking them back: the resumed
    controller's register_champion puts the link back."""
    from mlintern.tracking import local_artifact_dir

    goal = tiny_goal(name="repair")
    result = _candidate(goal, 1, 0.3)
    dst = local_artifact_dir(result.mlflow_run_id) / "model"
    dst.parent.mkdir(parents=True, exist_ok=True)
    Path(result.model_path).rename(dst)
    GoalLedger.open(goal).register_champion(result)
    assert Path(result.model_path).is_symlink() and (Path(result.model_path) / "config.json").exists()
    _registry_loads("intern-repair", intern_env / "dl")


def _gc(env: dict, *args: str) -> str:
    out = subprocess.run([PY, "-m", "mlintern.cli", "gc", *args], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_gc_command_frees_space_across_goals(intern_env):
    """`ml-intern gc` replays each goal from MLflow and applies its retention (or --keep); a
    dry run deletes nothing; stale half-written saves go too."""
    goal = tiny_goal(name="gc-goal", retention={"keep_best_candidates": 3})
    ledger = GoalLedger.open(goal)
    ledger.record_baseline("dev", EvalScore(task="t", metric="acc", value=0.05, n=12))
    results = [_candidate(goal, i, dev) for i, dev in enumerate([0.1, 0.3, 0.2, 0.25], start=1)]
    ledger.register_champion(results[1])  # what the loop did: 0.3 beat the others
    partial = _weights(run_dir(goal, "deadbeefdeadbeef") / "model.partial")
    old = time.time() - 7 * 3600
    for f in [partial, *partial.iterdir()]:
        os.utime(f, (old, old))
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    assert "would free" in _gc(env, "--dry-run", "--keep", "0")
    assert len(_on_disk(goal)) == 4 and partial.exists()
    _gc(env)  # the goal's own retention (3): nothing of the candidates to delete
    assert len(_on_disk(goal)) == 4 and not partial.exists()
    text = _gc(env, "--keep", "0")
    assert [p.parent.name for p in _on_disk(goal)] == [results[1].plan_id], text
    _registry_loads("intern-gc-goal", intern_env / "dl")


# ----------------------------------------------------------------------------- save format

@pytest.mark.parametrize("bf16", [False, True])
def test_save_format_follows_the_compute_dtype(intern_env, smol_model, monkeypatch, bf16):
    """The runner's save_model with a real trl trainer: bf16 compute (the GPU path) saves bf16
    safetensors at half the size; fp32 compute (CPU) saves the fp32 weights it evaluates."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from mlintern.training.job import TrainJob
    from mlintern.training.loading import load_for_training
    from mlintern.training.runner import build_trainer, save_model
    from tests.test_training_sft import sft_rows

    plan = ExperimentPlan(hyperparameters={"max_steps": 1, "per_device_batch_size": 2, "max_length": 64})
    job = TrainJob(plan=plan, model_path=smol_model, data_path=sft_rows(intern_env / "d.jsonl", 4),
                   output_dir=str(intern_env / "out"), device="cpu")
    monkeypatch.setenv("MLFLOW_RUN_ID", MlflowClient().create_run(
        MlflowClient().create_experiment(f"save-{bf16}")).info.run_id)
    trainer = build_trainer(job, [], *load_for_training(smol_model))
    trainer.train()
    trainer.args.bf16 = bf16  # what base_args sets on a GPU
    out = intern_env / "out" / "model"
    (intern_env / "out" / "model.partial").mkdir()  # left by an earlier attempt that died
    save_model(trainer, out)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == ({"BF16"} if bf16 else {"F32"})
    size = (out / "model.safetensors").stat().st_size
    base = (Path(smol_model) / "model.safetensors").stat().st_size
    assert size == pytest.approx(base / 2 if bf16 else base, rel=0.02)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert not (intern_env / "out" / "model.partial").exists()


# ----------------------------------------------------------------------------- the real loop

@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_loop_of_six_keeps_bounded_weights_and_a_loadable_champion(intern_env, prefect_harness, smol_model):
    """6 real experiments on SmolLM2-135M with keep_best_candidates=1: at most 2 weight folders
    remain (champion + 1), the champion loads from `models:/intern-<name>@champion` with
    transformers, and the report states the disk used."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlintern.flows.research_loop import research_loop

    goal = tiny_goal(name="retention-loop", budget={"max_experiments": 6}, stop={"patience": 10, "noise_z": 0.0},
                     retention={"keep_best_candidates": 1})
    start = time.time()
    report = research_loop(goal)
    elapsed = time.time() - start
    assert len(report.experiments) == 6
    on_disk = _on_disk(goal)
    assert len(on_disk) <= 1 + 1, on_disk
    succeeded = [e for e in report.experiments if e.status == "succeeded"]
    deleted = [e for e in succeeded if not Path(e.model_path).exists()]
    assert len(deleted) >= len(succeeded) - 2
    client = MlflowClient()
    for e in deleted:
        run = client.get_run(e.mlflow_run_id)
        assert run.data.tags["intern.weights"] == "deleted" and "dev_score" in run.data.metrics
        assert run.inputs.dataset_inputs or "data.content_hash" in run.data.params, "data lineage kept"
    assert "- Disk: work dir" in report.markdown

    work, arts = disk_bytes(intern_env / "work" / "runs"), disk_bytes(intern_env / "mlartifacts")
    model_bytes = disk_bytes(Path(os.path.realpath(on_disk[0]))) if on_disk else 0
    print(f"\nDISK retention-loop: {len(report.experiments)} experiments in {elapsed:.0f}s; weight folders left "
          f"{len(on_disk)}; work/runs {work / MB:.0f} MB; mlartifacts {arts / MB:.0f} MB; one model "
          f"{model_bytes / MB:.0f} MB; champion {report.champion_plan_id}")
    if report.champion_plan_id is None:
        pytest.skip("no candidate beat the base model in this run: nothing registered to load")
    champion = next(e for e in report.experiments if e.plan_id == report.champion_plan_id)
    assert Path(champion.model_path).is_symlink(), "the champion's work-dir path links to its one copy"
    assert work + arts < (len(on_disk) + 0.5) * model_bytes, "no weights stored twice"
    local = _registry_loads(f"intern-{goal.name}", intern_env / "dl")
    model = AutoModelForCausalLM.from_pretrained(local)
    tok = AutoTokenizer.from_pretrained(local)
    out = model.generate(**tok("1 + 1 =", return_tensors="pt"), max_new_tokens=2, do_sample=False)
    assert out.shape[1] > 0


# ----------------------------------------------------------------------------- workers stop

SLOW_FLOW = '''
import subprocess, sys, time
from prefect import flow


@flow(name="busy", log_prints=True)
def busy(seconds: int = 600) -> None:
    # a process in a session of its own, like a training job or a per-GPU sidecar
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    print(f"SIDECAR {child.pid}", flush=True)
    time.sleep(seconds)
'''


def _prefect_processes(log_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("INTERN_PROC_GROUP") == str(log_dir.resolve()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.timeout(600)
def test_workers_stop_with_one_command_even_while_running_a_flow(tmp_path):
    """start_workers.sh (2 fake GPUs + controller) against a real Prefect server; a worker that
    is idle stops on a plain SIGTERM; stop_workers.sh stops the rest, the flow run one of them
    is running and the process that run started in its own session, within 15 s."""
    import httpx

    from mlintern.tempserver import wait_gone
    from tests.test_deployments import base_env, deployment, flow_run_logs, prefect_server, run_from_ui

    project = tmp_path / "project"
    project.mkdir()
    (project / "busy.py").write_text(SLOW_FLOW)
    (project / "prefect.yaml").write_text(yaml.safe_dump({
        "name": "busy", "build": None, "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
        "deployments": [{"name": "busy", "entrypoint": "busy.py:busy",
                         "work_pool": {"name": "intern-gpu", "work_queue_name": "default"}}],
    }))
    log_dir = tmp_path / "workers"
    with prefect_server(tmp_path) as (api, server):
        env = base_env(tmp_path, PREFECT_API_URL=api, INTERN_LOG_DIR=str(log_dir))
        out = subprocess.run([PY, str(ROOT / "deployments" / "pools.py"), "--gpus", "2", "--no-deploy"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        out = subprocess.run([PY, "-m", "prefect", "--no-prompt", "deploy", "--all"], env=env, cwd=project,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        try:
            out = subprocess.run(["bash", str(ROOT / "deployments" / "start_workers.sh"), "--gpus", "0 1",
                                  "--controller"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            pids = {p.stem: int(p.read_text()) for p in log_dir.glob("*.pid")}
            # 2 GPU workers, the controller worker, and each GPU's training-worker warm-up
            assert sorted(name.rsplit("-", 2)[0] for name in pids) == ["controller", "gpu", "gpu", "warm", "warm"], pids
            def training_workers():
                return [p for p in _prefect_processes(log_dir) if "mlintern.worker.server" in " ".join(p.cmdline())]
            # two a GPU (build-ahead: one trains while the other builds the next job), started together
            trainers = [p.pid for p in _wait(lambda: len(training_workers()) == 4 and training_workers(), 240,
                                             "the warm-ups never started the GPUs' training workers")]
            pids = {name: pid for name, pid in pids.items() if not name.startswith("warm-")}
            def gpu_workers():
                return {w["name"] for w in httpx.post(f"{api}/work_pools/intern-gpu/workers/filter", json={},
                                                      timeout=10).json()}
            _wait(lambda: len(gpu_workers()) == 2, 90, "both GPU workers never polled")

            # the old way (a plain kill of the pid file) now stops an idle worker
            controller = next(pid for name, pid in pids.items() if name.startswith("controller-"))
            os.kill(controller, signal.SIGTERM)
            _wait(lambda: not psutil.pid_exists(controller) or psutil.Process(controller).status() == "zombie",
                  15, "an idle worker ignored SIGTERM", step=0.2)

            dep = deployment(api, "busy/busy")
            run = run_from_ui(api, dep["id"], {"seconds": 600}).json()
            sidecar = _wait(lambda: next((int(line.split()[-1]) for line in flow_run_logs(api, run["id"]).splitlines()
                                          if line.startswith("SIDECAR")), None), 120, "the flow run never started")
            assert psutil.pid_exists(sidecar)
            assert len(_prefect_processes(log_dir)) >= 4  # 2 workers, the flow run, the sidecar

            start = time.time()
            out = subprocess.run(["bash", str(ROOT / "deployments" / "stop_workers.sh")], env=env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)
            took = time.time() - start
            assert out.returncode == 0, out.stdout + out.stderr
            assert took < 15 + 5, f"stop took {took:.1f}s"
            left = wait_gone([p.pid for p in _prefect_processes(log_dir)] + [sidecar, *trainers, *pids.values()], 1)
            assert not left, [" ".join(psutil.Process(p).cmdline()) for p in left if psutil.pid_exists(p)]
            print(f"\nstop_workers.sh: {out.stdout.strip()} in {took:.1f}s")
            assert not list(log_dir.glob("*.pid"))
        finally:
            subprocess.run([PY, str(ROOT / "deployments" / "proc.py"), "stop", "--dir", str(log_dir),
                            "--timeout", "5"], capture_output=True, timeout=60)


# ----------------------------------------------------------------------------- no orphaned servers

from mlintern.tempserver import temp_server_pids, wait_gone  # noqa: E402

def _embedded_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    env.update(INTERN_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", INTERN_WORK_DIR=str(tmp_path / "work"),
               PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killed_embedded_run_leaves_no_prefect_server(tmp_path, smol_model):
    """SIGKILL an embedded `ml-intern run` (only its pid, as `kill -9` does) once its temporary
    Prefect server is serving the flow; the server goes with it; the next run of the goal
    finishes and leaves none either."""
    goal = tiny_goal(name="orphans", budget={"max_experiments": 1})
    goal_file = tmp_path / "goal.json"
    goal_file.write_text(goal.model_dump_json())
    env, log = _embedded_env(tmp_path), tmp_path / "run.log"

    def launch():
        return subprocess.Popen([PY, "-m", "mlintern.cli", "run", "--goal", str(goal_file)], cwd=ROOT, env=env,
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    proc = launch()
    try:
        servers = _wait(lambda: temp_server_pids(owner_pid=proc.pid), 180, "no temporary server", step=0.5)
        _wait(lambda: b"Beginning flow run" in log.read_bytes() or proc.poll() is not None, 180, "flow never began")
        assert proc.poll() is None, log.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_gone(servers, 15) == [], "the killed run's temporary server is still running"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    proc = launch()
    second = _wait(lambda: temp_server_pids(owner_pid=proc.pid), 180, "no temporary server", step=0.5)
    assert proc.wait(timeout=1000) == 0, log.read_text()[-3000:]
    assert wait_gone(servers + second, 15) == []
    assert not [p for p in temp_server_pids() if _prefect_home(p) == env["PREFECT_HOME"]]
    records = list((tmp_path / "prefect-home" / "intern-temp-servers").glob("*.json"))
    assert records == [], "a finished run removes its record"


def _prefect_home(pid: int) -> str | None:
    try:
        return psutil.Process(pid).environ().get("PREFECT_HOME")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


STOCK_SERVER = '''
import sys, time
from prefect.server.api.server import SubprocessASGIServer
from mlintern.tempserver import _record
server = SubprocessASGIServer()   # Prefect's own temporary server, no PDEATHSIG
server.start()
_record(server.server_process.pid, server.port)
print(server.server_process.pid, flush=True)
time.sleep(600)
'''


@pytest.mark.timeout(300)
def test_gc_stops_a_temporary_server_whose_owner_was_killed(tmp_path):
    """Prefect's stock temporary server outlives a SIGKILLed owner (the leak of the issue); the
    record it left lets the next `ml-intern run` / `ml-intern gc` stop it."""
    env = _embedded_env(tmp_path)
    owner = subprocess.Popen([PY, "-c", STOCK_SERVER], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        server = int(owner.stdout.readline())
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        time.sleep(3)
        assert psutil.pid_exists(server) and psutil.Process(server).status() != "zombie", \
            "the stock server outlives its owner (what the issue saw)"
        text = _gc(env)
        assert f"{server}" in text and "temporary Prefect server" in text
        assert wait_gone([server], 15) == []
    finally:
        for pid in [owner.pid, locals().get("server")]:
            if pid and psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_new_sqlite_store_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """MLflow migrates a new SQLite store in place; killed halfway, it left a store every later run
    failed on (`_alembic_tmp_model_versions already exists`). Ours is built aside and linked in."""
    import mlflow.store.tracking.sqlalchemy_store as sql_store

    from mlintern.tracking import create_sqlite_store

    db = tmp_path / "store" / "mlflow.db"
    real = sql_store.SqlAlchemyStore

    class DiesHalfway(real):
        def __init__(self, uri, root):
            super().__init__(uri, root)  # the schema is in the private file...
            self.engine.dispose()
            raise KeyboardInterrupt("killed")  # ...when the process goes

    monkeypatch.setattr(sql_store, "SqlAlchemyStore", DiesHalfway)
    with pytest.raises(KeyboardInterrupt):
        create_sqlite_store(db)
    assert not db.exists() and list(db.parent.iterdir()) == [], "nothing half-made is left in place"
    monkeypatch.setattr(sql_store, "SqlAlchemyStore", real)
    create_sqlite_store(db)
    client = MlflowClient(f"sqlite:///{db}")
    assert [e.name for e in client.search_experiments()] == ["Default"] and client.search_registered_models() == []
    before = db.stat().st_mtime_ns
    create_sqlite_store(db)  # an existing store is left alone
    assert db.stat().st_mtime_ns == before


def test_our_tracking_uri_wins_over_the_one_mlflow_leaves_in_the_environment(monkeypatch, tmp_path):
    """mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; a child given INTERN_TRACKING_URI must
    still write to that store (the crash-resume and wheel tests' controllers wrote to a store an
    earlier test had used)."""
    import mlflow

    from mlintern.settings import Settings

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored, or removed, after the test
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/earlier.db")
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("earlier.db"), "what MLflow does to the environment"
    monkeypatch.setenv("INTERN_TRACKING_URI", f"sqlite:///{tmp_path}/ours.db")
    assert Settings().resolved_tracking_uri() == f"sqlite:///{tmp_path}/ours.db"
    monkeypatch.delenv("INTERN_TRACKING_URI")
    assert Settings().resolved_tracking_uri() == f"sqlite:///{tmp_path}/earlier.db", "MLflow's own variable next"

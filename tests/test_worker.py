"""The persistent training worker: real processes, real trl training and lm-eval on SmolLM2-135M."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlintern.benchmarks import prepare_benchmark
from mlintern.schemas import BenchmarkSpec, ExperimentPlan, Fidelity
from mlintern.settings import get_settings
from mlintern.training.job import TrainJob
from mlintern.worker import client
from mlintern.worker.protocol import WarmJob, WorkerRequest
from tests.conftest import ROOT
from tests.test_training_sft import sft_rows


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gpu_in_use() -> bool:
    """Whether a job holds this process's GPU (INTERN_GPU_ID) now: a probe of gpu_slot's host lock."""
    import fcntl

    from mlintern.tasks.train import gpu_lock_path

    with open(gpu_lock_path(os.environ["INTERN_GPU_ID"]), "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        return False


def wait_dead(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def job_for(intern_env, smol_model):
    """A train job on the real model: 2 steps, dev scored in the job on 6 items."""
    from mlintern.tasks.evaluate import eval_spec

    bench = prepare_benchmark(BenchmarkSpec(dev_size=6, test_size=6, max_gen_toks=6), intern_env / "work")
    mlflow_client = MlflowClient()
    exp = mlflow_client.create_experiment(f"worker-{intern_env.name}")

    def make(name: str, steps: int = 2, fidelity: Fidelity | None = None, faults=None,
             confirm: bool = False) -> tuple[TrainJob, str]:
        run_id = mlflow_client.create_run(exp).info.run_id
        plan = ExperimentPlan(hyperparameters={"max_steps": steps, "per_device_batch_size": 2, "max_length": 64,
                                               "learning_rate": 1e-4}, dataset={"seed": len(name)})
        job = TrainJob(plan=plan, model_path=smol_model, data_path=sft_rows(intern_env / f"{name}.jsonl", n=8 * steps),
                       output_dir=str(intern_env / name), device="cpu", evaluation=eval_spec(bench, "dev", "cpu"),
                       fidelity=fidelity or Fidelity(), mlflow_run_id=run_id,
                       confirmation=eval_spec(bench, "confirm", "cpu") if confirm else None,
                       tracking_uri=get_settings().resolved_tracking_uri(), faults=faults)
        return job, run_id

    return make


def test_worker_runs_jobs_in_one_process_and_keeps_the_model(job_for, intern_env, smol_model):
    import fcntl

    # a worker an earlier test of this process left running (it idles 600 s) would be reused here
    client.stop()
    # warmed ahead of the first job (as start_workers.sh and the experiment flow do): started once, the
    # base model loaded; a warm-up never queues behind a running job
    warmed = client.warm(smol_model, device="cpu")
    assert warmed.ok and warmed.start_seconds > 0 and warmed.jobs_done == 0, warmed
    with open(client.paths().lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert client.warm(smol_model, device="cpu") is None, "busy worker: the warm-up returns at once"
        # a flow run that ends (its data failed) while its warm-up loads a model: the worker stays up
        alias = intern_env / "alias-model"
        alias.symlink_to(smol_model)  # another path: not in the cache, so it is read from disk
        conn = client._connect(client.paths())
        conn.send_bytes(WorkerRequest(kind="warm", warm=WarmJob(model_path=str(alias), device="cpu"))
                        .model_dump_json().encode())
        conn.close()
    first, run1 = job_for("a")
    r1 = client.submit(WorkerRequest(kind="train", train=first, log_path=str(intern_env / "a.log")), 900)
    assert r1.worker_pid == warmed.worker_pid and r1.start_seconds == 0 and r1.jobs_done == 0, r1
    assert r1.cache_hits == 1 and r1.outcome.phases["load"] < 5, "the job copied the model the warm-up loaded"
    second, _ = job_for("b")
    r2 = client.submit(WorkerRequest(kind="train", train=second, log_path=str(intern_env / "b.log")), 900)
    assert r1.ok and r2.ok and r1.outcome.status == r2.outcome.status == "succeeded", (r1, r2)
    assert r2.worker_pid == r1.worker_pid and r2.jobs_done == r1.jobs_done + 1, "the same process served both"
    assert r2.cache_hits > r1.cache_hits, "the base model was read from disk once"
    out = r2.outcome
    assert out.dev is not None and out.dev.n == 6, "dev scored in the job, from the weights in memory"
    assert out.steps == 2 and out.examples == 4 and out.tokens > 0 and out.train_loop_seconds > 0
    assert (Path(out.model_path) / "model.safetensors").exists()
    fixed = r2.job_seconds - out.train_loop_seconds - out.eval_seconds
    assert 0 <= fixed < r2.job_seconds
    # the cleanup after job_seconds still holds the GPU (its answer releases it): reported apart
    assert 0 < out.phases["release"] < r2.job_seconds, out.phases
    assert "loss" in MlflowClient().get_run(run1).data.metrics, "trl's step metrics reach the job's run"
    assert b"'loss'" in (intern_env / "a.log").read_bytes() or (intern_env / "a.log").stat().st_size > 0


def test_a_candidate_that_beats_the_champion_on_dev_is_confirmed_in_the_job_from_the_weights_in_memory(
        job_for, intern_env):
    """The confirmation check was a second model load in the controller, on a GPU the next experiment was
    waiting for (2 CPU lanes: a 25 s gap after a trial). The job now scores it while the weights are loaded."""
    from mlintern.schemas import EvalScore

    floor = EvalScore(task="dev", metric="score", value=-1.0, stderr=0.0, n=6)  # every run beats it
    job, _ = job_for("confirmed", fidelity=Fidelity(confirm_above=floor, noise_z=0), confirm=True)
    out = client.submit(WorkerRequest(kind="train", train=job, log_path=str(intern_env / "c.log")), 900).outcome
    assert out.status == "succeeded" and out.dev.n == 6
    assert out.confirm is not None and out.confirm.n == 6 and out.confirm.task != out.dev.task
    assert out.phases["confirm_eval"] > 0 and out.eval_seconds >= out.phases["confirm_eval"]

    ceiling = EvalScore(task="dev", metric="score", value=2.0, stderr=0.0, n=6)  # no run beats it
    job, _ = job_for("not-confirmed", fidelity=Fidelity(confirm_above=ceiling, noise_z=0), confirm=True)
    out = client.submit(WorkerRequest(kind="train", train=job, log_path=str(intern_env / "n.log")), 900).outcome
    assert out.status == "succeeded" and out.confirm is None and "confirm_eval" not in out.phases


def test_a_trial_below_its_peers_is_pruned_at_its_first_rung(job_for, intern_env):
    """Optuna's successive-halving pruner, asked in the job: peers all scored 0.99 at rung 0."""
    fidelity = Fidelity(rung_seconds=[0.001, 1e4, 3e4], peers=[{0: 0.99}, {0: 0.98}, {0: 0.97}])
    job, run_id = job_for("pruned", steps=6, fidelity=fidelity)
    reply = client.submit(WorkerRequest(kind="train", train=job, log_path=str(intern_env / "p.log")), 900)
    out = reply.outcome
    assert out.status == "pruned" and out.steps == 1, out
    assert [p.rung for p in out.curve] == [0] and out.pruned_at is not None
    assert out.model_path is None and not (intern_env / "pruned" / "model").exists(), "a pruned trial saves nothing"
    history = MlflowClient().get_metric_history(run_id, "dev_score")
    assert [m.step for m in history] == [1], "the rung check is on the run's dev curve"


def test_sigkill_mid_job_is_a_failed_job_and_the_next_job_gets_a_new_worker(job_for, intern_env, prefect_harness):
    from mlintern.tasks.train import train

    job, run_id = job_for("killed", steps=3, faults={"die_at_step": 1})
    outcome = train.fn(job, run_id, get_settings().resolved_tracking_uri(), 900)
    assert outcome.status == "failed" and "code -9 during the job" in outcome.failure.message
    assert outcome.failure.log_tail, "the job's log tail is kept for diagnosis"
    again, run2 = job_for("after", steps=2)
    assert train.fn(again, run2, get_settings().resolved_tracking_uri(), 900).status == "succeeded"


@pytest.mark.slow
def test_a_job_that_dies_on_the_gpu_is_charged_from_when_it_had_the_gpu(job_for, intern_env, monkeypatch,
                                                                        prefect_harness):
    """A gated job (build-ahead, on a GPU) that kills its worker mid-training is charged from when it took the
    GPU, not from its submission: its worker's start, model load and trainer build held no GPU."""
    from mlintern.tasks.train import train

    monkeypatch.setenv("INTERN_GPU_ID", "4")
    monkeypatch.setenv("INTERN_RUNTIME_DIR", str(intern_env / "rt"))
    job, run_id = job_for("killed-gated", steps=3, faults={"die_at_step": 1})
    submitted = time.time()
    outcome = train.fn(job, run_id, get_settings().resolved_tracking_uri(), 900)
    assert outcome.status == "failed" and "code -9 during the job" in outcome.failure.message
    assert outcome.job_started_at > submitted + 0.5, "the build before the GPU is not charged"
    assert outcome.job_seconds < time.time() - submitted - 0.5
    client.stop()


def test_worker_dies_with_its_client_mid_job(job_for, intern_env):
    """A killed controller must not leave its job training on: the worker exits when the client goes."""
    job, _ = job_for("orphan", steps=400)
    script = intern_env / "client.py"
    script.write_text(
        "import sys\nfrom mlintern.worker import client\nfrom mlintern.worker.protocol import WorkerRequest\n"
        "from mlintern.training.job import TrainJob\n"
        f"job = TrainJob.model_validate_json(open({str(intern_env / 'job.json')!r}).read())\n"
        f"client.submit(WorkerRequest(kind='train', train=job, log_path={str(intern_env / 'orphan.log')!r}), 900)\n")
    (intern_env / "job.json").write_text(job.model_dump_json())
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.time() + 600
    while b"'loss'" not in (intern_env / "orphan.log").read_bytes() if (intern_env / "orphan.log").exists() else True:
        assert time.time() < deadline and proc.poll() is None, "training never started"
        time.sleep(0.5)
    pid = client.paths().worker_pid()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert pid and wait_dead(pid, 10), "the worker stopped within seconds of losing its client"


def test_worker_exits_when_its_owner_is_gone(intern_env, monkeypatch):
    owner = subprocess.Popen(["sleep", "600"])
    monkeypatch.setenv("INTERN_WORKER_OWNER_PID", str(owner.pid))
    monkeypatch.setenv("INTERN_RUNTIME_DIR", str(intern_env / "rt"))  # a worker of its own
    reply = client.submit(WorkerRequest(kind="ping"), 300)
    assert _alive(reply.worker_pid)
    owner.kill()
    owner.wait()
    assert wait_dead(reply.worker_pid, 10), "no worker outlives its owner"


@pytest.mark.parametrize("prefect_limits", [True, False])
def test_an_experiment_queued_on_a_gpu_takes_it_the_moment_the_job_before_ends(
        prefect_harness, monkeypatch, tmp_path, prefect_limits):
    """Each GPU's Prefect worker takes a second experiment while one trains (start_workers.sh --limit 2);
    the second's flow run waits in gpu_slot. It must not train beside the first, even where setup.sh's
    global limits are missing, and it must get the GPU within a second of the first's release, not at
    Prefect's next retry (the server's Retry-After for a limit held for minutes is up to 30 s)."""
    import threading

    from prefect import get_client

    from mlintern.tasks.train import gpu_slot

    monkeypatch.setenv("INTERN_GPU_ID", "7")
    monkeypatch.setenv("INTERN_RUNTIME_DIR", str(tmp_path))
    with get_client(sync_client=True) as client:
        for name in ("gpu", "gpu-7"):
            if prefect_limits:
                client.upsert_global_concurrency_limit_by_name(name, 1)
            else:
                try:
                    client.delete_global_concurrency_limit_by_name(name)
                except Exception:
                    pass
    marks: dict[str, float] = {}

    def job(name: str, delay: float, hold: float) -> None:
        time.sleep(delay)
        with gpu_slot() as waited:
            marks[f"{name}-in"], marks[f"{name}-waited"] = time.time(), waited
            marks[f"{name}-saw-in-use"] = gpu_in_use()
            time.sleep(hold)
            marks[f"{name}-out"] = time.time()

    threads = [threading.Thread(target=job, args=("first", 0.0, 4.0)),
               threading.Thread(target=job, args=("second", 1.0, 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert marks["second-in"] >= marks["first-out"], ("two jobs held one GPU at once", marks)
    # two HTTP calls to the Prefect server stand between the two (a slot released, a slot taken): on a
    # loaded 2-core CI machine about a second; the retry this guards against waits for the server's Retry-After
    assert marks["second-in"] - marks["first-out"] < 2.0, marks
    assert marks["second-waited"] >= 2.5 and marks["first-waited"] < 2.5, marks
    assert marks["first-saw-in-use"] and not gpu_in_use(), "a held GPU is in use, a released one is not"


def test_on_a_gpu_the_queued_job_is_built_while_the_one_before_trains(job_for, intern_env, monkeypatch, prefect_harness):
    """Build-ahead: on a GPU a second worker loads the queued job's model and builds its trainer (trl
    tokenizes there) while the first job trains, and asks for the GPU only then. The budget counts a job
    from the moment it has the GPU (bench/RESULTS.md part 16c: 72 s of a 14-minute loop was the build,
    on a held, idle GPU)."""
    import fcntl
    import threading

    from mlintern.tasks.train import train

    monkeypatch.setenv("INTERN_GPU_ID", "5")  # the lock and Prefect's limits are real; the job runs on the CPU
    monkeypatch.setenv("INTERN_RUNTIME_DIR", str(intern_env / "rt"))
    assert client.slot_count() == 2
    model = job_for("probe")[0].model_path
    with open(client.paths(0).lock, "a+") as held:  # both workers up first, as start_workers.sh does
        assert client.warm(model, device="cpu", slot=0).ok
        fcntl.flock(held, fcntl.LOCK_EX)
        assert client.warm(model, device="cpu") is not None, "the other worker is free"
    first, run1 = job_for("first", steps=24)
    second, run2 = job_for("second", steps=2)
    out: dict = {}

    def go(name, job, run_id, after_gpu_taken):
        deadline = time.time() + 600
        # the second job is sent once the first has the GPU (on 2 busy cores the second, smaller, job could
        # otherwise be built first, take the GPU first, and the roles swap)
        while after_gpu_taken and not gpu_in_use():
            assert time.time() < deadline, "the first job never took the GPU"
            time.sleep(0.1)
        out[name + "-submitted"] = time.time()
        out[name] = train.fn(job, run_id, get_settings().resolved_tracking_uri(), 900)

    threads = [threading.Thread(target=go, args=("a", first, run1, False)),
               threading.Thread(target=go, args=("b", second, run2, True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    a, b = out["a"], out["b"]
    assert a.status == b.status == "succeeded", (a, b)
    a_end = a.job_started_at + a.job_seconds
    b_ready = b.job_started_at - b.phases["gpu_wait"]  # when b, built, asked for the GPU
    assert b_ready < a_end, "the queued job was built while the first trained"
    assert b_ready - out["b-submitted"] >= b.phases["load"] + b.phases["build"], "built before asking for the GPU"
    assert b.phases["ahead"] >= b.phases["load"] + b.phases["build"], "the time outside the job that grows with rows"
    assert b.job_started_at >= a_end - 0.05 and b.job_started_at - a_end < 1.5, "one GPU, handed over at once"
    assert b.job_seconds < b.job_started_at + b.job_seconds - out["b-submitted"] - b.phases["build"], \
        "the budget counts the job from when it had the GPU, not its build"
    pids = {client.paths(i).worker_pid() for i in (0, 1)}
    assert len(pids) == 2 and None not in pids
    client.stop()
    assert all(client.paths(i).worker_pid() is None for i in (0, 1)), "stop() ends both workers"


def test_a_provisional_job_waits_built_for_its_word_then_trains_to_its_release_or_ends_withdrawn(
        job_for, intern_env, monkeypatch, prefect_harness):
    """A provisional experiment (mlintern.release) is built, then waits for the controller's word before it
    takes the GPU. Released, it trains to the limits of the release, not those it was dispatched with;
    withdrawn, it ends without the GPU and the worker stays up for the next job."""
    import threading

    from mlintern.release import Release, give, release_name
    from mlintern.tasks.train import train
    from mlintern.training.job import JobWithdrawn

    monkeypatch.setenv("INTERN_GPU_ID", "6")
    monkeypatch.setenv("INTERN_RUNTIME_DIR", str(intern_env / "rt"))
    uri = get_settings().resolved_tracking_uri()

    job, run_id = job_for("released", steps=6)
    name, marks = release_name("goal", "released"), {}

    def word():
        time.sleep(12)
        marks["given"] = time.time()
        give(name, Release(fidelity=Fidelity(time_limit_s=0.001)))  # one step, then the cap

    threading.Thread(target=word).start()
    submitted = time.time()
    outcome = train.fn(job, run_id, uri, 900, hold=name, hold_s=300)
    assert outcome.status == "succeeded", outcome.failure
    assert outcome.job_started_at >= marks["given"], "it took the GPU only after its word"
    ready_after = outcome.phases.get("worker_start", 0.0) + outcome.phases["ahead"]  # the worker's start, the build
    assert outcome.phases["gpu_wait"] >= marks["given"] - submitted - ready_after - 1, "built, it waited"
    assert outcome.steps == 1 and outcome.stopped_by_time_limit, "the release's limits, not the dispatched ones"
    pid = client.paths(0).worker_pid() or client.paths(1).worker_pid()

    job, run_id = job_for("withdrawn", steps=2)
    name = release_name("goal", "withdrawn")
    give(name, Release(withdraw=True))
    with pytest.raises(JobWithdrawn, match="withdrawn by the controller"):
        train.fn(job, run_id, uri, 900, hold=name, hold_s=300)
    assert not (intern_env / "withdrawn" / "model").exists(), "nothing trained, nothing saved"
    job, run_id = job_for("after", steps=2)
    assert train.fn(job, run_id, uri, 900).status == "succeeded"
    assert pid in {client.paths(i).worker_pid() for i in (0, 1)}, "the worker stayed up through the withdrawal"

    job, run_id = job_for("silent", steps=2)
    with pytest.raises(JobWithdrawn, match="no word from the controller within 2 s"):
        train.fn(job, run_id, uri, 900, hold=release_name("goal", "silent"), hold_s=2)
    client.stop()

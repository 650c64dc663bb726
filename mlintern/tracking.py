"""MLflow bookkeeping: one experiment per goal, one run per training experiment.

MLflow is the loop's durable memory: a restarted controller rebuilds its history from here
(finished plans are found by their plan hash and never re-run), and remote experiment runs
report their results here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import shutil
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Goal
from mlintern.settings import get_settings

log = logging.getLogger(__name__)

RESULT_ARTIFACT = "result.json"
TAG_GOAL = "intern.goal_id"
TAG_KIND = "intern.kind"
TAG_PLAN = "intern.plan_id"
TAG_STATE = "intern.state"
TAG_WEIGHTS = "intern.weights"  # artifacts | deleted (absent: the work dir)
MODEL_ARTIFACT = "model"


def init_tracking() -> str:
    uri = get_settings().resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_name(goal: Goal) -> str:
    return f"intern-{goal.name}-{goal.goal_id()}"


def ensure_experiment(goal: Goal) -> str:
    init_tracking()
    name = experiment_name(goal)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=_artifact_location(),
                                        tags={TAG_GOAL: goal.goal_id(), "intern.goal": goal.model_dump_json()})
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def _artifact_location() -> str | None:
    """Artifacts beside a SQLite store (not in whatever folder the process started in);
    a tracking server decides for itself (None)."""
    settings = get_settings()
    if settings.artifact_root:
        return settings.artifact_root
    uri = settings.resolved_tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def flatten(prefix: str, value: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
    elif isinstance(value, list):
        out[prefix] = json.dumps(value)
    else:
        out[prefix] = str(value)
    return out


def _runs(experiment_id: str, kind: str, plan_id: str | None = None) -> list:
    query = f"tags.`{TAG_KIND}` = '{kind}'"
    if plan_id:
        query += f" and tags.`{TAG_PLAN}` = '{plan_id}'"
    return MlflowClient().search_runs([experiment_id], filter_string=query, max_results=1000,
                                      order_by=["attributes.start_time DESC"])


def find_run(experiment_id: str, kind: str, plan_id: str | None = None, *, done: bool = False) -> Any | None:
    """The newest run of this kind (and plan); with done=True only a finished one."""
    for run in _runs(experiment_id, kind, plan_id):
        if not done or run.data.tags.get(TAG_STATE) == "done":
            return run
    return None


def start_experiment_run(experiment_id: str, goal: Goal, plan: ExperimentPlan, flow_run_id: str | None) -> str:
    """Create the MLflow run of one attempt at a plan; returns its id.

    A run of the same plan left unfinished by a killed process is marked KILLED (tag
    intern.state=interrupted) rather than reused, so no metric history is written twice.
    """
    plan_id = plan.plan_id()
    client = MlflowClient()
    for stale in _runs(experiment_id, "experiment", plan_id):
        if stale.data.tags.get(TAG_STATE) not in ("done", "interrupted"):
            client.set_tag(stale.info.run_id, TAG_STATE, "interrupted")
            client.set_terminated(stale.info.run_id, "KILLED")
    tags = {
        TAG_GOAL: goal.goal_id(), TAG_KIND: "experiment", TAG_PLAN: plan_id, TAG_STATE: "running",
        "intern.method": plan.method.value, "mlflow.note.content": _note(plan),
        "intern.cited_papers": ",".join(plan.cited_papers),
    }
    if plan.retry_of:
        tags["intern.retry_of"] = plan.retry_of
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    run = client.create_run(experiment_id, run_name=f"{plan.method.value}-{plan_id[:8]}", tags=tags)
    run_id = run.info.run_id
    params = flatten("plan", plan.model_dump(mode="json", exclude={"hypothesis", "rationale", "cited_papers"}))
    client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in params.items()])
    client.log_text(run_id, plan.model_dump_json(indent=2), "plan.json")
    return run_id


def _note(plan: ExperimentPlan) -> str:
    cited = ", ".join(plan.cited_papers) or "none"
    return (f"**Hypothesis:** {plan.hypothesis or '-'}\n\n**Rationale:** {plan.rationale or '-'}\n\n"
            f"**Papers:** {cited}\n\n**Data recipe:** {plan.dataset.model_dump_json()}")


def finish_experiment_run(run_id: str, result: ExperimentResult) -> None:
    client = MlflowClient()
    if result.dev is not None:
        if not result.curve or result.curve[-1].value != result.dev.value:  # the job logged its own checks
            client.log_metric(run_id, "dev_score", result.dev.value, step=result.steps)
        if result.dev.stderr is not None:
            client.log_metric(run_id, "dev_stderr", result.dev.stderr)
    metrics = {"train_seconds": result.train_seconds, "accelerator_hours": result.accelerator_hours,
               "accelerator_seconds": result.accelerator_hours * 3600, "steps": result.steps,
               "examples": result.examples, "tokens": result.tokens,
               "train_loop_seconds": result.train_loop_seconds, "eval_seconds": result.eval_seconds}
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.set_tag(run_id, "intern.status", result.status)
    client.set_tag(run_id, "intern.stage", result.plan.stage)
    if result.llm_dollars:
        client.log_metric(run_id, "experiment_llm_dollars", result.llm_dollars)
    if result.failure is not None:
        client.set_tag(run_id, "intern.failure_kind", result.failure.kind.value)
        client.set_tag(run_id, "intern.failure", result.failure.message[:5000])
        client.log_text(run_id, result.failure.log_tail, "failure_log_tail.txt")
    client.log_text(run_id, result.model_dump_json(indent=2), RESULT_ARTIFACT)
    client.set_tag(run_id, TAG_STATE, "done")
    client.set_terminated(run_id, "FAILED" if result.status == "failed" else "FINISHED")


TRANSCRIPT_ARTIFACT = "llm_transcript.json"


def log_llm_transcript(run_id: str, transcript) -> None:
    """How the plan was made (an `LLMTranscript`): the artifact llm_transcript.json, tags for
    filtering (source, mode, model, prompt hash) and metrics for tokens and dollars. The API key
    is masked first, wherever it might have been echoed."""
    from mlintern.llm import redact

    client = MlflowClient()
    client.log_text(run_id, redact(transcript.model_dump_json(indent=2)), TRANSCRIPT_ARTIFACT)
    prompts = hashlib.sha256(json.dumps(transcript.prompt_sha256, sort_keys=True).encode()).hexdigest()
    tags = {"intern.plan_source": transcript.source, "intern.planner": transcript.planner[:500],
            "intern.llm_model": transcript.model, "intern.llm_mode": transcript.mode or "none",
            "intern.prompt_sha256": prompts[:16]}
    if transcript.notes:
        tags["intern.plan_notes"] = redact("; ".join(transcript.notes))[:5000]
    if transcript.error:
        tags["intern.llm_error"] = redact(transcript.error)[:5000]
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    metrics = {"llm_plan_dollars": transcript.dollars, "llm_prompt_tokens": transcript.prompt_tokens,
               "llm_completion_tokens": transcript.completion_tokens, "llm_calls": len(transcript.calls)}
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)


def update_result(result: ExperimentResult) -> None:
    """Rewrite a finished run's result after the controller's confirmation check."""
    client = MlflowClient()
    run_id = result.mlflow_run_id
    if result.confirm is not None:
        client.log_metric(run_id, "confirm_score", result.confirm.value)
    if result.confirmed is not None:
        client.set_tag(run_id, "intern.confirmed", str(result.confirmed).lower())
    client.log_text(run_id, result.model_dump_json(indent=2), RESULT_ARTIFACT)


def load_history(experiment_id: str) -> list[ExperimentResult]:
    """Finished experiments of this goal, oldest first. Unfinished attempts (a killed
    controller or worker) are skipped: their plan is re-run if it is planned again."""
    client = MlflowClient()
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment'",
                              max_results=5000, order_by=["attributes.start_time ASC"])
    history, seen = [], set()
    for run in runs:
        if run.data.tags.get(TAG_STATE) != "done":
            continue
        text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{RESULT_ARTIFACT}")
        result = ExperimentResult.model_validate_json(text)
        if result.plan_id not in seen:
            seen.add(result.plan_id)
            history.append(result)
    return history


def get_or_log_baseline(experiment_id: str, goal: Goal, split: str, compute) -> EvalScore:
    """Evaluate the base model once per goal and split; a resumed loop reuses the score."""
    kind = f"baseline-{split}"
    run = find_run(experiment_id, kind, done=True)
    if run is not None:
        return EvalScore.model_validate_json(run.data.tags["intern.score"])
    score: EvalScore = compute()
    client = MlflowClient()
    run_id = client.create_run(experiment_id, run_name=kind, tags={TAG_GOAL: goal.goal_id(), TAG_KIND: kind}).info.run_id
    client.log_param(run_id, "base_model", goal.base_model)
    client.log_metric(run_id, f"{split}_score", score.value)
    if score.stderr is not None:
        client.log_metric(run_id, f"{split}_stderr", score.stderr)
    client.set_tag(run_id, "intern.score", score.model_dump_json())
    client.set_tag(run_id, TAG_STATE, "done")
    client.set_terminated(run_id, "FINISHED")
    return score


def registry_name(goal: Goal) -> str:
    return f"intern-{goal.name}"


def register_champion(goal: Goal, result: ExperimentResult) -> str:
    """Store the champion's weights once, in its run's artifacts, and point the registry alias
    `champion` at them. Idempotent: a resumed controller calls it again for the champion it
    rebuilt from history (and repairs a move that a crash interrupted)."""
    client = MlflowClient()
    run_id = result.mlflow_run_id
    name = registry_name(goal)
    store_champion_weights(run_id, result.model_path)
    try:
        current = client.get_model_version_by_alias(name, "champion")
        if current.run_id == run_id:
            return current.version
    except mlflow.exceptions.MlflowException:
        pass  # no registered model or no alias yet
    try:
        client.create_registered_model(name, tags={TAG_GOAL: goal.goal_id()})
    except mlflow.exceptions.MlflowException:
        pass  # already registered
    version = client.create_model_version(name, source=f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id,
                                          tags={TAG_PLAN: result.plan_id})
    client.set_registered_model_alias(name, "champion", version.version)
    client.set_tag(run_id, "intern.champion", "true")
    return version.version


def local_artifact_dir(run_id: str) -> Path | None:
    """The run's artifact folder when the artifact store is a local (or mounted) path, else None
    (a tracking server proxying artifacts, s3, ...)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    repo = get_artifact_repository(MlflowClient().get_run(run_id).info.artifact_uri)
    return Path(repo.artifact_dir) if isinstance(repo, LocalArtifactRepository) else None


def store_champion_weights(run_id: str, model_path: str | None) -> None:
    """Put the champion's weights in its run's artifacts (`runs:/<run>/model`, what the registry
    version points at) without keeping a second copy.

    Local artifact store and weights under INTERN_WORK_DIR: the folder is *moved* into the
    artifacts and a symlink is left at `model_path`, so the loop (init_from champion, the
    confirmation and final test evaluations, GPU workers on shared storage) keeps using the same
    path. A folder outside the work dir is copied, never moved. Remote artifact store: uploaded
    once; the work-dir copy stays while it is the champion because GPU workers read it from there
    (mlintern.retention deletes it when it is no longer kept)."""
    if not model_path:
        raise ValueError(f"run {run_id}: a champion without weights (model_path is empty)")
    src = Path(model_path)
    local = local_artifact_dir(run_id)
    if local is None:
        if not MlflowClient().list_artifacts(run_id, MODEL_ARTIFACT):
            MlflowClient().log_artifacts(run_id, str(src), MODEL_ARTIFACT)
        return
    dst = local / MODEL_ARTIFACT
    if src.is_symlink():
        if src.resolve() == dst.resolve() and (dst / "config.json").exists():
            return  # already moved
        raise RuntimeError(f"champion weights {src} link to {src.resolve()}, not to the run's artifacts {dst}")
    if not src.exists():
        if (dst / "config.json").exists():  # moved, then the controller died before the link
            src.symlink_to(dst, target_is_directory=True)
            return
        raise FileNotFoundError(f"champion weights {src} are missing and were never stored in run {run_id}")
    if dst.exists() and not dst.is_symlink():
        shutil.rmtree(dst)  # an interrupted earlier copy/move
    work_dir = get_settings().work_dir.resolve()
    if not src.resolve().is_relative_to(work_dir):
        shutil.copytree(src, dst)  # not ours to move
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))  # a rename on the same filesystem: no extra space, instant
    src.symlink_to(dst, target_is_directory=True)
    MlflowClient().set_tag(run_id, TAG_WEIGHTS, "artifacts")
    log.info("champion weights of run %s moved to %s (linked from %s)", run_id, dst, src)


def log_report(experiment_id: str, goal: Goal, report, champion: ExperimentResult | None) -> str:
    """A `report` run holding the markdown report and base-vs-champion test scores."""
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name="report",
                            tags={TAG_GOAL: goal.goal_id(), TAG_KIND: "report",
                                  "intern.stop_reason": report.stop_reason, "intern.planner": report.planner})
    run_id = run.info.run_id
    metrics = {"base_dev": report.baseline_dev, "base_test": report.baseline_test,
               "champion_dev": report.champion_dev, "champion_test": report.champion_test}
    for key, score in metrics.items():
        if score is not None:
            client.log_metric(run_id, key, score.value)
    client.log_metric(run_id, "experiments", len(report.experiments))
    client.log_metric(run_id, "llm_dollars", report.llm_dollars)
    client.log_text(run_id, report.markdown, "report.md")
    client.log_metric(run_id, "budget_seconds", report.budget_seconds)
    client.log_metric(run_id, "used_seconds", report.used_seconds)
    client.log_text(run_id, report.model_dump_json(indent=2, exclude={"markdown"}), "report.json")
    if champion is not None and champion.mlflow_run_id and report.champion_test is not None:
        client.log_metric(champion.mlflow_run_id, "test_score", report.champion_test.value)
    client.set_tag(run_id, TAG_STATE, "done")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def log_progress(experiment_id: str, goal: Goal, png: bytes) -> None:
    """The progress chart on the goal's `progress` run (one run per goal, the chart overwritten)."""
    client = MlflowClient()
    run = find_run(experiment_id, "progress")
    run_id = run.info.run_id if run is not None else client.create_run(
        experiment_id, run_name="progress", tags={TAG_GOAL: goal.goal_id(), TAG_KIND: "progress"}).info.run_id
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "progress.png"
        path.write_bytes(png)
        client.log_artifact(run_id, str(path))


def log_literature(experiment_id: str, goal: Goal, query: str, digests: list, error: str | None) -> None:
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name="literature",
                            tags={TAG_GOAL: goal.goal_id(), TAG_KIND: "literature", "intern.arxiv_query": query[:5000]})
    client.log_metric(run.info.run_id, "papers_digested", len(digests))
    if error:
        client.set_tag(run.info.run_id, "intern.literature_error", error[:5000])
    client.log_text(run.info.run_id, json.dumps([d.model_dump() for d in digests], indent=2), "digests.json")
    client.set_terminated(run.info.run_id, "FINISHED")

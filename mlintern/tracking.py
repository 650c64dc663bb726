"""MLflow plumbing under the goal ledger (mlintern/ledger.py): the tracking URI, names and tags,
run lookup, the transcript record, and where the champion's weights are stored.

MLflow is the loop's durable memory: a restarted controller rebuilds its history from it
(finished plans are found by their plan hash and never re-run), and remote experiment runs
report their results there. Goal-scoped reads and writes go through GoalLedger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from mlintern.schemas import Goal
from mlintern.settings import get_settings

log = logging.getLogger(__name__)

RESULT_ARTIFACT = "result.json"
TAG_GOAL = "intern.goal_id"
TAG_KIND = "intern.kind"
TAG_PLAN = "intern.plan_id"
TAG_STATE = "intern.state"
TAG_WEIGHTS = "intern.weights"  # artifacts | deleted (absent: the work dir)
MODEL_ARTIFACT = "model"
TRANSCRIPT_ARTIFACT = "llm_transcript.json"
CHAMPION_ALIAS = "champion"


def init_tracking() -> str:
    uri = get_settings().resolved_tracking_uri()
    if uri.startswith("sqlite:///"):
        create_sqlite_store(Path(uri[len("sqlite:///"):]))
    mlflow.set_tracking_uri(uri)
    return uri


def create_sqlite_store(path: Path) -> None:
    """Create a new SQLite tracking store all at once: MLflow's schema migrations run on a private
    file that is linked into place only when complete. A process killed during MLflow's own
    in-place creation left a half-migrated store (`table _alembic_tmp_model_versions already
    exists`) that every later run failed on."""
    if path.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", (path.parent / "mlartifacts").as_uri())
        store.engine.dispose()
        try:
            os.link(tmp, path)  # atomic, and never over a store another process finished first
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def experiment_name(goal: Goal) -> str:
    return f"intern-{goal.name}-{goal.goal_id()}"


def artifact_location() -> str | None:
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


def runs_of(experiment_id: str, kind: str, plan_id: str | None = None) -> list:
    query = f"tags.`{TAG_KIND}` = '{kind}'"
    if plan_id:
        query += f" and tags.`{TAG_PLAN}` = '{plan_id}'"
    return MlflowClient().search_runs([experiment_id], filter_string=query, max_results=1000,
                                      order_by=["attributes.start_time DESC"])


def find_run(experiment_id: str, kind: str, plan_id: str | None = None, *, done: bool = False) -> Any | None:
    """The newest run of this kind (and plan); with done=True only a finished one."""
    for run in runs_of(experiment_id, kind, plan_id):
        if not done or run.data.tags.get(TAG_STATE) == "done":
            return run
    return None


def transcript_record(transcript) -> tuple[str, dict[str, str], dict[str, float]]:
    """What a run records of an `LLMTranscript`: its JSON with the API key masked wherever it
    might have been echoed, tags for filtering (source, mode, model, prompt hash) and metrics
    for tokens and dollars."""
    from mlintern.llm import redact

    prompts = hashlib.sha256(json.dumps(transcript.prompt_sha256, sort_keys=True).encode()).hexdigest()
    tags = {"intern.plan_source": transcript.source, "intern.planner": transcript.planner[:500],
            "intern.llm_model": transcript.model, "intern.llm_mode": transcript.mode or "none",
            "intern.prompt_sha256": prompts[:16]}
    if transcript.notes:
        tags["intern.plan_notes"] = redact("; ".join(transcript.notes))[:5000]
    if transcript.error:
        tags["intern.llm_error"] = redact(transcript.error)[:5000]
    metrics = {"llm_plan_dollars": transcript.dollars, "llm_prompt_tokens": transcript.prompt_tokens,
               "llm_completion_tokens": transcript.completion_tokens, "llm_calls": len(transcript.calls)}
    return redact(transcript.model_dump_json(indent=2)), tags, metrics


def registry_name(goal: Goal) -> str:
    return f"intern-{goal.name}"


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

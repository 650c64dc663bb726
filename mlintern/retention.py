"""Disk retention: keep the champion and the best few candidates, delete the other weights.

Every experiment writes a full model to `<work_dir>/runs/<goal_id>/<plan_id>/model` (135M model:
0.5 GB in fp32; 1.7B: 3.4 GB in bf16). A loop of 50 experiments kept them all. Now, once a result
is recorded (its metrics, plan, result.json and data lineage are in MLflow), the loop calls
`enforce()`; `ml-intern gc` does the same for every goal in the tracking store, plus the leftovers
of crashed runs and old nightly champion downloads.

Kept: the goal's champion (stored once, in its run's artifacts: mlintern.tracking.
store_champion_weights) and the `goal.retention.keep_best_candidates` best other candidates by
dev score. Deleted: the other candidates' weights, a former champion's weights that fell out of
the best few (its registry version is deleted too: every version listed in the registry loads),
and half-written `model.partial` folders of finished or interrupted runs. The MLflow run of a
deleted candidate gets the tag `intern.weights=deleted`.

Nothing outside INTERN_WORK_DIR or the run's own artifacts is ever deleted, and nothing of a plan
whose MLflow run is not finished (a parallel experiment, another controller) is touched.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, Field

from mlintern.schemas import ExperimentResult, Goal
from mlintern.settings import get_settings

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"  # mlintern.training.runner.save_model writes here first


class RetentionSummary(BaseModel):
    kept: list[str] = Field(default_factory=list, description="plan ids whose weights are kept")
    deleted: list[str] = Field(default_factory=list, description="plan ids whose weights were deleted now")
    freed_bytes: int = 0
    dry_run: bool = False

    def merge(self, other: "RetentionSummary") -> None:
        self.kept += other.kept
        self.deleted += other.deleted
        self.freed_bytes += other.freed_bytes

    def line(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (f"retention: weights kept for {len(self.kept)} plan(s), deleted for {len(self.deleted)}; "
                f"{verb} {human(self.freed_bytes)}")


class DiskUsage(BaseModel):
    """What the report shows: bytes on disk (allocated blocks, hard links once, links not followed)."""

    work_dir: str
    work_dir_bytes: int
    goal_runs_bytes: int = Field(description="<work_dir>/runs/<goal_id>: this goal's candidates, data, logs")
    artifacts_dir: str | None = Field(None, description="the goal's local MLflow artifacts; None if remote")
    artifacts_bytes: int | None = None
    weights_kept: int = 0
    weights_deleted: int = 0


# ----------------------------------------------------------------------------- sizes

def human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def disk_bytes(path: Path) -> int:
    """Like `du -s`: allocated bytes under `path`, each inode once, symlinks not followed."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return 0
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        p = stack.pop()
        try:
            st = p.lstat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        if p.is_dir() and not p.is_symlink():
            try:
                stack.extend(p.iterdir())
            except OSError:
                continue
    return total


# ----------------------------------------------------------------------------- where weights live

def run_dir(goal: Goal, plan_id: str) -> Path:
    """flows/experiment.py's output folder of a plan; the runner saves `model` inside it."""
    return get_settings().work_dir.resolve() / "runs" / goal.goal_id() / plan_id


def weight_paths(goal: Goal, result: ExperimentResult) -> list[Path]:
    """Every place this plan's weights may be in the work dir: the recorded model_path, the
    conventional `model` folder (a run whose evaluation failed records none) and a half-written
    `model.partial`."""
    base = run_dir(goal, result.plan_id)
    paths = [base / "model", base / f"model{PARTIAL_SUFFIX}"]
    if result.model_path and Path(result.model_path) not in paths:
        paths.insert(0, Path(result.model_path))
    return [p for p in paths if p.exists() or p.is_symlink()]


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve()) or path.absolute().is_relative_to(root.resolve())
    except OSError:
        return False


def _delete_path(path: Path, allowed_roots: list[Path], dry_run: bool,
                 link_roots: list[Path] | None = None) -> int:
    """Delete a weights folder, or a link and the folder it points to; returns the bytes freed.
    Refuses a folder outside `allowed_roots` (the work dir) and deletes a link's target only
    inside `link_roots` (the run's own artifacts: where register_champion moved it)."""
    if path.is_symlink():
        target = path.resolve()
        freed = 0
        if target.exists() and any(_inside(target, r) for r in link_roots or []):
            freed = disk_bytes(target)
            if not dry_run:
                shutil.rmtree(target)
        if not dry_run:
            path.unlink()
        return freed
    if not any(path.absolute().is_relative_to(r) for r in allowed_roots):
        log.warning("retention: %s is outside %s; left alone", path, allowed_roots)
        return 0
    freed = disk_bytes(path)
    if not dry_run:
        shutil.rmtree(path)
    return freed


def choose_kept(history: list[ExperimentResult], champion: ExperimentResult | None, keep: int) -> set[str]:
    """The champion plus the `keep` best other successful candidates by dev score (newest first
    on ties)."""
    kept = {champion.plan_id} if champion is not None else set()
    others = [r for r in history if r.status == "succeeded" and r.dev is not None and r.plan_id not in kept]
    order = sorted(range(len(others)), key=lambda i: (others[i].dev.value, i), reverse=True)
    kept |= {others[i].plan_id for i in order[:keep]}
    return kept


# ----------------------------------------------------------------------------- the policy

def enforce(goal: Goal, history: list[ExperimentResult], champion: ExperimentResult | None,
            *, keep: int | None = None, dry_run: bool = False) -> RetentionSummary:
    """Apply the goal's retention to its finished experiments (`history`: results already
    recorded in MLflow). Never raises: a failed clean-up must not end a ten-hour loop."""
    summary = RetentionSummary(dry_run=dry_run)
    try:
        _enforce(goal, history, champion, goal.retention.keep_best_candidates if keep is None else keep,
                 dry_run, summary)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal
        log.warning("retention for goal %s failed: %s", goal.goal_id(), exc, exc_info=True)
    return summary


def _enforce(goal: Goal, history: list[ExperimentResult], champion: ExperimentResult | None, keep: int,
             dry_run: bool, summary: RetentionSummary) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from mlintern.tracking import TAG_WEIGHTS, experiment_name, local_artifact_dir, registry_name

    client = MlflowClient()
    work_dir = get_settings().work_dir.resolve()
    kept_ids = choose_kept(history, champion, keep)
    registry_run = _registry_champion_run(registry_name(goal))
    exp = mlflow.get_experiment_by_name(experiment_name(goal))
    tags = {}  # run id -> tags, one query for the whole goal
    if exp is not None:
        for run in client.search_runs([exp.experiment_id], "tags.`intern.kind` = 'experiment'", max_results=5000):
            tags[run.info.run_id] = run.data.tags
    for result in {r.plan_id: r for r in history}.values():
        paths = weight_paths(goal, result)
        if result.plan_id in kept_ids or (registry_run and result.mlflow_run_id == registry_run):
            summary.kept.append(result.plan_id)
            for partial in [p for p in paths if p.name.endswith(PARTIAL_SUFFIX)]:
                summary.freed_bytes += _delete_path(partial, [work_dir], dry_run)
            continue
        run_tags = tags.get(result.mlflow_run_id or "", {})
        registered = run_tags.get("intern.champion") == "true" and run_tags.get(TAG_WEIGHTS) != "deleted"
        if not paths and not registered:
            continue  # nothing on disk: a failed run, or deleted before
        run_artifacts = local_artifact_dir(result.mlflow_run_id) if result.mlflow_run_id else None
        freed = sum(_delete_path(p, [work_dir], dry_run, [run_artifacts] if run_artifacts else [])
                    for p in paths)
        if registered:
            freed += _drop_registered_weights(goal, result, run_artifacts, dry_run)
        if result.mlflow_run_id and not dry_run and run_tags.get(TAG_WEIGHTS) != "deleted":
            client.set_tag(result.mlflow_run_id, TAG_WEIGHTS, "deleted")
            client.set_tag(result.mlflow_run_id, "intern.weights_deleted_at",
                           time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        summary.deleted.append(result.plan_id)
        summary.freed_bytes += freed
        log.info("retention: deleted the weights of plan %s (%s)", result.plan_id, human(freed))


def _registry_champion_run(name: str) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient().get_model_version_by_alias(name, "champion").run_id
    except MlflowException:
        return None


def _drop_registered_weights(goal: Goal, result: ExperimentResult, run_artifacts: Path | None,
                             dry_run: bool) -> int:
    """A former champion left the kept set: delete its stored weights and its registry versions
    (every version listed in the registry should load). Returns the bytes freed locally."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    from mlintern.tracking import MODEL_ARTIFACT, registry_name

    client = MlflowClient()
    freed = 0
    if run_artifacts is not None:
        target = run_artifacts / MODEL_ARTIFACT
        if target.exists():
            freed = disk_bytes(target)
            if not dry_run:
                shutil.rmtree(target)
    elif not dry_run:
        uri = client.get_run(result.mlflow_run_id).info.artifact_uri
        try:
            get_artifact_repository(uri).delete_artifacts(MODEL_ARTIFACT)
        except Exception as exc:  # noqa: BLE001 - e.g. a store without delete: say so, keep going
            log.warning("could not delete %s/%s: %s", uri, MODEL_ARTIFACT, exc)
    if dry_run:
        return freed
    name = registry_name(goal)
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{result.mlflow_run_id}'")
    except MlflowException:
        versions = []
    for mv in versions:
        if mv.aliases:
            continue  # still aliased (another goal's champion?): keep
        client.delete_model_version(name, mv.version)
        log.info("deleted registry version %s v%s (weights of former champion %s)", name, mv.version,
                 result.plan_id)
    return freed


# ----------------------------------------------------------------------------- usage and gc

def disk_usage(goal: Goal, history: list[ExperimentResult]) -> DiskUsage:
    from mlintern.tracking import artifact_location, experiment_name

    settings = get_settings()
    work = settings.work_dir.resolve()
    usage = DiskUsage(work_dir=str(work), work_dir_bytes=disk_bytes(work),
                      goal_runs_bytes=disk_bytes(work / "runs" / goal.goal_id()))
    root = artifact_location()
    if root and root.startswith(("file:", "/")):
        import mlflow

        exp = mlflow.get_experiment_by_name(experiment_name(goal))
        if exp is not None and exp.artifact_location.startswith(("file:", "/")):
            from mlflow.utils.file_utils import local_file_uri_to_path

            folder = Path(local_file_uri_to_path(exp.artifact_location))
            usage.artifacts_dir, usage.artifacts_bytes = str(folder), disk_bytes(folder)
    for result in history:
        if result.status != "succeeded":
            continue
        if weight_paths(goal, result):
            usage.weights_kept += 1
        else:
            usage.weights_deleted += 1
    return usage


def goals_in_store() -> list[tuple[Goal, str]]:
    """Every goal with an MLflow experiment in the tracking store, with its experiment id."""
    from mlflow.tracking import MlflowClient

    out = []
    for exp in MlflowClient().search_experiments(max_results=5000):
        text = exp.tags.get("intern.goal")
        if not text:
            continue
        try:
            out.append((Goal.model_validate_json(text), exp.experiment_id))
        except ValueError as exc:  # a goal written by another version of the schema
            log.warning("experiment %s: goal not readable (%s); skipped", exp.name, str(exc).splitlines()[0])
    return out


def replay(goal: Goal, experiment_id: str) -> tuple[list[ExperimentResult], ExperimentResult | None]:
    """History and champion of a goal, as a resumed controller would rebuild them."""
    from mlintern.ledger import GoalLedger
    from mlintern.tracking import init_tracking

    history, state = GoalLedger(goal, experiment_id, init_tracking()).replay()
    return history, state.champion if state is not None else None


def stale_partials(max_age_hours: float) -> list[Path]:
    """`model.partial` folders under <work_dir>/runs not written to for `max_age_hours`: a training
    process that died while saving. A live save keeps writing, so it is never this old."""
    runs = get_settings().work_dir.resolve() / "runs"
    cutoff = time.time() - max_age_hours * 3600
    found = []
    for p in runs.glob(f"*/*/model{PARTIAL_SUFFIX}") if runs.exists() else []:
        newest = max((f.stat().st_mtime for f in p.rglob("*") if f.is_file()), default=p.stat().st_mtime)
        if newest < cutoff:
            found.append(p)
    return found


def old_champion_downloads(in_use: set[str]) -> list[Path]:
    """flows/nightly.py downloads `<work_dir>/champions/<name>/v<N>` per champion version: those not
    aliased `champion` any more and not the base model of a goal still in `in_use`."""
    root = get_settings().work_dir.resolve() / "champions"
    if not root.exists():
        return []
    found = []
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        current = _registry_champion_version(f"intern-{name_dir.name}")
        for folder in sorted(name_dir.glob("v*")):
            if folder.name == f"v{current}" or str(folder.resolve()) in in_use:
                continue
            found.append(folder)
    return found


def _registry_champion_version(name: str) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        return None


def collect_garbage(goal_filter: str | None = None, keep: int | None = None, dry_run: bool = False,
                    partial_age_hours: float = 6.0) -> RetentionSummary:
    """`ml-intern gc`: retention for every goal in the tracking store (or those named
    `goal_filter`), stale partial saves, and nightly champion downloads nobody uses any more."""
    total = RetentionSummary(dry_run=dry_run)
    goals = goals_in_store()
    in_use: set[str] = set()
    for goal, experiment_id in goals:
        if goal_filter and goal.name != goal_filter:
            continue
        history, champion = replay(goal, experiment_id)
        total.merge(enforce(goal, history, champion, keep=keep, dry_run=dry_run))
    from mlflow.tracking import MlflowClient

    for goal, experiment_id in goals:  # base models of goals without a report may still resume
        if Path(goal.base_model).expanduser().exists() and not MlflowClient().search_runs(
                [experiment_id], "tags.`intern.kind` = 'report'", max_results=1):
            in_use.add(str(Path(goal.base_model).expanduser().resolve()))
    work_dir = get_settings().work_dir.resolve()
    for folder in stale_partials(partial_age_hours) + ([] if goal_filter else old_champion_downloads(in_use)):
        total.freed_bytes += _delete_path(folder, [work_dir], dry_run)
        log.info("%s %s", "would delete" if dry_run else "deleted", folder)
    return total

"""One owner for a goal's durable state: the goal ledger.

`GoalLedger.open(goal)` returns the ledger of a goal (one per process and goal): its MLflow
experiment, and everything the loop records there and reads back after a restart: baselines,
experiment runs and their results (the history), plan transcripts, the champion in the model
registry, literature with its LLM spend, the progress chart and the report. Flows and tasks hold
a ledger; nothing else writes a goal's runs. The ledger records what the flows computed and
never calls back into them (a baseline is evaluated by the flow, then recorded here).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import mlflow
from mlflow.tracking import MlflowClient

from mlintern.loop import LoopState
from mlintern.schemas import EvalScore, ExperimentPlan, ExperimentResult, Goal
from mlintern.tracking import (
    CHAMPION_ALIAS,
    MODEL_ARTIFACT,
    RESULT_ARTIFACT,
    TAG_GOAL,
    TAG_KIND,
    TAG_PLAN,
    TAG_STATE,
    TRANSCRIPT_ARTIFACT,
    artifact_location,
    experiment_name,
    find_run,
    flatten,
    init_tracking,
    registry_name,
    runs_of,
    store_champion_weights,
    transcript_record,
)


@dataclass(frozen=True)
class Champion:
    """The registry's current champion of a goal: version, the run that trained it, its weights."""

    version: str
    run_id: str | None
    source: str


class GoalLedger:
    _open: ClassVar[dict[tuple[str, str], GoalLedger]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, goal: Goal, experiment_id: str, tracking_uri: str) -> None:
        self.goal = goal
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, goal: Goal) -> GoalLedger:
        """The goal's ledger, creating its MLflow experiment on first use (safe when another
        process creates it at the same moment)."""
        uri = init_tracking()
        key = (uri, goal.goal_id())
        with cls._lock:
            if key not in cls._open:
                cls._open[key] = cls(goal, _ensure_experiment(goal), uri)
            return cls._open[key]

    @classmethod
    def find(cls, goal: Goal) -> GoalLedger | None:
        """The ledger of a goal that has already run, or None (creates nothing)."""
        uri = init_tracking()
        exp = mlflow.get_experiment_by_name(experiment_name(goal))
        return None if exp is None else cls(goal, exp.experiment_id, uri)

    # ------------------------------------------------------------------ baselines
    def baseline(self, split: str) -> EvalScore | None:
        """The base model's recorded score on `split` (dev, confirm, test), or None."""
        run = find_run(self.experiment_id, f"baseline-{split}", done=True)
        return None if run is None else EvalScore.model_validate_json(run.data.tags["intern.score"])

    def record_baseline(self, split: str, score: EvalScore) -> EvalScore:
        kind = f"baseline-{split}"
        run_id = self.client.create_run(self.experiment_id, run_name=kind, tags=self._tags(kind)).info.run_id
        self.client.log_param(run_id, "base_model", self.goal.base_model)
        self.client.log_metric(run_id, f"{split}_score", score.value)
        if score.stderr is not None:
            self.client.log_metric(run_id, f"{split}_stderr", score.stderr)
        self.client.set_tag(run_id, "intern.score", score.model_dump_json())
        self._done(run_id)
        return score

    # ------------------------------------------------------------------ experiments
    def start_run(self, plan: ExperimentPlan, flow_run_id: str | None, gpu: str | None = None) -> str:
        """Create the MLflow run of one attempt at a plan (on the worker's GPU `gpu`, where it has one);
        returns its id.

        A run of the same plan left unfinished by a killed process is marked KILLED (tag
        intern.state=interrupted) rather than reused, so no metric history is written twice."""
        plan_id = plan.plan_id()
        for stale in runs_of(self.experiment_id, "experiment", plan_id):
            if stale.data.tags.get(TAG_STATE) not in ("done", "interrupted"):
                self.client.set_tag(stale.info.run_id, TAG_STATE, "interrupted")
                self.client.set_terminated(stale.info.run_id, "KILLED")
        tags = {**self._tags("experiment"), TAG_PLAN: plan_id, TAG_STATE: "running",
                "intern.method": plan.method.value, "mlflow.note.content": _note(plan),
                "intern.cited_papers": ",".join(plan.cited_papers)}
        if plan.retry_of:
            tags["intern.retry_of"] = plan.retry_of
        if flow_run_id:
            tags["prefect.flow_run_id"] = flow_run_id
        if gpu:
            tags["intern.gpu"] = gpu
        run_id = self.client.create_run(self.experiment_id, run_name=f"{plan.method.value}-{plan_id[:8]}",
                                        tags=tags).info.run_id
        params = flatten("plan", plan.model_dump(mode="json", exclude={"hypothesis", "rationale", "cited_papers"}))
        self.client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in params.items()])
        self.client.log_text(run_id, plan.model_dump_json(indent=2), "plan.json")
        return run_id

    def log_transcript(self, run_id: str, transcript) -> None:
        """How the plan was made (an `LLMTranscript`): the artifact llm_transcript.json, tags for
        filtering (source, mode, model, prompt hash) and metrics for tokens and dollars. The API
        key is masked first, wherever it might have been echoed."""
        text, tags, metrics = transcript_record(transcript)
        self.client.log_text(run_id, text, TRANSCRIPT_ARTIFACT)
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, value)

    def finish_run(self, run_id: str, result: ExperimentResult) -> None:
        client = self.client
        if result.dev is not None:
            if not result.curve or result.curve[-1].value != result.dev.value:  # the job logged its own checks
                client.log_metric(run_id, "dev_score", result.dev.value, step=result.steps)
            if result.dev.stderr is not None:
                client.log_metric(run_id, "dev_stderr", result.dev.stderr)
        metrics = {"train_seconds": result.train_seconds, "accelerator_hours": result.accelerator_hours,
                   "accelerator_seconds": result.accelerator_hours * 3600, "steps": result.steps,
                   "examples": result.examples, "tokens": result.tokens,
                   "train_loop_seconds": result.train_loop_seconds, "eval_seconds": result.eval_seconds,
                   "experiment_llm_dollars": result.llm_dollars}
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()])
        client.set_tag(run_id, "intern.status", result.status)
        client.set_tag(run_id, "intern.stage", result.plan.stage)
        if result.failure is not None:
            client.set_tag(run_id, "intern.failure_kind", result.failure.kind.value)
            client.set_tag(run_id, "intern.failure", result.failure.message[:5000])
            client.log_text(run_id, result.failure.log_tail, "failure_log_tail.txt")
        client.log_text(run_id, result.model_dump_json(indent=2), RESULT_ARTIFACT)
        client.set_tag(run_id, TAG_STATE, "done")
        client.set_terminated(run_id, "FAILED" if result.status == "failed" else "FINISHED")

    def withdraw_run(self, run_id: str) -> None:
        """Delete the run of a provisional experiment the controller withdrew before it took the GPU: it
        trained nothing and spent no budget, so it is no result (the history and a resume never see it)."""
        self.client.set_tag(run_id, TAG_STATE, "withdrawn")
        self.client.set_terminated(run_id, "KILLED")
        self.client.delete_run(run_id)

    def update(self, result: ExperimentResult) -> None:
        """Rewrite a finished run's result after the controller's confirmation check."""
        run_id = result.mlflow_run_id
        if result.confirm is not None:
            self.client.log_metric(run_id, "confirm_score", result.confirm.value)
        if result.confirmed is not None:
            self.client.set_tag(run_id, "intern.confirmed", str(result.confirmed).lower())
        self.client.log_text(run_id, result.model_dump_json(indent=2), RESULT_ARTIFACT)

    def result(self, plan_id: str) -> ExperimentResult | None:
        """The recorded result of a finished plan, or None."""
        run = find_run(self.experiment_id, "experiment", plan_id, done=True)
        return None if run is None else self._load_result(run.info.run_id)

    def history(self) -> list[ExperimentResult]:
        """Finished experiments of this goal, oldest first. Unfinished attempts (a killed
        controller or worker) are skipped: their plan is re-run if it is planned again."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment'",
                                       max_results=5000, order_by=["attributes.start_time ASC"])
        history, seen = [], set()
        for run in runs:
            if run.data.tags.get(TAG_STATE) != "done":
                continue
            result = self._load_result(run.info.run_id)
            if result.plan_id not in seen:
                seen.add(result.plan_id)
                history.append(result)
        return history

    def replay(self) -> tuple[list[ExperimentResult], LoopState | None]:
        """The history, and the loop state a resumed controller rebuilds from it (champion,
        patience used); no state before the base model's dev score is recorded."""
        history, baseline = self.history(), self.baseline("dev")
        if baseline is None:
            return history, None
        state = LoopState(goal=self.goal, baseline=baseline)
        for result in history:
            state.record(result)
        return history, state

    # ------------------------------------------------------------------ champion
    def register_champion(self, result: ExperimentResult) -> str:
        """Store the champion's weights once, in its run's artifacts, and point the registry alias
        `champion` at them. Idempotent: a resumed controller calls it again for the champion it
        rebuilt from history (and repairs a move that a crash interrupted)."""
        run_id, name = result.mlflow_run_id, registry_name(self.goal)
        store_champion_weights(run_id, result.model_path)
        current = self.champion()
        if current is not None and current.run_id == run_id:
            return current.version
        try:
            self.client.create_registered_model(name, tags={TAG_GOAL: self.goal.goal_id()})
        except mlflow.exceptions.MlflowException:
            pass  # already registered
        version = self.client.create_model_version(name, source=f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id,
                                                   tags={TAG_PLAN: result.plan_id})
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
        self.client.set_tag(run_id, "intern.champion", "true")
        return version.version

    def champion(self) -> Champion | None:
        """The registry's champion for this goal's name, or None while there is none."""
        try:
            mv = self.client.get_model_version_by_alias(registry_name(self.goal), CHAMPION_ALIAS)
        except mlflow.exceptions.MlflowException as exc:  # no registered model or no alias yet
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise
        source = f"runs:/{mv.run_id}/{MODEL_ARTIFACT}" if mv.run_id else mv.source
        return Champion(version=str(mv.version), run_id=mv.run_id, source=source)

    # ------------------------------------------------------------------ literature, progress, report
    def log_literature(self, query: str, digests: list, error: str | None, llm_dollars: float) -> None:
        run_id = self.client.create_run(self.experiment_id, run_name="literature", tags={
            **self._tags("literature"), "intern.arxiv_query": query[:5000]}).info.run_id
        self.client.log_metric(run_id, "papers_digested", len(digests))
        self.client.log_metric(run_id, "llm_dollars", llm_dollars)
        if error:
            self.client.set_tag(run_id, "intern.literature_error", error[:5000])
        self.client.log_text(run_id, json.dumps([d.model_dump() for d in digests], indent=2), "digests.json")
        self._done(run_id)

    def literature_dollars(self) -> float:
        """LLM spend of every literature search of this goal (paper digests), across restarts."""
        runs = runs_of(self.experiment_id, "literature")
        return sum(r.data.metrics.get("llm_dollars", 0.0) for r in runs)

    def log_progress(self, png: bytes) -> None:
        """The progress chart on the goal's `progress` run (one run per goal, the chart overwritten)."""
        run_id = self._singleton("progress")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "progress.png"
            path.write_bytes(png)
            self.client.log_artifact(run_id, str(path))

    def write_report(self, report, champion: ExperimentResult | None, final: bool) -> str:
        """The goal's `report` run: report.md and report.json, rewritten after every experiment
        (dev scores only while the loop runs) and once more at the end with the held-out test
        (tag intern.final=true). One report run per goal."""
        run_id = self._singleton("report")
        client = self.client
        client.set_tag(run_id, "intern.stop_reason", report.stop_reason[:5000])
        client.set_tag(run_id, "intern.planner", report.planner[:5000])
        client.set_tag(run_id, "intern.final", str(final).lower())
        step = len(report.experiments)
        metrics = {"base_dev": report.baseline_dev, "base_test": report.baseline_test,
                   "champion_dev": report.champion_dev, "champion_test": report.champion_test}
        for key, score in metrics.items():
            if score is not None:
                client.log_metric(run_id, key, score.value, step=step)
        for key in ("llm_dollars", "budget_seconds", "used_seconds"):
            client.log_metric(run_id, key, getattr(report, key), step=step)
        client.log_metric(run_id, "experiments", step, step=step)
        client.log_text(run_id, report.markdown, "report.md")
        client.log_text(run_id, report.model_dump_json(indent=2, exclude={"markdown"}), "report.json")
        if final:
            if champion is not None and champion.mlflow_run_id and report.champion_test is not None:
                client.log_metric(champion.mlflow_run_id, "test_score", report.champion_test.value)
            self._done(run_id)
        return run_id

    def final_report(self) -> Any | None:
        """The run of the final report, once the loop has written it."""
        run = find_run(self.experiment_id, "report", done=True)
        return run if run is not None and run.data.tags.get("intern.final") == "true" else None

    # ------------------------------------------------------------------ helpers
    def _tags(self, kind: str) -> dict[str, str]:
        return {TAG_GOAL: self.goal.goal_id(), TAG_KIND: kind}

    def _singleton(self, kind: str) -> str:
        run = find_run(self.experiment_id, kind)
        if run is not None:
            if run.info.status != "RUNNING":  # a resumed loop writes on: reopen it
                self.client.update_run(run.info.run_id, status="RUNNING")
                self.client.set_tag(run.info.run_id, TAG_STATE, "running")
            return run.info.run_id
        return self.client.create_run(self.experiment_id, run_name=kind, tags=self._tags(kind)).info.run_id

    def _done(self, run_id: str) -> None:
        self.client.set_tag(run_id, TAG_STATE, "done")
        self.client.set_terminated(run_id, "FINISHED")

    def _load_result(self, run_id: str) -> ExperimentResult:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{RESULT_ARTIFACT}")
        return ExperimentResult.model_validate_json(text)


def _ensure_experiment(goal: Goal) -> str:
    name = experiment_name(goal)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location(),
                                        tags={TAG_GOAL: goal.goal_id(), "intern.goal": goal.model_dump_json()})
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def _note(plan: ExperimentPlan) -> str:
    cited = ", ".join(plan.cited_papers) or "none"
    return (f"**Hypothesis:** {plan.hypothesis or '-'}\n\n**Rationale:** {plan.rationale or '-'}\n\n"
            f"**Papers:** {cited}\n\n**Data recipe:** {plan.dataset.model_dump_json()}")

"""Find a secret anywhere the loop writes: files (MLflow DB, artifacts, logs), Prefect's
artifacts, flow-run parameters and logs (through its API), and the LLM transcripts logged to
MLflow (through its API)."""

from __future__ import annotations

from pathlib import Path


def scan_files(secret: str, roots: list[Path]) -> list[str]:
    needle = secret.encode()
    hits = []
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and path.stat().st_size < 2_000_000_000:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 24):
                        if needle in chunk:
                            hits.append(str(path))
                            break
    return hits


def scan_prefect(secret: str) -> list[str]:
    from prefect.client.orchestration import get_client

    hits = []
    with get_client(sync_client=True) as client:
        for artifact in client.read_artifacts(limit=200):
            if secret in str(artifact.data) or secret in str(artifact.description):
                hits.append(f"prefect artifact {artifact.key}")
        for flow_run in client.read_flow_runs(limit=200):
            if secret in flow_run.model_dump_json():
                hits.append(f"prefect flow run {flow_run.name}")
        offset = 0
        while True:
            logs = client.read_logs(limit=200, offset=offset)
            hits += [f"prefect log {log.name}" for log in logs if secret in log.message]
            if len(logs) < 200:
                break
            offset += 200
    return hits


def scan_transcripts(secret: str) -> list[str]:
    """Every plan's llm_transcript.json in the MLflow store (read through MLflow, so it also
    covers a remote artifact store), plus the transcript tags of its run."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    hits = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], filter_string="tags.`intern.plan_source` != ''",
                                      max_results=5000):
            text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/llm_transcript.json")
            if secret in text:
                hits.append(f"llm_transcript.json of run {run.info.run_id}")
            if any(secret in v for v in run.data.tags.values()):
                hits.append(f"tags of run {run.info.run_id}")
    return hits

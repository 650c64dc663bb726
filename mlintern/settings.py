"""Process-wide settings from the environment (prefix INTERN_), never from a plan or goal.

Secrets live here as SecretStr so that they print as '**********' in logs and reprs.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Quiet, offline-safe defaults (no telemetry, no Hub calls when offline); a user may override each.
_ENV_DEFAULTS = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def apply_env_defaults() -> None:
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTERN_", extra="ignore")

    work_dir: Path = Path(".intern")
    models_dir: Path | None = None  # where builtin models are converted; default <work_dir>/models
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str | None = None  # e.g. s3://bucket/intern or a shared folder (scale-out)
    llm_model: str | None = None
    llm_api_base: str | None = None
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = 120.0
    llm_retries: int = 2
    # Dispatch experiments through a Prefect deployment instead of an in-process subflow.
    experiment_deployment: str | None = None
    # Experiments sent to one GPU's work queue at once (its worker's --limit, deployments/start_workers.sh):
    # one trains while the next one's flow run starts and builds its rows, then takes the GPU as it frees.
    queue_depth: int = Field(2, ge=1)
    train_timeout_s: float = 6 * 3600
    # "persistent": one long-lived training worker per device imports once and keeps models
    # (mlintern.worker); "fresh": a new process per job (also used under accelerate launch).
    train_worker: Literal["persistent", "fresh"] = "persistent"
    # On a GPU (INTERN_GPU_ID set): two persistent workers, so that a queued job loads its model and
    # builds its trainer (trl tokenizes the rows there) while the job before it trains, and takes the
    # GPU only then. The budget counts a job from the moment it has the GPU.
    build_ahead: bool = True
    # Where a GPU's queue would stay empty behind a running job (the exploration budget is spoken for until
    # that trial ends, or the scale-up waits for it), queue a provisional experiment planned on the likely
    # outcome (the trial is pruned at its first rung; the winner stays): it is built while the job trains and
    # takes the GPU only if the controller releases it when the job ends (mlintern.release).
    speculate: bool = True
    # SFT rows tokenized as training reads them (mlintern.training.sft.tokenize_lazily): None decides by the
    # rows and the device; true/false forces it.
    lazy_tokenize: bool | None = None
    eval_batch_size: int = 16
    # Drill/test hook: JSON such as {"oom_above_batch": 4, "nan_above_lr": 1e-4} simulates
    # a memory cap or a real NaN inside real training. Never set by a plan or an LLM.
    inject_faults: str | None = None
    arxiv_url: str | None = None  # stand-in arXiv API (tests); None = export.arxiv.org

    def resolved_tracking_uri(self) -> str:
        """INTERN_TRACKING_URI when set, else MLFLOW_TRACKING_URI, else ./mlflow.db. Ours first:
        mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into the environment, so a process
        that used another store passes it on to every child, which then wrote to the wrong store."""
        explicit = "tracking_uri" in self.model_fields_set
        uri = self.tracking_uri if explicit else (os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri)
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
        return uri


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    apply_env_defaults()
    return Settings()

"""Shared fixtures: real Prefect (test harness), real MLflow stores, the real SmolLM2 model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Converted builtin models and HF caches persist across tests (and CI steps) under .intern/.
CACHE = Path(os.environ.get("INTERN_TEST_CACHE", ROOT / ".intern" / "test-cache"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(CACHE / "hf-home"))
os.environ.setdefault("INTERN_MODELS_DIR", str(CACHE / "models"))

from mlintern.settings import apply_env_defaults, get_settings  # noqa: E402

apply_env_defaults()


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def intern_env(tmp_path, monkeypatch):
    """A fresh work dir and SQLite MLflow store for one test; settings re-read from env."""
    monkeypatch.setenv("INTERN_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("INTERN_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in ("INTERN_LLM_MODEL", "INTERN_LLM_API_BASE", "INTERN_LLM_API_KEY", "INTERN_INJECT_FAULTS",
                "INTERN_EXPERIMENT_DEPLOYMENT"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    from mlintern.tracking import init_tracking

    init_tracking()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def smol_model() -> str:
    from mlintern.models import resolve_model
    from mlintern.schemas import BUILTIN_BASE_MODEL

    return resolve_model(BUILTIN_BASE_MODEL, CACHE, CACHE / "models")


def tiny_goal(**overrides):
    """A goal small enough for a CPU test: a few optimizer steps, small dev/test sets."""
    from mlintern.schemas import Goal

    data = {
        "name": "test-goal",
        "benchmark": {"dev_size": 12, "test_size": 12, "max_gen_toks": 8},
        "budget": {"max_experiments": 2, "gpu_hours": 1.0, "wall_time_minutes": 30},
        "search_space": {"max_steps": [2, 3], "batch_sizes": [2], "num_examples": [16, 32],
                         "max_length": 64, "learning_rate": [1e-4, 3e-4]},
        "stop": {"patience": 5, "noise_z": 0.0},
        "use_literature": False,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Goal.model_validate(data)

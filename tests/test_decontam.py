"""N-gram decontamination: the rule, the report and the speed (no mocks: real generator items)."""

from __future__ import annotations

import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DO_NOT_TRACK": "true",
               "MLFLOW_DISABLE_TELEMETRY": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}.items():
    os.environ.setdefault(_k, _v)

import random
import time

import pytest

from mlintern.benchmarks.rgym import PROMPT_SUFFIX, make_items
from mlintern.data.decontam import decontaminate, normalize, template_ngrams


def sft_row(question: str, answer: str = "1") -> dict:
    return {"prompt": [{"role": "user", "content": question + PROMPT_SUFFIX}],
            "completion": [{"role": "assistant", "content": answer}]}


def test_normalize_lowercases_strips_punctuation_keeps_operators():
    assert normalize("  Hello,   WORLD!\n(It's) 5+91=? ") == "hello world it s 5 + 91 ="
    assert normalize("5 - 91") != normalize("5 + 91")


@pytest.fixture(scope="module")
def gsm_eval():
    return {"dev": make_items("gsm_symbolic", {}, 20, 1_000_001),
            "test": make_items("gsm_symbolic", {}, 40, 2_000_002)}


def test_planted_test_items_are_removed_and_reported(gsm_eval):
    fresh = [sft_row(r["question"], r["answer"]) for r in make_items("gsm_symbolic", {}, 60, 10**10)]
    planted = [sft_row(r["question"], r["answer"]) for r in gsm_eval["test"][:7]]
    # paraphrase-free but reformatted copies: case, punctuation and spacing must not hide them
    planted.append(sft_row(gsm_eval["test"][7]["question"].upper().replace(",", " ; ")))
    rows = fresh + planted
    ref = template_ngrams(r["question"] for r in make_items("gsm_symbolic", {}, 400, 5 * 10**9))
    clean, report = decontaminate(rows, gsm_eval, ignore_ngrams=ref)
    planted_ids = {str(i) for i in range(len(fresh), len(rows))}
    assert planted_ids <= set(report.removed_ids)
    assert report.removed_by_split["test"] >= 8
    assert report.removed == len(rows) - len(clean) == report.train_rows - report.kept
    assert all(p not in clean for p in planted)
    assert report.examples and report.examples[0].eval_split in ("dev", "test")
    # template-aware: most fresh items of the same generator survive
    assert len([r for r in fresh if r in clean]) >= 0.6 * len(fresh)


def test_more_than_three_shared_ngrams_is_the_threshold():
    words = [f"w{i}" for i in range(40)]
    eval_sets = {"test": [{"question": " ".join(words)}]}
    # 8 + k - 1 consecutive eval words share exactly k 8-grams
    three = {"prompt": "zz " + " ".join(words[:10]) + " yy"}
    four = {"prompt": "zz " + " ".join(words[:11]) + " yy"}
    clean, report = decontaminate([three, four], eval_sets)
    assert clean == [three]
    assert report.examples[0].overlap == 4 and report.examples[0].reason == "ngram_overlap"


def test_short_and_medium_eval_items():
    eval_sets = {"dev": [{"question": "Calculate 5 + 91."}],  # 4 tokens < n: whole-text match
                 "test": [{"question": "one two three four five six seven eight nine"}]}  # 2 n-grams only
    rows = [
        {"prompt": "Calculate 5 + 91.\nGive only the final answer."},  # contains the short item
        {"prompt": "Calculate 5 - 91."},  # operator differs: clean
        {"prompt": "ONE two, three four five six seven eight nine!"},  # all n-grams of the test item
        {"prompt": "one two three four five six seven eight"},  # 1 of its 2 n-grams: clean
    ]
    clean, report = decontaminate(rows, eval_sets)
    assert clean == [rows[1], rows[3]]
    assert report.removed_by_split == {"dev": 1, "test": 1}
    assert {e.reason for e in report.examples} == {"short_item", "all_ngrams"}


def test_boilerplate_shared_by_many_eval_items_is_ignored():
    tail = "give the result as your final answer and do not include any units at all"
    eval_sets = {"test": [{"question": f"item {i} has {i * 7} apples and {i * 3} pears. {tail}"} for i in range(60)]}
    rows = [{"prompt": f"a farmer sells {i} goats for {i * 11} dollars each. {tail}"} for i in range(20)]
    clean, report = decontaminate(rows, eval_sets)
    assert report.removed == 0 and len(clean) == 20 and report.ignored_common_ngrams > 0


def test_speed_10k_train_by_1k_eval():
    rng = random.Random(0)
    vocab = [f"v{i}" for i in range(3000)]
    eval_sets = {"dev": [{"question": " ".join(rng.choices(vocab, k=40))} for _ in range(300)],
                 "test": [{"question": " ".join(rng.choices(vocab, k=40))} for _ in range(700)]}
    train = [{"prompt": [{"role": "user", "content": " ".join(rng.choices(vocab, k=60))}],
              "completion": [{"role": "assistant", "content": "ok"}]} for _ in range(10_000)]
    train[123] = {"prompt": eval_sets["test"][5]["question"]}
    t0 = time.perf_counter()
    clean, report = decontaminate(train, eval_sets)
    elapsed = time.perf_counter() - t0
    assert report.removed_ids == ["123"] and report.removed_by_split["test"] == 1
    assert elapsed < 10, f"decontamination took {elapsed:.1f} s"

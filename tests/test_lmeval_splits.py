"""The process_docs hooks copied next to built-in lm-eval task YAMLs (mlintern.benchmarks.lmeval_splits):
seeded selections, split pass-through, the task's own process_docs, and a copy reading its plan."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from mlintern.benchmarks import lmeval_splits


class _Docs(list):
    """A stand-in for a datasets.Dataset: a list with a split and select()."""

    def __init__(self, items, split):
        super().__init__(items)
        self.split = split

    def select(self, indices):
        return _Docs([self[i] for i in indices], self.split)


def _plan(**kw):
    return {"split": "validation", "orig_process_docs": None, "perm_seed": None, "start": 0, "stop": None,
            "seed": 1, "size": 5, **kw}


def test_select_indices_is_seeded_sorted_and_partitions():
    p = _plan(size=10)
    assert lmeval_splits.select_indices(100, p) == lmeval_splits.select_indices(100, p)
    assert lmeval_splits.select_indices(100, p) == sorted(lmeval_splits.select_indices(100, p))
    assert lmeval_splits.select_indices(3, p) == [0, 1, 2]  # size above the split: all of it
    dev = lmeval_splits.select_indices(50, _plan(perm_seed=7, stop=10, size=10))
    test = lmeval_splits.select_indices(50, _plan(perm_seed=7, start=10, size=40))
    assert len(dev) == 10 and len(test) == 40 and not set(dev) & set(test)


def test_select_touches_only_the_named_split_and_applies_the_task_hook(tmp_path):
    assert len(lmeval_splits._select(_Docs(range(20), "validation"), _plan())) == 5
    assert len(lmeval_splits._select(_Docs(range(20), "train"), _plan())) == 20
    (tmp_path / "utils.py").write_text("def process_docs(ds):\n    return [d * 2 for d in ds]\n")
    out = lmeval_splits._select(_Docs(range(20), "train"), _plan(orig_process_docs=f"{tmp_path}/utils.process_docs"))
    assert out == [d * 2 for d in range(20)]


def test_a_copy_reads_the_plan_beside_it(tmp_path):
    assert lmeval_splits.PARAMS == {}  # the package's own copy has no plan
    plan = {"dev": _plan(size=3), "test": _plan(split="test", size=4)}
    (tmp_path / f"hooks{lmeval_splits.PARAMS_SUFFIX}").write_text(json.dumps(plan))
    shutil.copyfile(lmeval_splits.__file__, tmp_path / "hooks.py")
    spec = importlib.util.spec_from_file_location("hooks_copy", Path(tmp_path / "hooks.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.PARAMS == plan
    assert len(mod.dev_docs(_Docs(range(30), "validation"))) == 3
    assert len(mod.test_docs(_Docs(range(30), "test"))) == 4

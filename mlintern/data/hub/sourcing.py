"""The public sourcing calls: search the Hub, inspect a Hub or local dataset, load and reformat it."""

from __future__ import annotations

from mlintern.data.hub.calls import HubPolicy, _hub_revision, _offline, hub_call
from mlintern.data.hub.columns import guess_column_map, propose_column_map, validate_column_map
from mlintern.data.hub.errors import HubUnreachableError
from mlintern.data.hub.local import _open_local, is_local_id
from mlintern.data.hub.models import DatasetCandidate, DatasetPreview, ReformattedDataset, _feature_str, _json_safe
from mlintern.data.hub.reformat import to_trl_rows
from mlintern.schemas import Method


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

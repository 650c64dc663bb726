"""Record a built training set's lineage on the active MLflow run.

What lands on the run:

* a dataset input (``mlflow.data.from_pandas`` + ``mlflow.log_input``) named after the source,
  with ``digest`` = the first 16 hex digits of the file's sha256 and ``source`` = the source URI
  (``reasoning_gym://...``, ``hf://datasets/...`` or ``file://...``); the DataFrame logged is
  the training set with message lists flattened to JSON strings, so its schema is plain strings;
* params ``data.source``, ``data.rows``, ``data.content_hash``, ``data.revision``,
  ``data.source_uri``, ``data.method`` and metrics ``data.removed_contaminated``,
  ``data.rows``, ``data.rows_before``; tags ``data.filters`` and ``data.decontam`` (JSON).

For a context other than "training" the keys are ``data.<context>.*`` so that an evaluation or
preference set can be logged on the same run without a param clash.
"""

from __future__ import annotations

import json
import warnings

from mlintern.data.build import BuiltDataset


def _source(built: BuiltDataset):
    """A Hugging Face source for Hub data; otherwise MLflow's resolution of the URI (file://,
    reasoning_gym://), falling back to a code source tagged with the URI."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    uri = built.source_uri
    if uri.startswith("hf://datasets/"):
        return HuggingFaceDatasetSource(path=built.source[3:].strip(), config_name=built.recipe.hf_config,
                                        split=built.recipe.hf_split, revision=built.revision)
    try:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local sources
            warnings.simplefilter("ignore", UserWarning)
            return resolve_dataset_source(uri)
    except Exception:  # no registered resolver for this scheme
        return CodeDatasetSource(tags={"uri": uri})


def lineage_frame(built: BuiltDataset):
    import pandas as pd

    rows = built.rows()
    flat = [{k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in r.items()} for r in rows]
    return pd.DataFrame(flat, columns=built.columns)


def log_lineage(built: BuiltDataset, context: str = "training") -> None:
    """Log `built` to the ACTIVE MLflow run (raises RuntimeError when there is none)."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_lineage: no active MLflow run; call it inside `with mlflow.start_run():`")
    prefix = "data." if context == "training" else f"data.{context}."
    name = built.source.replace("hf:", "hf_", 1).replace("/", "_").replace(":", "_")[:200]
    dataset = mlflow.data.from_pandas(lineage_frame(built), source=_source(built), name=name,
                                      digest=built.content_hash[:16])
    mlflow.log_input(dataset, context=context, tags={
        "method": built.method.value, "revision": built.revision[:250], "content_hash": built.content_hash,
    })
    mlflow.log_params({
        f"{prefix}source": built.source,
        f"{prefix}rows": built.rows_after,
        f"{prefix}content_hash": built.content_hash,
        f"{prefix}revision": built.revision,
        f"{prefix}source_uri": built.source_uri[:6000],
        f"{prefix}method": built.method.value,
    })
    mlflow.log_metrics({
        f"{prefix}removed_contaminated": float(built.removed_contaminated),
        f"{prefix}rows": float(built.rows_after),
        f"{prefix}rows_before": float(built.rows_before),
    })
    decontam = built.decontam.model_dump(exclude={"removed_ids"})
    decontam["examples"] = decontam["examples"][:3]
    mlflow.set_tags({
        f"{prefix}filters": json.dumps([f.model_dump() for f in built.filters])[:5000],
        f"{prefix}decontam": json.dumps(decontam, default=str)[:5000],
    })

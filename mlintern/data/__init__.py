"""Training data: sourcing (generators, Hugging Face Hub, local copies), trl shaping,
decontamination against the benchmark's dev/test sets, and lineage for MLflow."""

from mlintern.data.build import BuiltDataset, FilterStep, build_training_data
from mlintern.data.decontam import DecontamReport, decontaminate, decontaminate_against_benchmark
from mlintern.data.hub import (
    DatasetCandidate,
    DatasetNotFoundError,
    DatasetPreview,
    HubError,
    HubUnreachableError,
    find_datasets,
    inspect_dataset,
    load_and_reformat,
    propose_column_map,
    validate_column_map,
)
from mlintern.data.lineage import log_lineage

__all__ = [
    "BuiltDataset", "FilterStep", "build_training_data",
    "DecontamReport", "decontaminate", "decontaminate_against_benchmark",
    "DatasetCandidate", "DatasetNotFoundError", "DatasetPreview", "HubError", "HubUnreachableError",
    "find_datasets", "inspect_dataset", "load_and_reformat", "propose_column_map", "validate_column_map",
    "log_lineage",
]

"""Pydantic models of Hub search results, dataset previews, column maps and reformatted datasets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

TRL_TARGETS = ("prompt", "completion", "chosen", "rejected", "answer", "messages")


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

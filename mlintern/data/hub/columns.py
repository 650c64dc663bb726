"""Column maps (dataset column -> trl column): guessed, proposed by an LLM, validated on sample rows."""

from __future__ import annotations

from typing import Any

from mlintern.data.hub.models import TRL_TARGETS, ColumnMapProposal, DatasetPreview
from mlintern.data.hub.reformat import _as_messages, _implicit_prompt, _value_problem
from mlintern.schemas import Method

_REQUIRED = {
    Method.sft: "prompt + completion (or prompt + answer), or messages",
    Method.dpo: "prompt + chosen + rejected, or chosen + rejected as message lists sharing the prompt "
                "turns, or prompt + chosen/completion/answer (rejected is then another row's answer)",
    Method.grpo: "prompt + answer (or prompt + completion, used as the reference answer)",
}


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


def _satisfies(targets: set[str], method: Method) -> bool:
    if method == Method.sft:
        return "messages" in targets or ("prompt" in targets and bool(targets & {"completion", "answer"}))
    if method == Method.dpo:
        if {"chosen", "rejected"} <= targets:
            return True
        return "prompt" in targets and bool(targets & {"chosen", "completion", "answer"})
    return "prompt" in targets and bool(targets & {"answer", "completion"})


def _truncate(value: Any, limit: int = 400) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "...[truncated]"
    if isinstance(value, dict):
        return {k: _truncate(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_truncate(v, limit) for v in value[:8]]
    return value

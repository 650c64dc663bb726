"""Reading a model's JSON answer into a pydantic model: tolerant parsing and salvage of invalid fields."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mlintern.structured import from_strict

T = TypeVar("T", bound=BaseModel)


def parse_json_model(raw: str, schema: type[T]) -> T:
    """Parse a model's answer, tolerating a ```json fence or prose around the object and raw
    control characters inside strings (grammar decoders emit them); nulls of fields with
    defaults become the defaults (the strict schema makes every key required)."""
    return schema.model_validate(from_strict(schema, _json_object(raw)))


def salvage_json_model(raw: str, schema: type[T]) -> tuple[T, list[str]]:
    """Validate `raw`, resetting each invalid field that has a default to that default (and
    dropping unknown keys); returns the object and one note per change. Raises ValueError if
    more than a third of the values given would be reset (the answer would be ours, not the
    model's), ValidationError if an invalid field has no default or the whole object is invalid."""
    data = from_strict(schema, _json_object(raw))
    given = _leaves(data)
    notes: list[str] = []
    for _ in range(5):
        if len(notes) * 3 > given:
            raise ValueError(f"{len(notes)} of {given} values invalid: too many to reset to defaults")
        try:
            return schema.model_validate(data), notes
        except ValidationError as exc:
            changed = False
            for err in exc.errors():
                where = ".".join(map(str, err["loc"]))
                if _drop_field(schema, data, tuple(err["loc"])):
                    value = repr(err.get("input"))[:80]
                    notes.append(f"reset {where} ({value}: {err['msg']}) to its default")
                    changed = True
            if not changed:
                raise
    raise ValueError("answer still invalid after resetting fields to defaults")


def _leaves(data: Any) -> int:
    if isinstance(data, dict):
        return sum(_leaves(v) for v in data.values())
    return 1


def _drop_field(model_cls: type[BaseModel], data: Any, loc: tuple) -> bool:
    """Delete the field at `loc` (or the innermost model field holding it) if it has a default."""
    from mlintern.structured import _model_of

    for i, key in enumerate(loc):
        if not isinstance(data, dict) or not isinstance(key, str):
            return False
        field = model_cls.model_fields.get(key)
        if field is None:  # an unknown key (extra="forbid")
            if key not in data:
                return False
            del data[key]
            return True
        inner = _model_of(field.annotation)
        if inner is not None and i + 1 < len(loc) and isinstance(data.get(key), dict):
            model_cls, data = inner, data[key]
            continue
        if field.is_required() or key not in data:
            return False
        del data[key]
        return True
    return False


def _json_object(raw: str) -> Any:
    text = raw.strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("answer holds no JSON object")
    return json.loads(text[start : end + 1], strict=False)


def _errors(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10])
    return str(exc)

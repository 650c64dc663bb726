"""JSON schemas that every structured-output server accepts, made from the pydantic models.

Providers accept different subsets of JSON Schema. OpenAI's strict mode refuses `default`
(HTTP 400 invalid_json_schema) and wants every key required with `additionalProperties: false`;
Gemini takes few keywords; grammar decoders (llama.cpp, vLLM, Ollama) turn a string `maxLength`
of thousands into a grammar too large to compile (llama-cpp-python's server died on 2000).
`strict_schema` therefore emits only the common subset:

- every object lists all its properties as required and sets `additionalProperties: false`;
- a field with a default becomes nullable (`anyOf: [X, {"type": "null"}]`, null = the default)
  instead of optional; `from_strict` drops those nulls so pydantic fills in the defaults;
- no `$ref`/`$defs` (inlined), no `default`, `title`, length, pattern, format or numeric
  bounds, no `const` (an enum of one), no tuples, no free-form dicts, no nested unions.
  The dropped limits are written into each `description` for the model to read, and pydantic
  applies them when the answer arrives.

A model field the subset cannot express (e.g. `dict[str, str]`) raises `UnsupportedSchema`
naming it; leave it to its default with `exclude=`.
"""

from __future__ import annotations

import copy
from typing import Any, get_args, get_origin

from pydantic import BaseModel

# Keywords kept in the output; everything else is dropped (or refused, see _REFUSED).
KEPT = ("type", "description", "properties", "required", "additionalProperties", "items", "enum", "anyOf")
# Limits moved into the description (pydantic enforces them on the answer).
_LIMITS = {
    "minLength": "at least {} characters", "maxLength": "at most {} characters",
    "minimum": ">= {}", "maximum": "<= {}", "exclusiveMinimum": "> {}", "exclusiveMaximum": "< {}",
    "multipleOf": "a multiple of {}", "minItems": "at least {} items", "maxItems": "at most {} items",
    "pattern": "matching the regex {}", "format": "format {}",
}
_REFUSED = ("prefixItems", "patternProperties", "oneOf", "not", "if", "then", "else", "dependentSchemas",
            "dependentRequired", "propertyNames", "unevaluatedProperties")


class UnsupportedSchema(ValueError):
    """A model field has no form in the strict common subset; the message names the field."""


def strict_schema(model_cls: type[BaseModel], *, exclude: tuple[str, ...] | set[str] = ()) -> dict[str, Any]:
    """The JSON schema of `model_cls` inside the strict common subset (see module doc).

    `exclude`: dotted field paths (e.g. "dataset.column_map") left out of the schema; the
    answer then gets those fields' defaults."""
    raw = model_cls.model_json_schema()
    defs = raw.pop("$defs", {})
    raw.pop("description", None)  # the class docstring speaks to developers, not to the model
    out = _convert(raw, defs, path=(), exclude={tuple(p.split(".")) for p in exclude}, stack=())
    if out.get("type") != "object":
        raise UnsupportedSchema(f"{model_cls.__name__}: the root of a structured answer must be an object")
    return out


def _convert(node: dict, defs: dict, path: tuple[str, ...], exclude: set[tuple[str, ...]],
             stack: tuple[str, ...]) -> dict[str, Any]:
    where = ".".join(path) or "<root>"
    if "$ref" in node:
        name = node["$ref"].split("/")[-1]
        if name in stack:
            raise UnsupportedSchema(f"{where}: recursive model {name} cannot be inlined")
        merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs, path, exclude, stack + (name,))
    if "allOf" in node:  # pydantic wraps a described $ref in a one-element allOf
        if len(node["allOf"]) != 1:
            raise UnsupportedSchema(f"{where}: allOf (an intersection) is not in the strict subset")
        inner = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
        return _convert(inner, defs, path, exclude, stack)
    for key in _REFUSED:
        if key in node:
            raise UnsupportedSchema(f"{where}: {key!r} (from the field's type) is not in the strict subset; "
                                    "change the field's type or exclude it")
    description = _describe(node)
    if "anyOf" in node:
        members = [_convert(m, defs, path, exclude, stack) for m in node["anyOf"]]
        if any("anyOf" in m for m in members):
            raise UnsupportedSchema(f"{where}: nested unions are not in the strict subset")
        non_null = [m for m in members if m.get("type") != "null"]
        if len(non_null) > 1 and any(m.get("type") in ("object", "array") for m in non_null):
            raise UnsupportedSchema(f"{where}: a union of objects or arrays is not in the strict subset")
        out: dict[str, Any] = {"anyOf": members}
    elif "const" in node:
        out = {"type": node.get("type") or _json_type(node["const"]), "enum": [node["const"]]}
    else:
        kind = node.get("type")
        if kind is None or isinstance(kind, list):
            raise UnsupportedSchema(f"{where}: a field needs one JSON type (got {kind!r}); avoid Any and bare unions")
        out = {"type": kind}
        if "enum" in node:
            out["enum"] = list(node["enum"])
        if kind == "object":
            props = node.get("properties")
            if not props:
                raise UnsupportedSchema(f"{where}: a free-form object (a dict) is not in the strict subset; "
                                        "use a list of small objects, or exclude the field")
            required = set(node.get("required", []))
            out["properties"] = {}
            for name, sub in props.items():
                if path + (name,) in exclude:
                    continue
                prop = _convert(sub, defs, path + (name,), exclude, stack)
                if name not in required and not _nullable(prop) and prop.get("type") not in ("object", "array"):
                    prop = _make_nullable(prop)
                out["properties"][name] = prop
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        elif kind == "array":
            if "items" not in node:
                raise UnsupportedSchema(f"{where}: an array needs an item type")
            out["items"] = _convert(node["items"], defs, path + ("[]",), exclude, stack)
    if description:
        out["description"] = description
    return out


def _describe(node: dict) -> str:
    """The field's description with the limits the subset cannot carry spelled out."""
    parts = [node["description"].strip()] if node.get("description") else []
    limits = [text.format(node[key]) for key, text in _LIMITS.items() if key in node]
    if limits:
        parts.append("Must be " + ", ".join(limits) + ".")
    if "default" in node and node["default"] not in (None, [], {}):
        parts.append(f"null = default ({node['default']!r}).")
    return " ".join(parts)


def _nullable(prop: dict) -> bool:
    return any(m.get("type") == "null" for m in prop.get("anyOf", []))


def _make_nullable(prop: dict) -> dict:
    description = prop.pop("description", None)
    out: dict[str, Any] = {"anyOf": [prop, {"type": "null"}]}
    if description:
        out["description"] = description
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def from_strict(model_cls: type[BaseModel], data: Any) -> Any:
    """Undo the nullable-for-optional convention: drop nulls of fields that have a default, so
    pydantic applies the default. Other values pass through untouched for validation."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in model_cls.model_fields.items():
        if name not in out:
            continue
        if out[name] is None and not field.is_required():
            del out[name]
            continue
        inner = _model_of(field.annotation)
        if inner is not None:
            if isinstance(out[name], list) and get_origin(field.annotation) is list:
                out[name] = [from_strict(inner, item) for item in out[name]]
            else:
                out[name] = from_strict(inner, out[name])
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def narrow_enum(schema: dict[str, Any], path: str, values: list[Any]) -> dict[str, Any]:
    """A copy of `schema` whose enum at dotted `path` allows only `values` (e.g. the methods a
    goal allows), so a constrained decoder cannot pick another one."""
    out = copy.deepcopy(schema)
    node = out
    for key in path.split("."):
        node = node["properties"][key]
    for member in node.get("anyOf", [node]):
        if "enum" in member:
            member["enum"] = [v for v in member["enum"] if v in values] or list(values)
            return out
    raise KeyError(f"{path} has no enum")


__all__ = ["UnsupportedSchema", "strict_schema", "from_strict", "narrow_enum", "KEPT"]

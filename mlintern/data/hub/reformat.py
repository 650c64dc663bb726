"""Reformatting raw dataset rows to trl's conversational rows, and checks of single values."""

from __future__ import annotations

import json
import random
from typing import Any

from mlintern.schemas import Method


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


def _short(v: Any, limit: int = 80) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."

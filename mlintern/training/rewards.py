"""GRPO reward functions built from the benchmark's own scorer.

trl's GRPOTrainer calls each reward function with `prompts`, `completions`, `completion_ids`,
every dataset column as a keyword argument (one value per completion) and a few extras
(`trainer_state`, `log_metric`, ...), so every function takes `**kw`. Completions are a list of
message lists (`[{"role": "assistant", "content": ...}]`) when the prompts are conversational,
plain strings otherwise; both are accepted.

The prediction that is scored is the one the evaluation scores: the first line of the stripped
completion (see rgym_lmeval_utils.process_results), so the reward optimises the benchmark metric.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

# Correctness dominates: a well-formatted wrong answer earns at most FORMAT_WEIGHT, a correct one 1.
CORRECTNESS_WEIGHT = 1.0
FORMAT_WEIGHT = 0.2
MAX_ANSWER_CHARS = 64  # a "short final answer" (or 2x the reference, if longer)


def completion_text(completion: Any) -> str:
    """The generated text of one completion, conversational or plain."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):  # a list of messages: the assistant's turn(s)
        parts = [completion_text(m) for m in completion
                 if not isinstance(m, dict) or m.get("role", "assistant") == "assistant"]
        return "".join(parts)
    return "" if completion is None else str(completion)


def prediction(completion: Any) -> str:
    """What the evaluation scores: the first line of the stripped completion."""
    text = completion_text(completion).strip()
    return text.split("\n")[0].strip() if text else ""


_PUNCT = str.maketrans("", "", string.punctuation.replace("-", "").replace(".", ""))


def normalize(text: str) -> str:
    """Lower-case, drop an 'Answer:' prefix, surrounding punctuation and extra spaces."""
    text = text.strip().lower()
    text = re.sub(r"^(the\s+)?(final\s+)?answer\s*(is)?\s*[:=]?\s*", "", text)
    text = text.translate(_PUNCT).strip().rstrip(".").strip()
    text = re.sub(r"\s+", " ", text)
    try:  # numbers compare by value: "4.0" == "4", "1,000" == "1000"
        value = float(text.replace(",", ""))
        return repr(int(value)) if value.is_integer() else repr(value)
    except ValueError:
        return text


def exact_match(pred: str, answer: str) -> float:
    return float(bool(pred) and normalize(pred) == normalize(str(answer)))


def _rg_score(task: str, config: Any, pred: str, question: Any, answer: Any, metadata: Any) -> float:
    from mlintern.benchmarks.rgym import score

    cfg = json.loads(config) if isinstance(config, str) else dict(config or {})
    row = {"question": question or "", "answer": str(answer), "metadata": metadata if metadata is not None else "{}"}
    try:
        return float(score(task, cfg, pred, row))
    except Exception:  # a scorer choking on a malformed prediction is a zero reward, not a crash
        return 0.0


def _column(values: list | None, n: int) -> list:
    return list(values) if values is not None else [None] * n


def correctness_reward(completions: list, rg_task: list | None = None, rg_config: list | None = None,
                       question: list | None = None, answer: list | None = None,
                       metadata: list | None = None, **kw) -> list[float | None]:
    """1 for a correct answer, 0 for a wrong one (partial credit where the benchmark's scorer gives it).

    reasoning-gym rows (with `rg_task`) are scored by the generator's own `score_answer`;
    rows with only an `answer` by normalised exact match. A row without an answer gets None
    (trl ignores it for this function)."""
    n = len(completions)
    tasks, configs = _column(rg_task, n), _column(rg_config, n)
    questions, answers, metas = _column(question, n), _column(answer, n), _column(metadata, n)
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        pred = prediction(completion)
        if answers[i] is None:
            rewards.append(None)
        elif tasks[i]:
            rewards.append(_rg_score(tasks[i], configs[i], pred, questions[i], answers[i], metas[i]))
        else:
            rewards.append(exact_match(pred, answers[i]))
    return rewards


def format_reward(completions: list, answer: list | None = None, **kw) -> list[float]:
    """1 for a short final answer on one line; 0.5 for a short first line followed by more text
    (the evaluation reads only the first line); 0 for an empty or rambling answer."""
    answers = _column(answer, len(completions))
    rewards = []
    for completion, ref in zip(completions, answers):
        text = completion_text(completion).strip()
        limit = max(MAX_ANSWER_CHARS, 2 * len(str(ref))) if ref is not None else MAX_ANSWER_CHARS
        first = text.split("\n")[0].strip() if text else ""
        if not first or len(first) > limit:
            rewards.append(0.0)
        elif "\n" in text:
            rewards.append(0.5)
        else:
            rewards.append(1.0)
    return rewards


def reward_setup() -> tuple[list, list[float]]:
    """(reward_funcs, reward_weights) for GRPOTrainer: correctness dominates format."""
    return [correctness_reward, format_reward], [CORRECTNESS_WEIGHT, FORMAT_WEIGHT]


def sandboxed_reward(code: str, timeout_s: float = 30.0):
    """A reward function an LLM proposed, run by mlintern.sandbox (separate process, no network,
    no evaluation files, timeout). A failing proposal scores 0 and is reported, never fatal."""
    import logging

    from mlintern.sandbox import SandboxError, run_untrusted

    def proposed_reward(completions: list, answer: list | None = None, **kw) -> list[float]:
        answers = _column(answer, len(completions))
        rows = [{"completion": prediction(c), "answer": "" if a is None else str(a)}
                for c, a in zip(completions, answers)]
        try:
            return [max(-1.0, min(1.0, v)) for v in run_untrusted(code, "reward", rows, timeout_s=timeout_s)]
        except SandboxError as exc:
            logging.getLogger(__name__).warning("proposed reward disabled for this batch: %s", exc)
            return [0.0] * len(completions)

    return proposed_reward

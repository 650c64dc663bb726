"""N-gram decontamination of a training set against a benchmark's dev and test sets.

The rule (PostTrainBench v1.1, as the issue states it: "treat more than 3 overlapping items as
contaminated"), read here as follows:

* Text is normalised: Unicode NFKC, lowercase, punctuation removed, whitespace collapsed. The
  arithmetic operators ``+ - * / = < > ^ % × ÷`` are kept as tokens of their own, because in
  math benchmarks they carry the item's meaning ("5 + 91" and "5 - 91" must not collide).
* Texts are split into word tokens; each training row is cut into segments (each message content
  or text field separately) and every segment contributes its word n-grams (``n=8`` by default).
* A training row is **contaminated** when, for some single evaluation item E,
    1. it shares **more than** ``max_overlap`` (= 3) distinct n-grams with E, or
    2. it contains **all** of E's n-grams (an E of 8..11 words has only 1..4 n-grams, so rule 1
       alone could never catch a verbatim copy of it), or
    3. E is shorter than ``n`` words (or has no informative n-gram, see below) and E's whole
       normalised text appears contiguously in one of the row's segments (E needs at least ``min_short_tokens`` words for this containment test;
       a shorter E only matches a segment that equals it exactly).
* "Items" in "more than 3 overlapping items" is read as overlapping *n-grams with one
  evaluation item* (not n-grams pooled over the whole eval set: pooled counts would flag every row
  that shares a template phrase with many different eval items).
* Template boilerplate: an n-gram found in more than ``common_fraction`` of the evaluation items
  (and in at least ``common_min_items`` of them) is template text that every item shares ("give
  the result as your final answer do not include units"); it is ignored, otherwise every fresh
  item of a templated generator would count as contaminated. Callers that know the generator pass
  ``ignore_ngrams`` too: n-grams that recur across independent generator samples
  (``template_ngrams``); for reasoning-gym's gsm_symbolic this cuts false positives from 67% to
  about 14% of fresh items while every planted test item is still caught. A verbatim copy of an
  eval item still matches through its item-specific n-grams (names, numbers), and an eval item
  left with no informative n-gram at all falls under rule 3 (whole-text containment) whatever
  its length.

Training rows are compared on their prompt and answer texts (``prompt``, ``completion``,
``chosen``, ``rejected``, ``messages``, ``question``, ``answer``); evaluation rows on their
question (``question``/``prompt``/``query``/``problem``/``input``/``text``/``ctx``), or on all
their string values when none of those exists.

Speed: the eval n-grams go into one dict (n-gram -> eval item ids), so the cost is one dict
lookup per training n-gram: 10k training rows against 1k eval items take well under a second.
"""

from __future__ import annotations

import gzip
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

DEFAULT_N = 8
DEFAULT_MAX_OVERLAP = 3

_OPERATORS = "+-*/=<>^%×÷"
_TOKEN_RE = re.compile(r"[^\W_]+|[" + re.escape(_OPERATORS) + r"]")
_TRAIN_FIELDS = ("prompt", "completion", "chosen", "rejected", "messages", "question", "answer")
_EVAL_FIELDS = ("question", "prompt", "query", "problem", "input", "text", "ctx", "sentence", "goal")


def normalize(text: str) -> str:
    """Lowercase, strip punctuation (operators kept as tokens), collapse whitespace."""
    return " ".join(tokens(text))


def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).lower())


def ngrams(toks: list[str], n: int = DEFAULT_N) -> set[tuple[str, ...]]:
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def _strings(value: Any) -> Iterable[str]:
    """Text segments of a field: a string, a message list, or nested lists/dicts of them."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        if "content" in value:
            yield from _strings(value["content"])
        else:
            for v in value.values():
                yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def train_segments(row: Mapping[str, Any]) -> list[str]:
    """Text segments of a training row (trl's prompt/completion/chosen/... shape or raw)."""
    fields = [f for f in _TRAIN_FIELDS if f in row]
    if not fields:
        return list(_strings(dict(row)))
    return [s for f in fields for s in _strings(row[f])]


def eval_segments(row: Mapping[str, Any]) -> list[str]:
    """Text segments of an evaluation row: its question, else all its strings."""
    segs = [row[f] for f in _EVAL_FIELDS if isinstance(row.get(f), str) and row[f].strip()]
    if segs:
        return segs[:1]
    return list(_strings(dict(row)))


class RemovedExample(BaseModel):
    train_id: str
    eval_split: str
    eval_id: str
    reason: str  # "ngram_overlap" | "all_ngrams" | "short_item"
    overlap: int = 0
    text: str = ""


class DecontamReport(BaseModel):
    n: int = DEFAULT_N
    max_overlap: int = DEFAULT_MAX_OVERLAP
    train_rows: int = 0
    kept: int = 0
    removed: int = 0
    eval_items: dict[str, int] = Field(default_factory=dict, description="eval split -> items indexed")
    removed_by_split: dict[str, int] = Field(default_factory=dict, description="eval split -> rows removed")
    removed_ids: list[str] = Field(default_factory=list, description="first 1000 removed training ids")
    examples: list[RemovedExample] = Field(default_factory=list, description="first 10 removals")
    ignored_common_ngrams: int = 0
    seconds: float = 0.0


class _EvalIndex:
    def __init__(self, eval_sets: Mapping[str, list[Mapping[str, Any]]], n: int,
                 eval_text: Callable[[Mapping[str, Any]], list[str]],
                 common_fraction: float, common_min_items: int, min_short_tokens: int,
                 id_field: str | None, ignore_ngrams: set[tuple[str, ...]] | frozenset = frozenset()):
        self.n = n
        self.min_short_tokens = min_short_tokens
        self.keys: list[tuple[str, str]] = []  # eval item -> (split, id)
        self.size: dict[str, int] = {}
        grams_by_item: list[set[tuple[str, ...]]] = []
        full_text: list[tuple[str, ...]] = []
        self.short: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for split, rows in eval_sets.items():
            self.size[split] = len(rows)
            for i, row in enumerate(rows):
                eid = len(self.keys)
                self.keys.append((split, str(row.get(id_field, i)) if id_field else str(i)))
                grams: set[tuple[str, ...]] = set()
                longest: tuple[str, ...] = ()
                for seg in eval_text(row):
                    toks = tokens(seg)
                    if len(toks) < n:
                        if toks:
                            self.short[tuple(toks)].append(eid)
                    else:
                        grams |= ngrams(toks, n)
                        longest = max(longest, tuple(toks), key=len)
                grams_by_item.append(grams)
                full_text.append(longest)
        df = Counter(g for grams in grams_by_item for g in grams)
        limit = max(common_min_items, int(common_fraction * len(self.keys)))
        self.common = {g for g, c in df.items() if c > limit or g in ignore_ngrams}
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        self.informative: list[int] = []
        for eid, grams in enumerate(grams_by_item):
            kept = grams - self.common
            self.informative.append(len(kept))
            for g in kept:
                self.index[g].append(eid)
            if grams and not kept:  # only boilerplate n-grams: fall back to whole-text containment
                self.short[full_text[eid]].append(eid)
        # short items: containment by first token -> lengths, exact match for very short ones
        self.short_first: dict[str, set[int]] = defaultdict(set)
        for toks in self.short:
            if len(toks) >= min_short_tokens:
                self.short_first[toks[0]].add(len(toks))

    def match(self, segments: list[str], max_overlap: int) -> tuple[int, str, int] | None:
        """(eval item, reason, overlap) of the first contaminating eval item, else None."""
        hits: Counter[int] = Counter()
        seen: set[tuple[str, ...]] = set()
        for seg in segments:
            toks = tokens(seg)
            if self.short:
                exact = self.short.get(tuple(toks))
                if exact:
                    return exact[0], "short_item", len(toks)
                for i, tok in enumerate(toks):
                    for k in self.short_first.get(tok, ()):
                        found = self.short.get(tuple(toks[i : i + k]))
                        if found:
                            return found[0], "short_item", k
            for g in ngrams(toks, self.n):
                if g in seen:
                    continue
                seen.add(g)
                for eid in self.index.get(g, ()):
                    hits[eid] += 1
        best = None
        for eid, count in hits.items():
            if count > max_overlap:
                if best is None or count > best[2]:
                    best = (eid, "ngram_overlap", count)
            elif count == self.informative[eid] and best is None:
                best = (eid, "all_ngrams", count)
        return best


def decontaminate(
    train_rows: list[dict],
    eval_sets: Mapping[str, list[Mapping[str, Any]]],
    *,
    n: int = DEFAULT_N,
    max_overlap: int = DEFAULT_MAX_OVERLAP,
    train_id_field: str | None = None,
    eval_id_field: str | None = None,
    train_text: Callable[[Mapping[str, Any]], list[str]] = train_segments,
    eval_text: Callable[[Mapping[str, Any]], list[str]] = eval_segments,
    common_fraction: float = 0.1,
    common_min_items: int = 5,
    min_short_tokens: int = 3,
    ignore_ngrams: set[tuple[str, ...]] | frozenset = frozenset(),
) -> tuple[list[dict], DecontamReport]:
    """Drop training rows that overlap any evaluation item (see the module docstring for the rule).

    `eval_sets` maps a split name ("dev", "test") to its rows. Returns the clean rows (order
    kept) and a report: removed count, removed count per eval split, and removed training ids
    (`train_id_field` of the row, else its index in `train_rows`) with examples.
    """
    import time

    if n < 1 or max_overlap < 0:
        raise ValueError(f"decontaminate: need n >= 1 and max_overlap >= 0, got n={n}, max_overlap={max_overlap}")
    t0 = time.perf_counter()
    idx = _EvalIndex(eval_sets, n, eval_text, common_fraction, common_min_items, min_short_tokens,
                     eval_id_field, ignore_ngrams)
    report = DecontamReport(n=n, max_overlap=max_overlap, train_rows=len(train_rows), eval_items=dict(idx.size),
                            removed_by_split={s: 0 for s in idx.size}, ignored_common_ngrams=len(idx.common))
    clean: list[dict] = []
    for i, row in enumerate(train_rows):
        found = idx.match(train_text(row), max_overlap)
        if found is None:
            clean.append(row)
            continue
        eid, reason, overlap = found
        split, eval_id = idx.keys[eid]
        train_id = str(row.get(train_id_field, i)) if train_id_field else str(i)
        report.removed += 1
        report.removed_by_split[split] = report.removed_by_split.get(split, 0) + 1
        if len(report.removed_ids) < 1000:
            report.removed_ids.append(train_id)
        if len(report.examples) < 10:
            text = " ".join(train_text(row))
            report.examples.append(RemovedExample(train_id=train_id, eval_split=split, eval_id=eval_id,
                                                  reason=reason, overlap=overlap, text=text[:200]))
    report.kept = len(clean)
    report.seconds = round(time.perf_counter() - t0, 4)
    return clean, report


def template_ngrams(texts: Iterable[str], n: int = DEFAULT_N, min_count: int = 2) -> set[tuple[str, ...]]:
    """N-grams found in at least `min_count` of `texts` (independent samples of one generator):
    template text, to pass as `decontaminate(..., ignore_ngrams=...)`."""
    df: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        df.update(ngrams(tokens(text), n))
    return {g for g, c in df.items() if c >= min_count}


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a .jsonl or .jsonl.gz file (blank lines skipped)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def benchmark_eval_sets(benchmark) -> dict[str, list[dict]]:
    """{"dev": rows, "test": rows} of a PreparedBenchmark's data files (missing files skipped)."""
    sets = {}
    for split, path in benchmark.eval_splits().items():
        if path:
            if not Path(path).exists():
                raise FileNotFoundError(f"benchmark {split} file {path} is missing: prepare the benchmark again")
            sets[split] = read_jsonl(path)
    return sets


def decontaminate_against_benchmark(train_rows: list[dict], benchmark, **kwargs) -> tuple[list[dict], DecontamReport]:
    """`decontaminate` against the dev and test files of a PreparedBenchmark."""
    return decontaminate(train_rows, benchmark_eval_sets(benchmark), **kwargs)

"""Paper digests for the planner: one LLM call per paper, or extractive from the abstract; cached per paper."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from mlintern.literature_search import Paper, relevance_score
from mlintern.llm import LLMClient, LLMError
from mlintern.schemas import PaperDigest
from mlintern.prompts import render
from mlintern.schemas import Goal
from mlintern.structured import strict_schema

log = logging.getLogger(__name__)

_FIELD_CHARS = 600  # cap on each digest field, so the planner prompt stays bounded


class DigestAnswer(BaseModel):
    """What the LLM returns for one paper (prompt: agent_prompts/digest.md.j2)."""

    technique: str = Field(description="The training technique, in one or two sentences.")
    reported_gains: str = Field(description="Reported improvements with numbers and benchmarks.")
    hyperparameters: str = Field(description="Reported hyperparameters worth trying, or ''.")
    relevance: float = Field(ge=0, le=1, description="0 = irrelevant to the goal, 1 = directly applicable.")


# --------------------------------------------------------------------------- digests

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_GAIN_WORDS = re.compile(r"\d+(?:\.\d+)?\s*%|outperform|improv|surpass|exceed|state-of-the-art|achiev|match", re.I)
_HP_WORDS = re.compile(r"learning rate|batch size|epochs?\b|steps\b|rank\b|beta\b|group size|temperature", re.I)


def _clip(text: str, n: int = _FIELD_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def extractive_digest(paper: Paper, goal: Goal | None = None) -> PaperDigest:
    """A digest without an LLM: the abstract's first sentences as technique (prefixed
    '[abstract] '), its sentences with numbers or 'outperforms'/'improves' as reported gains,
    and its relevance_score scaled to 0-1 (0 without a goal)."""
    sentences = [s.strip() for s in _SENTENCE_END.split(" ".join(paper.summary.split())) if s.strip()]
    technique = " ".join(sentences[:2]) or paper.title
    rest = sentences[2:] or sentences
    gains = " ".join(s for s in rest if _GAIN_WORDS.search(s))[:_FIELD_CHARS]
    hparams = " ".join(s for s in sentences if _HP_WORDS.search(s))
    relevance = round(min(1.0, relevance_score(paper, goal) / 10.0), 2) if goal else 0.0
    return PaperDigest(
        paper_id=paper.paper_id,
        title=paper.title,
        technique=_clip("[abstract] " + technique),
        reported_gains=_clip(gains),
        hyperparameters=_clip(hparams),
        relevance=relevance,
    )


def _cache_path(cache_dir: Path, paper_id: str) -> Path:
    return cache_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", paper_id) + ".json")


def _read_cache(path: Path) -> tuple[PaperDigest, str] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return PaperDigest.model_validate(data["digest"]), str(data.get("source", "abstract"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        log.warning("ignoring unreadable digest cache %s: %s", path, exc)
        return None


def _write_cache(path: Path, digest: PaperDigest, source: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"source": source, "digest": digest.model_dump(mode="json"),
                                   "created": datetime.now(timezone.utc).isoformat()}, indent=2),
                       encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not cache digest %s: %s", path, exc)


def _llm_digest(paper: Paper, llm: LLMClient, goal: Goal | None) -> PaperDigest:
    prompt = render(
        "digest.md",
        paper_id=paper.paper_id,
        title=paper.title,
        abstract=paper.summary,
        goal=goal,
        schema=json.dumps(strict_schema(DigestAnswer)),
    )
    answer = llm.structured([{"role": "user", "content": prompt}], DigestAnswer)
    return PaperDigest(
        paper_id=paper.paper_id,
        title=paper.title,
        technique=_clip(answer.technique),
        reported_gains=_clip(answer.reported_gains),
        hyperparameters=_clip(answer.hyperparameters),
        relevance=answer.relevance,
    )


def digest_papers(
    papers: list[Paper],
    llm: LLMClient | None,
    cache_dir: Path,
    top_k: int = 3,
    *,
    goal: Goal | None = None,
) -> list[PaperDigest]:
    """Digest the first `top_k` papers (rank them first), one LLM call each.

    Digests are cached as JSON in cache_dir/<paper_id>.json and reused. An extractive digest
    (llm is None, or the LLM call failed) is marked source='abstract' in the cache and is
    replaced by an LLM digest once an LLM is given; an LLM digest is reused as it is. The
    cache is keyed by paper only: give each goal its own cache_dir if relevance must be
    judged per goal."""
    cache_dir = Path(cache_dir)
    digests: list[PaperDigest] = []
    for paper in papers[: max(0, top_k)]:
        path = _cache_path(cache_dir, paper.paper_id)
        cached = _read_cache(path)
        if cached and (cached[1] == "llm" or llm is None):
            digests.append(cached[0])
            continue
        if llm is None:
            digest = extractive_digest(paper, goal)
            _write_cache(path, digest, "abstract")
        else:
            try:
                digest = _llm_digest(paper, llm, goal)
                _write_cache(path, digest, "llm")
            except LLMError as exc:
                log.warning("LLM digest of %s failed, using the abstract: %s", paper.paper_id, exc)
                digest = cached[0] if cached else extractive_digest(paper, goal)
                if not cached:
                    _write_cache(path, digest, "abstract")
        digests.append(digest)
    return digests

"""The literature step of the research loop: search arXiv, rank, digest, hand to the planner.

    goal --build_query--> arXiv query --search_papers--> [Paper] --rank_papers--> [Paper]
         --digest_papers (LLM, or extractive without one; cached per paper)--> [PaperDigest]

`gather_literature` runs the whole chain and never raises: when arXiv is unreachable (no
network, timeout, HTTP error, not an Atom feed) it returns an empty `LiteratureResult` whose
`error` says so, and the loop continues without literature.

By concern: `mlintern.literature_search` builds the query, searches arXiv and ranks the papers;
`mlintern.literature_digest` digests them. This module runs the chain and re-exports their
public names.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, Field

from mlintern.literature_digest import DigestAnswer, digest_papers, extractive_digest
from mlintern.literature_search import (
    DEFAULT_ARXIV_URL,
    LiteratureError,
    Paper,
    arxiv_api_url,
    build_query,
    goal_terms,
    rank_papers,
    relevance_score,
    search_papers,
)
from mlintern.llm import LLMClient
from mlintern.schemas import Goal, PaperDigest

__all__ = ["DEFAULT_ARXIV_URL", "DigestAnswer", "LiteratureError", "LiteratureResult", "Paper", "arxiv_api_url",
           "build_query", "digest_papers", "extractive_digest", "gather_literature", "goal_terms", "rank_papers",
           "relevance_score", "search_papers"]

log = logging.getLogger(__name__)

_CONTINUES = "the loop continues without literature"


class LiteratureResult(BaseModel):
    query: str = ""
    papers: list[Paper] = Field(default_factory=list)
    digests: list[PaperDigest] = Field(default_factory=list)
    error: str | None = None


# --------------------------------------------------------------------------- the whole step


def gather_literature(
    goal: Goal,
    llm: LLMClient | None,
    cache_dir: Path,
    base_url: str | None = None,
    *,
    max_results: int = 10,
    top_k: int = 3,
    timeout_s: float = 20,
    retries: int = 2,
    backoff_s: float = 3.0,
) -> LiteratureResult:
    """Query, search, rank and digest. Never raises: on failure `error` says what happened.

    goal.use_literature=False gives an empty result with no error."""
    if not goal.use_literature:
        return LiteratureResult()
    query = build_query(goal)
    endpoint = arxiv_api_url(base_url)
    try:
        papers = search_papers(query, max_results, timeout_s=timeout_s, retries=retries,
                               base_url=base_url, backoff_s=backoff_s)
    except LiteratureError as exc:
        log.warning("%s; %s", exc, _CONTINUES)
        return LiteratureResult(query=query, error=f"{exc}; {_CONTINUES}")
    except Exception as exc:  # literature is optional: nothing here may stop the loop
        log.exception("arXiv search failed unexpectedly")
        return LiteratureResult(
            query=query, error=f"arXiv search at {endpoint} failed: {type(exc).__name__}: {exc}; {_CONTINUES}"
        )
    ranked = rank_papers(papers, goal)
    try:
        digests = digest_papers(ranked, llm, Path(cache_dir), top_k, goal=goal)
    except Exception as exc:  # e.g. a broken prompt template; keep the papers
        log.exception("digesting papers failed")
        return LiteratureResult(query=query, papers=ranked,
                                error=f"digesting papers failed: {type(exc).__name__}: {exc}")
    return LiteratureResult(query=query, papers=ranked, digests=digests)

"""The literature step of the research loop: search arXiv, rank, digest, hand to the planner.

    goal --build_query--> arXiv query --search_papers--> [Paper] --rank_papers--> [Paper]
         --digest_papers (LLM, or extractive without one; cached per paper)--> [PaperDigest]

`gather_literature` runs the whole chain and never raises: when arXiv is unreachable (no
network, timeout, HTTP error, not an Atom feed) it returns an empty `LiteratureResult` whose
`error` says so, and the loop continues without literature.

Searches go through the `arxiv` package's own `Client` (arxiv 4.0.2). That client sets no HTTP
timeout and retries only on some errors, so this module gives it a requests session with a
default timeout and does its own bounded retries with backoff (arXiv's terms ask for at most
one request every 3 s, hence the 3 s default backoff). A stand-in server can replace
export.arxiv.org through `base_url` or the INTERN_ARXIV_URL setting.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import arxiv
import requests
from pydantic import BaseModel, Field, ValidationError

from mlintern.llm import LLMClient, LLMError
from mlintern.structured import strict_schema
from mlintern.schemas import PaperDigest
from mlintern.prompts import render
from mlintern.schemas import Goal, Method
from mlintern.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_ARXIV_URL = "https://export.arxiv.org"
_CONTINUES = "the loop continues without literature"
_FIELD_CHARS = 600  # cap on each digest field, so the planner prompt stays bounded


class LiteratureError(RuntimeError):
    """arXiv could not be searched; the message names the URL and the cause."""


class Paper(BaseModel):
    """One arXiv search result."""

    paper_id: str = Field(description="arXiv id without version, e.g. 2402.03300")
    title: str
    summary: str = ""
    published: datetime | None = None
    pdf_url: str | None = None
    categories: list[str] = Field(default_factory=list)
    authors: list[str] = Field(default_factory=list)


class LiteratureResult(BaseModel):
    query: str = ""
    papers: list[Paper] = Field(default_factory=list)
    digests: list[PaperDigest] = Field(default_factory=list)
    error: str | None = None


class DigestAnswer(BaseModel):
    """What the LLM returns for one paper (prompt: agent_prompts/digest.md.j2)."""

    technique: str = Field(description="The training technique, in one or two sentences.")
    reported_gains: str = Field(description="Reported improvements with numbers and benchmarks.")
    hyperparameters: str = Field(description="Reported hyperparameters worth trying, or ''.")
    relevance: float = Field(ge=0, le=1, description="0 = irrelevant to the goal, 1 = directly applicable.")


# --------------------------------------------------------------------------- query building

# Benchmark name -> phrases that papers use for it. Unknown names fall back to their words.
_BENCHMARK_PHRASES: dict[str, list[str]] = {
    "gsm8k": ["GSM8K", "math word problems"],
    "arc_easy": ["ARC", "science question answering"],
    "arc_challenge": ["ARC-Challenge", "science question answering"],
    "mmlu": ["MMLU"],
    "hellaswag": ["HellaSwag", "commonsense reasoning"],
    "openbookqa": ["OpenBookQA"],
    "gpqa": ["GPQA"],
    "math": ["MATH", "mathematical reasoning"],
}
_METHOD_PHRASES: dict[Method, list[str]] = {
    Method.sft: ["supervised fine-tuning", "fine-tuning"],
    Method.dpo: ["preference optimization", "DPO"],
    Method.grpo: ["reinforcement learning", "GRPO"],
}
# Words of a benchmark name that say nothing about its topic.
_NAME_NOISE = {"basic", "simple", "easy", "challenge", "zeroshot", "fewshot", "cot", "local",
               "main", "diamond", "v1", "v2", "test", "dev", "symbolic"}


def _benchmark_phrases(goal: Goal) -> list[str]:
    name = goal.benchmark.name.lower().removeprefix("local:")
    for key, phrases in _BENCHMARK_PHRASES.items():
        if name == key or name.startswith(key + "_"):
            return phrases
    words = [w for w in re.split(r"[_\-\s.:]+", name) if w and w not in _NAME_NOISE and not w.isdigit()]
    return words or [name]


def _model_size_billions(base_model: str) -> float | None:
    """Parameter count from a model name such as Qwen3-1.7B or SmolLM2-135M, if it says one."""
    m = re.search(r"(\d+(?:\.\d+)?)\s*([mb])\b", base_model.lower().replace("_", "-"))
    if not m:
        return None
    return float(m.group(1)) / (1000 if m.group(2) == "m" else 1)


def _is_small_model(goal: Goal) -> bool:
    size = _model_size_billions(goal.base_model)
    return size is not None and size <= 8 or "smol" in goal.base_model.lower()


def _quote(phrase: str) -> str:
    phrase = phrase.replace('"', "")
    return f'"{phrase}"' if re.search(r"[\s\-]", phrase) else phrase


def build_query(goal: Goal) -> str:
    """An arXiv search_query for the goal: (benchmark) AND (methods) AND (language model size).

    Example for GSM8K with SFT and GRPO on SmolLM2-135M:
    (all:GSM8K OR all:"math word problems") AND (all:"supervised fine-tuning" OR
    all:"fine-tuning" OR all:"reinforcement learning" OR all:GRPO) AND
    (all:"small language model" OR all:"language model")
    """
    bench = _benchmark_phrases(goal)
    methods: list[str] = []
    for method in goal.search_space.methods:
        for p in _METHOD_PHRASES[method]:
            if p not in methods:
                methods.append(p)
    size = ["small language model", "language model"] if _is_small_model(goal) else ["language model"]

    def group(phrases: list[str]) -> str:
        terms = " OR ".join(f"all:{_quote(p)}" for p in phrases)
        return f"({terms})" if len(phrases) > 1 else terms

    return " AND ".join(group(g) for g in (bench, methods, size))


# --------------------------------------------------------------------------- searching


class _TimeoutSession(requests.Session):
    """A requests session with a default timeout (arxiv.Client passes none)."""

    def __init__(self, timeout_s: float):
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, method, url, **kwargs):  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_s
        return super().request(method, url, **kwargs)


class _NotAFeed(arxiv.ArxivError):
    pass


class _Client(arxiv.Client):
    """arxiv.Client that refuses a 200 answer that is not an arXiv Atom feed (e.g. a captive
    portal's HTML page), which the package would otherwise read as 'no results'."""

    def _parse_feed(self, url: str, first_page: bool = True, _try_index: int = 0):
        feed = super()._parse_feed(url, first_page=first_page, _try_index=_try_index)
        if feed.malformed or (not feed.results and feed.header.items_per_page == 0):
            raise _NotAFeed(url, _try_index, "answer is not an arXiv Atom feed")
        return feed


def arxiv_api_url(base_url: str | None = None) -> str:
    """The query endpoint: base_url, else INTERN_ARXIV_URL, else export.arxiv.org."""
    base = (base_url or get_settings().arxiv_url or DEFAULT_ARXIV_URL).rstrip("/")
    return base if base.endswith("/api/query") else base + "/api/query"


def _make_client(endpoint: str, timeout_s: float, page_size: int) -> arxiv.Client:
    # num_retries=0: retries happen in search_papers, which also retries timeouts.
    client = _Client(page_size=page_size, delay_seconds=3.0, num_retries=0)
    # Client._format_url does query_url_format.format(urlencode(args)); escape braces of the URL.
    client.query_url_format = endpoint.replace("{", "{{").replace("}", "}}") + "?{}"
    client._session = _TimeoutSession(timeout_s)  # the Client's only HTTP hook (Session.get)
    return client


def _bare_id(result: arxiv.Result) -> str:
    return re.sub(r"v\d+$", "", result.get_short_id())


def _to_paper(r: arxiv.Result) -> Paper:
    published = r.published if r.published and r.published.year > 1 else None
    return Paper(
        paper_id=_bare_id(r),
        title=" ".join(r.title.split()),
        summary=" ".join(r.summary.split()),
        published=published,
        pdf_url=r.pdf_url,
        categories=list(r.categories),
        authors=[a.name for a in r.authors],
    )


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, arxiv.HTTPError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, arxiv.UnexpectedEmptyPageError))


def _describe(exc: Exception, timeout_s: float) -> str:
    if isinstance(exc, requests.Timeout) and not isinstance(exc, requests.ConnectionError):
        return f"no answer within {timeout_s:g} s ({type(exc).__name__})"
    if isinstance(exc, requests.ConnectionError):
        m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
        return f"connection failed ({m.group(1).strip() if m else type(exc).__name__})"
    if isinstance(exc, arxiv.HTTPError):
        return f"HTTP {exc.status}"
    if isinstance(exc, arxiv.ArxivError):
        return exc.message
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def search_papers(
    query: str,
    max_results: int = 10,
    *,
    timeout_s: float = 20,
    retries: int = 2,
    base_url: str | None = None,
    backoff_s: float = 3.0,
) -> list[Paper]:
    """Search arXiv through `arxiv.Client`; raise LiteratureError when it cannot be searched.

    Each HTTP request times out after `timeout_s`; failures that may pass (connection errors,
    timeouts, HTTP 429/5xx, an empty page) are retried `retries` times, waiting
    backoff_s, 2*backoff_s, ... in between. Other HTTP errors (e.g. 400, a bad query) are not.
    """
    if not 1 <= max_results <= 2000:
        raise ValueError(f"max_results must be in [1, 2000], got {max_results}")
    endpoint = arxiv_api_url(base_url)
    search = arxiv.Search(query=query, max_results=max_results,
                          sort_by=arxiv.SortCriterion.Relevance, sort_order=arxiv.SortOrder.Descending)
    last: Exception | None = None
    tries = 0
    for attempt in range(retries + 1):
        tries += 1
        client = _make_client(endpoint, timeout_s, page_size=max_results)
        try:
            return [_to_paper(r) for r in client.results(search)]
        except (requests.RequestException, arxiv.ArxivError) as exc:
            last = exc
            log.info("arXiv search try %d/%d at %s failed: %s", tries, retries + 1, endpoint, exc)
            if not _retryable(exc):
                break
            if attempt < retries and backoff_s > 0:
                time.sleep(backoff_s * 2**attempt)
        finally:
            client._session.close()
    assert last is not None
    verb = "unreachable at" if _retryable(last) or isinstance(last, _NotAFeed) else "refused the query at"
    raise LiteratureError(
        f"arXiv {verb} {endpoint}: {_describe(last, timeout_s)} after {tries} "
        f"{'try' if tries == 1 else 'tries'}"
    ) from last


# --------------------------------------------------------------------------- ranking

# Ranking terms: (term, weight) per concept. A concept counts once, with the weight of its
# best-matching term, so synonyms (fine-tuning, finetuning, fine-tune) do not add up.
_METHOD_TERMS: dict[Method, list[tuple[str, float]]] = {
    Method.sft: [("supervised fine-tuning", 2.0), ("sft", 2.0), ("instruction tuning", 2.0),
                 ("fine-tuning", 1.5), ("finetuning", 1.5), ("fine-tune", 1.5), ("fine-tuned", 1.5)],
    Method.dpo: [("direct preference optimization", 3.0), ("dpo", 3.0), ("preference optimization", 2.5),
                 ("rlhf", 1.5), ("preference", 1.0)],
    Method.grpo: [("grpo", 3.0), ("group relative policy optimization", 3.0), ("verifiable rewards", 2.5),
                  ("policy optimization", 2.0), ("reinforcement learning", 2.0), ("reward", 1.0)],
}
_LORA_TERMS = [("lora", 2.0), ("low-rank adaptation", 2.0)]
_SMALL_TERMS = [("small language model", 1.5), ("small language models", 1.5), ("small lms", 1.5)]
_MATH_TERMS = [("math", 1.5), ("mathematical", 1.5), ("arithmetic", 1.5)]
_GENERAL_TERMS = [("post-training", 1.0), ("language model", 1.0), ("language models", 1.0), ("reasoning", 1.0)]


def goal_terms(goal: Goal) -> dict[str, list[tuple[str, float]]]:
    """The concepts `rank_papers` looks for, each a list of (term, weight): the benchmark's
    phrases (3), each allowed method (up to 3 for its own name, less for generic words), LoRA
    when allowed (2), math words for math benchmarks (1.5), small-model words for models of
    8B parameters or fewer (1.5), and general post-training words (1)."""
    concepts: dict[str, list[tuple[str, float]]] = {"benchmark": [(p.lower(), 3.0) for p in _benchmark_phrases(goal)]}
    name = goal.benchmark.name.lower()
    if any(k in name for k in ("gsm", "math", "arith", "algebra")):
        concepts["math"] = _MATH_TERMS
    for method in goal.search_space.methods:
        concepts[method.value] = _METHOD_TERMS[method]
    if True in goal.search_space.lora_choices:
        concepts["lora"] = _LORA_TERMS
    if _is_small_model(goal):
        concepts["small"] = _SMALL_TERMS
    concepts["general"] = _GENERAL_TERMS
    return concepts


def _has(text: str, term: str) -> bool:
    return re.search(r"(?<![a-z0-9])" + re.escape(term) + r"(?![a-z0-9])", text) is not None


def relevance_score(paper: Paper, goal: Goal) -> float:
    """Sum over the goal's concepts of the best weight among its terms found (as whole words,
    case-insensitive) in the paper's abstract, or 1.5 times that weight in its title."""
    title, abstract = paper.title.lower(), paper.summary.lower()

    def weight(term: str, w: float) -> float:
        return w * 1.5 if _has(title, term) else w if _has(abstract, term) else 0.0

    return sum(max(weight(t, w) for t, w in terms) for terms in goal_terms(goal).values())


def rank_papers(papers: list[Paper], goal: Goal) -> list[Paper]:
    """Most relevant first: by `relevance_score` (keyword overlap with the goal's benchmark,
    methods and model size, see `goal_terms`), ties broken by the newer publication date,
    then by paper_id. Deterministic; duplicates (same paper_id) are dropped.

    Deliberately simple: it only reorders what arXiv returned for `build_query`, so that the
    few papers worth an LLM digest (`digest_papers`' top_k) are the ones closest to the goal."""
    unique = list({p.paper_id: p for p in reversed(papers)}.values())[::-1]

    def key(p: Paper):
        published = p.published
        if published is not None and published.tzinfo is None:
            published = published.replace(tzinfo=timezone.utc)
        newest_first = -published.timestamp() if published else float("inf")
        return (-relevance_score(p, goal), newest_first, p.paper_id)

    return sorted(unique, key=key)


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

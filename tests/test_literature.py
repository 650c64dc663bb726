"""The literature step against local stand-ins: a real HTTP server speaking the arXiv Atom API
(tests/standins/arxiv_server.py) and an OpenAI-compatible chat server
(tests/standins/openai_server.py). Nothing is mocked inside the arxiv, requests or litellm
packages. Run: python -m pytest tests/test_literature.py"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` does not put the repository root on sys.path
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mlintern import literature as lit  # noqa: E402
from mlintern.schemas import BenchmarkSpec, Goal, SearchSpace  # noqa: E402
from mlintern.settings import get_settings  # noqa: E402
from tests.standins import closed_port  # noqa: E402
from tests.standins.arxiv_server import ArxivStandIn  # noqa: E402
from tests.standins.openai_server import OpenAIStandIn  # noqa: E402

IDS = ["2106.09685", "1706.03762", "2411.15124", "2305.18290", "2501.19393", "2110.14168",
       "2502.02737", "2402.03300"]
FAST = dict(timeout_s=0.5, retries=1, backoff_s=0.05)


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch):
    for var in ("INTERN_ARXIV_URL", "INTERN_LLM_API_KEY", "INTERN_LLM_MODEL", "INTERN_LLM_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def arxiv_srv():
    with ArxivStandIn("post_training.xml") as srv:
        yield srv


def gsm8k_goal(methods=("sft", "grpo"), lora=(False, True)) -> Goal:
    return Goal(benchmark=BenchmarkSpec(kind="lm_eval", name="gsm8k"),
                search_space=SearchSpace(methods=list(methods), lora_choices=list(lora)))


# ----------------------------------------------------------------------------- (a) search


def test_build_query_names_benchmark_methods_and_size():
    q = lit.build_query(gsm8k_goal())
    assert q.startswith('(all:GSM8K OR all:"math word problems") AND ')
    for phrase in ('"fine-tuning"', '"reinforcement learning"', "GRPO", '"small language model"'):
        assert phrase in q
    q_dpo = lit.build_query(Goal(base_model="meta-llama/Llama-3.1-70B",
                                 benchmark=BenchmarkSpec(kind="lm_eval", name="local:arc_easy"),
                                 search_space=SearchSpace(methods=["dpo"])))
    assert '"preference optimization"' in q_dpo and "ARC" in q_dpo and "small" not in q_dpo


def test_search_goes_through_arxiv_client(arxiv_srv):
    query = lit.build_query(gsm8k_goal())
    papers = lit.search_papers(query, max_results=10, base_url=arxiv_srv.base_url, **FAST)

    assert [p.paper_id for p in papers] == IDS  # versions (v2, v7, ...) stripped
    grpo = papers[-1]
    assert grpo.title.startswith("DeepSeekMath: Pushing the Limits")
    assert grpo.pdf_url == "https://arxiv.org/pdf/2402.03300v3"
    assert grpo.categories == ["cs.CL", "cs.AI", "cs.LG"]
    assert grpo.published == datetime(2024, 2, 5, 18, 55, 32, tzinfo=timezone.utc)
    assert grpo.authors[0] == "Zhihong Shao" and "Group Relative Policy Optimization" in grpo.summary

    # What arxiv.Client sent: one GET /api/query with the arXiv API's parameters.
    assert len(arxiv_srv.requests) == 1
    req = arxiv_srv.requests[0]
    assert req.method == "GET" and req.path == "/api/query"
    assert req.params == {"search_query": query, "id_list": "", "sortBy": "relevance",
                          "sortOrder": "descending", "start": "0", "max_results": "10"}
    assert req.headers["user-agent"].startswith("arxiv.py/")


def test_search_url_from_settings_and_empty_feed(monkeypatch):
    with ArxivStandIn("empty.xml") as srv:
        monkeypatch.setenv("INTERN_ARXIV_URL", srv.base_url + "/")
        get_settings.cache_clear()
        assert lit.arxiv_api_url() == srv.base_url + "/api/query"
        assert lit.search_papers("all:qwertyuiopzxcv", max_results=3, **FAST) == []
        assert srv.queries[0]["max_results"] == "3"


# ----------------------------------------------------------------------------- (b) ranking


def test_rank_puts_most_relevant_first(arxiv_srv):
    papers = lit.search_papers("all:GRPO", base_url=arxiv_srv.base_url, **FAST)
    goal = gsm8k_goal(methods=["grpo"], lora=[False])
    ranked = lit.rank_papers(papers, goal)
    ids = [p.paper_id for p in ranked]
    # The GSM8K paper (benchmark + math in the title), then DeepSeekMath (GRPO + math).
    assert ids[:2] == ["2110.14168", "2402.03300"]
    assert ids[-1] == "1706.03762"  # Attention Is All You Need: nothing about the goal
    assert lit.relevance_score(ranked[-1], goal) == 0
    shuffled = papers[:] + papers[:2]  # order and duplicates do not matter
    random.Random(0).shuffle(shuffled)
    assert [p.paper_id for p in lit.rank_papers(shuffled, goal)] == ids

    # Equal scores: the newer paper first.
    older = ranked[1].model_copy(update={"paper_id": "1901.00001",
                                         "published": datetime(2019, 1, 1, tzinfo=timezone.utc)})
    assert [p.paper_id for p in lit.rank_papers([older, ranked[1]], goal)] == ["2402.03300", "1901.00001"]

    # For a preference-optimization goal the DPO paper leads instead.
    dpo_goal = gsm8k_goal(methods=["dpo"], lora=[False]).model_copy(
        update={"benchmark": BenchmarkSpec(kind="lm_eval", name="mmlu")})
    assert lit.rank_papers(papers, dpo_goal)[0].paper_id == "2305.18290"


# ----------------------------------------------------------------------------- (c) no LLM


def test_extractive_digests_are_cached(arxiv_srv, tmp_path):
    goal = gsm8k_goal()
    ranked = lit.rank_papers(lit.search_papers("all:GSM8K", base_url=arxiv_srv.base_url, **FAST), goal)
    digests = lit.digest_papers(ranked, None, tmp_path, top_k=3, goal=goal)

    assert [d.paper_id for d in digests] == [p.paper_id for p in ranked[:3]]
    for d in digests:
        assert d.technique.startswith("[abstract] ") and len(d.technique) > 40
        assert 0 < d.relevance <= 1
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == sorted(f"{p.paper_id}.json" for p in ranked[:3])

    # Second call: served from the cache (a marker written into one file comes back).
    path = tmp_path / f"{ranked[0].paper_id}.json"
    data = json.loads(path.read_text())
    data["digest"]["technique"] = "[abstract] from the cache"
    path.write_text(json.dumps(data))
    mtime = path.stat().st_mtime_ns
    again = lit.digest_papers(ranked, None, tmp_path, top_k=3, goal=goal)
    assert again[0].technique == "[abstract] from the cache"
    assert again[1:] == digests[1:]
    assert path.stat().st_mtime_ns == mtime

    # The whole step without an LLM.
    result = lit.gather_literature(goal, None, tmp_path, arxiv_srv.base_url, **FAST)
    assert result.error is None and len(result.papers) == 8 and len(result.digests) == 3
    assert result.query == lit.build_query(goal)


# ----------------------------------------------------------------------------- (d) arXiv down


@pytest.mark.parametrize("case", ["closed_port", "http_503", "hangs", "not_a_feed"])
def test_arxiv_down_never_raises(case, tmp_path):
    goal = gsm8k_goal()
    srv = None
    if case == "closed_port":
        url = f"http://127.0.0.1:{closed_port()}"
    else:
        srv = {"http_503": ArxivStandIn(status=503), "hangs": ArxivStandIn(hang=True),
               "not_a_feed": ArxivStandIn(body=b"<html><body>Please log in</body></html>")}[case].start()
        url = srv.base_url
    try:
        t0 = time.monotonic()
        result = lit.gather_literature(goal, None, tmp_path, url, **FAST)
        elapsed = time.monotonic() - t0
    finally:
        if srv is not None:
            srv.stop()
    assert result.papers == [] and result.digests == []
    assert result.error.startswith(f"arXiv unreachable at {url}/api/query: ")
    assert result.error.endswith("; the loop continues without literature")
    expected = {"closed_port": "connection failed (Connection refused) after 2 tries",
                "http_503": "HTTP 503 after 2 tries",
                "hangs": "no answer within 0.5 s (ReadTimeout) after 2 tries",
                "not_a_feed": "answer is not an arXiv Atom feed after 1 try"}[case]
    assert expected in result.error
    if case == "hangs":  # two tries of 0.5 s each, not the 30+ s of no timeout at all
        assert 0.9 < elapsed < 3.0
    else:
        assert elapsed < 2.0
    if srv is not None:
        assert len(srv.requests) == (1 if case == "not_a_feed" else 2)


def test_bad_query_is_not_retried(tmp_path):
    with ArxivStandIn(status=400) as srv:
        with pytest.raises(lit.LiteratureError, match=r"refused the query at .*: HTTP 400 after 1 try"):
            lit.search_papers("all:(", base_url=srv.base_url, timeout_s=1, retries=3, backoff_s=0.05)
        assert len(srv.requests) == 1


def test_literature_disabled():
    result = lit.gather_literature(gsm8k_goal().model_copy(update={"use_literature": False}), None, Path("/nonexistent"))
    assert result == lit.LiteratureResult()


# ----------------------------------------------------------------------------- (e) with an LLM


def _llm_answer(i: int) -> str:
    return json.dumps({"technique": f"technique {i}", "reported_gains": f"+{i} points",
                       "hyperparameters": f"lr 1e-{i}", "relevance": i / 10})


@pytest.fixture
def llm_env(monkeypatch):
    monkeypatch.setenv("INTERN_LLM_API_KEY", "sk-test")
    get_settings.cache_clear()


def test_llm_digests_through_openai_standin(arxiv_srv, tmp_path, llm_env):
    from mlintern.llm import LLMClient

    goal = gsm8k_goal()
    # A cached extractive digest of the top paper must be upgraded once an LLM is available.
    ranked = lit.rank_papers(lit.search_papers("all:GSM8K", base_url=arxiv_srv.base_url, **FAST), goal)
    lit.digest_papers(ranked, None, tmp_path, top_k=1, goal=goal)

    with OpenAIStandIn([_llm_answer(i) for i in (1, 2, 3)]) as llm_srv:
        llm = LLMClient(model="openai/stand-in", api_base=llm_srv.api_base, retries=0, timeout_s=10)
        result = lit.gather_literature(goal, llm, tmp_path, arxiv_srv.base_url, **FAST)
        assert result.error is None
        assert [(d.paper_id, d.technique, d.relevance) for d in result.digests] == [
            (p.paper_id, f"technique {i}", i / 10) for i, p in zip((1, 2, 3), result.papers)]
        assert result.digests[0].hyperparameters == "lr 1e-1"

        sent = llm_srv.chat_requests
        assert len(sent) == 3 and all(r["model"] == "stand-in" for r in sent)
        prompt = sent[0]["messages"][-1]["content"]
        top = result.papers[0]
        assert top.title in prompt and top.summary[:200] in prompt and "gsm8k" in prompt
        assert "response_format" in sent[0]
        assert llm_srv.requests[0].headers["authorization"] == "Bearer sk-test"

        # Second run: every digest comes from the cache, no LLM call.
        again = lit.gather_literature(goal, llm, tmp_path, arxiv_srv.base_url, **FAST)
        assert again.digests == result.digests and len(llm_srv.chat_requests) == 3
    cached = json.loads((tmp_path / f"{top.paper_id}.json").read_text())
    assert cached["source"] == "llm"


def test_llm_failure_falls_back_to_abstract(arxiv_srv, tmp_path, llm_env):
    from mlintern.llm import LLMClient

    goal = gsm8k_goal()
    # Paper 1: prose twice (invalid even after the repair round); paper 2: HTTP 500.
    script = ["I cannot help with that.", "Still no JSON.", 500, _llm_answer(3)]
    with OpenAIStandIn(script) as llm_srv:
        llm = LLMClient(model="openai/stand-in", api_base=llm_srv.api_base, retries=0, timeout_s=10)
        t0 = time.monotonic()
        result = lit.gather_literature(goal, llm, tmp_path, arxiv_srv.base_url, **FAST)
        assert time.monotonic() - t0 < 15
    assert result.error is None
    techniques = [d.technique for d in result.digests]
    assert techniques[0].startswith("[abstract] ") and techniques[1].startswith("[abstract] ")
    assert techniques[2] == "technique 3"
    assert len(llm_srv.chat_requests) == 4 and llm_srv.remaining == 0  # no hidden retries

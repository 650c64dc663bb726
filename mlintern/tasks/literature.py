from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlintern import literature
from mlintern.ledger import GoalLedger
from mlintern.llm import LLMClient
from mlintern.schemas import Goal, PaperDigest
from mlintern.settings import get_settings
from mlintern.tasks import run_logger


@task(name="gather-literature", cache_policy=NO_CACHE, retries=0, timeout_seconds=900)
def gather_literature(goal: Goal, llm: LLMClient | None) -> list[PaperDigest]:
    """Search arXiv and digest the most relevant papers with `llm` (the planner's client, so the
    spend is the goal's). Never fatal: with arXiv unreachable the loop goes on without literature
    and says so. The digests and their LLM spend are recorded in the goal's ledger."""
    settings = get_settings()
    before = llm.spent_dollars if llm is not None else 0.0
    result = literature.gather_literature(goal, llm, settings.work_dir.resolve() / "literature",
                                          base_url=settings.arxiv_url)
    if result.error:
        run_logger().warning(result.error)
    spent = (llm.spent_dollars - before) if llm is not None else 0.0
    GoalLedger.open(goal).log_literature(result.query, result.digests, result.error, spent)
    return result.digests

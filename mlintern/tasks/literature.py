from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlintern import literature
from mlintern.schemas import PaperDigest
from mlintern.schemas import Goal
from mlintern.settings import get_settings
from mlintern.tracking import ensure_experiment, log_literature
from mlintern.tasks import run_logger


@task(name="gather-literature", cache_policy=NO_CACHE, retries=0, timeout_seconds=900)
def gather_literature(goal: Goal, planner) -> list[PaperDigest]:
    """Search arXiv and digest the most relevant papers. Never fatal: with arXiv unreachable
    the loop goes on without literature and says so."""
    settings = get_settings()
    llm = getattr(planner, "client", None)
    result = literature.gather_literature(goal, llm, settings.work_dir.resolve() / "literature",
                                          base_url=settings.arxiv_url)
    if result.error:
        run_logger().warning(result.error)
    log_literature(ensure_experiment(goal), goal, result.query, result.digests, result.error)
    return result.digests

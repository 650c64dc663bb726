"""The Prefect tasks the flows run: one module each in mlintern/tasks (installed with the
package). Re-exported here so the project's top level shows the pipeline's parts."""

from mlintern.tasks.budget import budget_facts
from mlintern.tasks.data import build_data
from mlintern.tasks.evaluate import evaluate
from mlintern.tasks.literature import gather_literature
from mlintern.tasks.plan import plan_next
from mlintern.tasks.setup import prepare, resolve
from mlintern.tasks.train import train

__all__ = ["budget_facts", "build_data", "evaluate", "gather_literature", "plan_next", "prepare", "resolve", "train"]

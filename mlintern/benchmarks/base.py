"""The prepared-benchmark type and helpers shared by the benchmark kinds (rgym, lmeval_tasks).
Nothing here imports a benchmark kind: `prepare_benchmark` lives in mlintern/benchmarks/prepare.py,
above them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, Field

from mlintern.schemas import BenchmarkSpec


class PreparedBenchmark(BaseModel):
    """A benchmark made concrete: lm-eval task names for dev and test, and their data files.

    `eval_files` are hashed for the integrity check and used for decontamination; the planner
    and the training code never read the test file.
    """

    spec: BenchmarkSpec
    include_path: str | None = Field(None, description="Folder of lm-eval task YAMLs, or None for built-ins.")
    dev_task: str
    test_task: str
    metric: str
    dev_file: str | None = None
    test_file: str | None = None
    confirm_task: str | None = Field(None, description="A second dev set (another seed), if the benchmark has one.")
    confirm_file: str | None = None
    prompt_suffix: str = ""

    def eval_splits(self) -> dict[str, str]:
        """split -> data file of every evaluation set (training data must avoid all of them)."""
        files = {"dev": self.dev_file, "test": self.test_file, "confirm": self.confirm_file}
        return {split: path for split, path in files.items() if path}

    def eval_files(self) -> list[Path]:
        return [Path(p) for p in self.eval_splits().values()]

    def task_for(self, split: str) -> str:
        tasks = {"dev": self.dev_task, "test": self.test_task, "confirm": self.confirm_task}
        if not tasks.get(split):
            raise ValueError(f"benchmark {self.spec.name} has no {split!r} task")
        return tasks[split]

    def fingerprint(self) -> str:
        """Hash of the evaluation data and task definitions (checked before the final report)."""
        h = hashlib.sha256()
        files = list(self.eval_files())
        if self.include_path:
            files += sorted(Path(self.include_path).glob("*.yaml")) + sorted(Path(self.include_path).glob("*.py"))
        for f in sorted(set(files)):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        h.update(self.dev_task.encode() + self.test_task.encode())
        return h.hexdigest()


def write_eval_jsonl(path: Path, rows: list[dict]) -> None:
    """Write an evaluation file atomically and owner-only (0600): sandboxed code, which runs as
    nobody (mlintern.sandbox), cannot read it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.chmod(0o600)
    tmp.replace(path)

"""reasoning-gym benchmarks: dev, test and training data are disjoint seeds of one generator,
scored by the generator's own `score_answer`."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import yaml

from mlintern.benchmarks.base import PreparedBenchmark, write_eval_jsonl
from mlintern.errors import GoalError
from mlintern.schemas import BenchmarkSpec

PROMPT_SUFFIX = "\nGive only the final answer."
_UTILS = Path(__file__).with_name("rgym_lmeval_utils.py")


class UnknownTask(GoalError):
    """The goal names a reasoning-gym task that does not exist (never retried)."""


def check_task(task: str) -> None:
    import reasoning_gym

    if task not in reasoning_gym.factory.DATASETS:
        raise UnknownTask(
            f"reasoning-gym has no task {task!r}; e.g. basic_arithmetic, gsm_symbolic, chain_sum "
            f"({len(reasoning_gym.factory.DATASETS)} tasks: python -c 'import reasoning_gym; "
            "print(sorted(reasoning_gym.factory.DATASETS))')"
        )


def make_items(task: str, config: dict, size: int, seed: int) -> list[dict]:
    """Generate `size` items of a reasoning-gym task as flat JSON-able rows."""
    import reasoning_gym

    check_task(task)
    ds = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    return [
        {
            "question": item["question"],
            "answer": str(item["answer"]),
            "metadata": json.dumps(item.get("metadata", {}), default=str),
            "rg_task": task,
            "rg_config": json.dumps(config, sort_keys=True),
        }
        for item in ds
    ]


def score(task: str, config: dict, prediction: str, row: dict) -> float:
    """The generator's own scorer (used for evaluation and GRPO rewards alike)."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset(task, size=1, seed=0, **config)
    entry = {"question": row["question"], "answer": row["answer"],
             "metadata": json.loads(row["metadata"]) if isinstance(row["metadata"], str) else row["metadata"]}
    return float(ds.score_answer(prediction.strip(), entry) or 0.0)


def _task_yaml(task_name: str, data_file: Path, spec: BenchmarkSpec) -> dict:
    return {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{question}}" + PROMPT_SUFFIX,
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {
            "until": ["\n\n", "<|im_end|>", "</s>"],
            "do_sample": False,
            "max_gen_toks": spec.max_gen_toks,
        },
        "process_results": "!function rgym_lmeval_utils.process_results",
        "metric_list": [{"metric": "score", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def prepare(spec: BenchmarkSpec, work_dir: Path) -> PreparedBenchmark:
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    key = f"rg_{spec.name}_{digest[:8]}"
    out = work_dir / "benchmarks" / key
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    splits = [("dev", spec.dev_size, spec.dev_seed), ("test", spec.test_size, spec.test_seed)]
    if spec.confirm_seed is not None:
        splits.append(("confirm", spec.dev_size, spec.confirm_seed))
    for split, size, seed in splits:
        path = out / f"{split}.jsonl"
        if not path.exists():
            write_eval_jsonl(path, make_items(spec.name, dict(spec.task_config), size, seed))
        files[split] = path
        task_name = f"{key}_{split}"
        text = yaml.safe_dump(_task_yaml(task_name, path, spec), sort_keys=False)
        # lm-eval resolves `!function` tags itself; PyYAML would quote the tag as a string
        text = text.replace("'!function rgym_lmeval_utils.process_results'", "!function rgym_lmeval_utils.process_results")
        (out / f"{task_name}.yaml").write_text(text)
    shutil.copyfile(_UTILS, out / "rgym_lmeval_utils.py")
    return PreparedBenchmark(
        spec=spec, include_path=str(out), dev_task=f"{key}_dev", test_task=f"{key}_test",
        metric="score", dev_file=str(files["dev"]), test_file=str(files["test"]),
        confirm_task=f"{key}_confirm" if "confirm" in files else None,
        confirm_file=str(files["confirm"]) if "confirm" in files else None,
        prompt_suffix=PROMPT_SUFFIX,
    )

"""Benchmark data for bench/research_efficiency.py, built HERE (reasoning-gym is not on the GPU machine).

Writes, under OUT_DIR (default .wheels/rgdata, git-ignored, carried to the device):
  dev.jsonl   goal.benchmark dev set   (seed 1_000_001, DEV_SIZE items)
  test.jsonl  goal.benchmark test set  (seed 2_000_002, TEST_SIZE items)
  train_s{K}.jsonl  a training pool per DatasetRecipe.seed K (generator seed 5_000_000 + 100_000*K);
              a plan with num_examples=N trains on the first N rows (reasoning-gym item i depends only
              on seed+i, so a prefix equals a fresh dataset of size N). Rows whose question appears
              in dev or test are dropped (exact-match decontamination).
Every row is made by the project's own mlintern.benchmarks.rgym.make_items. The device scores with
`score_answer` below, a copy of reasoning_gym's ProceduralDataset.score_answer (basic_arithmetic does
not override it); `python bench/rg_data.py` checks the copy against mlintern.benchmarks.rgym.score.

Usage: python bench/rg_data.py [OUT_DIR] [DEV_SIZE] [TEST_SIZE] [POOL_SIZE]
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, os.environ.get("BENCH_SRC") or str(Path(__file__).resolve().parents[1]))

PROMPT_SUFFIX = "\nGive only the final answer."
TRAIN_SEED_BASE = 5_000_000


def score_answer(answer: str | None, oracle_answer: str) -> float:
    """reasoning_gym 0.1.25 ProceduralDataset.score_answer, verbatim logic."""
    reward = 0.0
    if isinstance(answer, str) and len(answer) > 0:
        if answer == oracle_answer:
            reward = 1.0
        elif oracle_answer in answer:
            reward = len(oracle_answer) / len(answer)
    return reward


def score_prediction(raw_generation: str, oracle_answer: str) -> float:
    """What the project's lm-eval hook does: cut at the stop strings, first line, strip, score."""
    text = raw_generation
    for stop in ("\n\n", "<|im_end|>", "</s>"):
        text = text.split(stop)[0]
    text = text.strip().split("\n")[0]
    return score_answer(text.strip(), oracle_answer)


def main() -> None:
    from mlintern.benchmarks.rgym import make_items, score
    from mlintern.schemas import BenchmarkSpec

    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".wheels/rgdata")
    dev_size = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    test_size = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    pool = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
    spec = BenchmarkSpec(dev_size=dev_size, test_size=test_size)
    cfg = dict(spec.task_config)
    out.mkdir(parents=True, exist_ok=True)
    dev = make_items(spec.name, cfg, spec.dev_size, spec.dev_seed)
    test = make_items(spec.name, cfg, spec.test_size, spec.test_seed)
    held = {r["question"].strip() for r in dev + test}
    for name, rows in (("dev", dev), ("test", test)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for k in (0, 1, 2):
        rows = make_items(spec.name, cfg, pool, TRAIN_SEED_BASE + 100_000 * k)
        kept = [r for r in rows if r["question"].strip() not in held]
        (out / f"train_s{k}.jsonl").write_text("".join(
            json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in kept))
        print(f"train_s{k}: {len(kept)} rows ({len(rows) - len(kept)} dropped as dev/test duplicates)")
    (out / "spec.json").write_text(spec.model_dump_json())
    # check the scorer copy against the project's scorer on real answers and perturbations
    rnd = random.Random(0)
    n = 0
    for r in dev[:40] + test[:40]:
        a = r["answer"]
        for pred in (a, a + " ", f"The answer is {a}", a + "0", str(rnd.randint(-99, 199)), "", f"{a}\n\nx"):
            mine = score_prediction(pred, a)
            ref = score(spec.name, cfg, pred.strip().split("\n")[0], r)
            assert abs(mine - ref) < 1e-12, (pred, a, mine, ref)
            n += 1
    print(f"scorer copy agrees with mlintern.benchmarks.rgym.score on {n} predictions")
    print(f"dev {len(dev)}, test {len(test)} items -> {out}; example: {dev[0]['question']!r} -> {dev[0]['answer']!r}")


if __name__ == "__main__":
    main()

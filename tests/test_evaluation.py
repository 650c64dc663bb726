"""Real lm-eval scoring of the real SmolLM2-135M on the reasoning-gym benchmark."""

import json

from mlintern.benchmarks import prepare_benchmark
from mlintern.evaluation import evaluate_model
from mlintern.schemas import BenchmarkSpec


def test_dev_and_test_are_disjoint_and_scored_by_lm_eval(tmp_path, smol_model):
    bench = prepare_benchmark(BenchmarkSpec(dev_size=10, test_size=10, max_gen_toks=8), tmp_path)
    dev = [json.loads(x)["question"] for x in open(bench.dev_file)]
    test = [json.loads(x)["question"] for x in open(bench.test_file)]
    assert len(dev) == 10 and len(test) == 10
    score, raw = evaluate_model(smol_model, bench.dev_task, bench.metric, bench.include_path,
                                device="cpu", batch_size=10, log_samples=True)
    assert score.n == 10 and 0.0 <= score.value <= 1.0 and score.stderr is not None
    samples = raw["samples"][bench.dev_task]
    assert len(samples) == 10 and all(s["resps"] for s in samples)
    assert "<|im_start|>user" in str(samples[0]["arguments"]), "chat template applied"


def test_fingerprint_changes_when_eval_data_changes(tmp_path):
    bench = prepare_benchmark(BenchmarkSpec(dev_size=5, test_size=5), tmp_path)
    before = bench.fingerprint()
    assert bench.fingerprint() == before
    with open(bench.test_file, "a") as f:
        f.write(json.dumps({"question": "planted", "answer": "1"}) + "\n")
    assert bench.fingerprint() != before

"""lm-eval `process_results` hook for reasoning-gym tasks (copied next to the task YAML)."""

import json


def process_results(doc, results):
    from mlintern.benchmarks.rgym import score

    prediction = results[0] if results else ""
    prediction = prediction.strip().split("\n")[0]
    return {"score": score(doc["rg_task"], json.loads(doc["rg_config"]), prediction, doc)}

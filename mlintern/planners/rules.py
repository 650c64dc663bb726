"""Rule-based repair of a failed plan: used when no LLM is configured, and as the fallback."""

from __future__ import annotations

from mlintern.schemas import ExperimentPlan, Failure, FailureKind


def fix_plan(plan: ExperimentPlan, failure: Failure) -> ExperimentPlan:
    """Return a changed plan that avoids `failure` (raises ValueError if nothing is left to try)."""
    hp = plan.hyperparameters.model_copy()
    data = plan.dataset.model_copy()
    if failure.kind == FailureKind.oom:
        if hp.per_device_batch_size == 1 and hp.max_length <= 64:
            raise ValueError("out of memory at micro-batch 1 and 64 tokens: the model does not fit this device")
        if hp.per_device_batch_size > 1:
            hp.per_device_batch_size //= 2
            hp.gradient_accumulation_steps *= 2
        else:
            hp.max_length = max(64, hp.max_length // 2)
        note = "halved the micro-batch (doubling gradient accumulation) after out-of-memory"
    elif failure.kind == FailureKind.nan:
        if hp.learning_rate < 1e-7:
            raise ValueError("loss diverges even at learning rate < 1e-7")
        hp.learning_rate /= 4
        hp.warmup_ratio = max(hp.warmup_ratio, 0.1)
        note = "cut the learning rate 4x and added warmup after NaN/divergence"
    elif failure.kind == FailureKind.bad_data:
        if data.source == "benchmark":
            raise ValueError("the benchmark's own training data is bad: fix the benchmark definition")
        data = data.model_copy(update={"source": "benchmark", "column_map": {}, "hf_config": None})
        note = "switched to the benchmark's own generator after bad data"
    elif failure.kind == FailureKind.disk_full:
        raise ValueError("disk full: no plan change frees space; free disk under INTERN_WORK_DIR and resume")
    elif failure.kind == FailureKind.timeout:
        hp.max_steps = max(1, hp.max_steps // 2)
        hp.max_length = max(64, hp.max_length // 2)
        note = "halved steps and sequence length after a timeout"
    else:
        data = data.model_copy(update={"seed": data.seed + 1})
        note = "re-ran with another data seed after a crash"
    return plan.model_copy(update={
        "hyperparameters": hp, "dataset": data, "retry_of": plan.plan_id(),
        "rationale": f"Retry of {plan.plan_id()}: {note}.",
    })

import pytest
from pydantic import ValidationError

from mlintern.schemas import BenchmarkSpec, ExperimentPlan, Goal, Hyperparameters, Method


def test_default_goal_is_valid_and_stable():
    assert Goal().goal_id() == Goal().goal_id()
    assert Goal(budget={"max_experiments": 9}).goal_id() == Goal().goal_id(), "budget is not identity"
    assert Goal(base_model="Qwen/Qwen3-1.7B-Base").goal_id() != Goal().goal_id()


@pytest.mark.parametrize("field,value,needle", [
    ("budget", {"max_experiments": 0}, "budget.max_experiments"),
    ("budget", {"gpu_hours": -1}, "budget.gpu_hours"),
    ("llm_model", "gpt-4o", "provider prefix"),
    ("name", "has space", "name"),
    ("target_score", 1.5, "target_score"),
    ("benchmark", {"dev_seed": 5, "test_seed": 5}, "disjoint"),
    ("benchmark", {"name": "../etc/passwd"}, "not a path"),
    ("unknown_field", 1, "unknown_field"),
])
def test_bad_goal_fields_name_the_field(field, value, needle):
    with pytest.raises(ValidationError) as err:
        Goal.model_validate({field: value})
    assert needle in str(err.value)


def test_plan_id_ignores_prose_but_not_hyperparameters():
    a = ExperimentPlan(rationale="x")
    assert a.plan_id() == ExperimentPlan(rationale="y", hypothesis="z").plan_id()
    assert a.plan_id() != ExperimentPlan(hyperparameters=Hyperparameters(learning_rate=1e-4)).plan_id()


def test_grpo_batch_must_divide_into_groups():
    with pytest.raises(ValidationError, match="num_generations"):
        ExperimentPlan(method=Method.grpo, hyperparameters={"per_device_batch_size": 3, "num_generations": 4})


def test_benchmark_defaults():
    spec = BenchmarkSpec()
    assert spec.kind == "reasoning_gym" and spec.dev_seed != spec.test_seed


def _models(root):
    """root and every pydantic model nested in its fields."""
    from typing import get_args

    from pydantic import BaseModel

    seen, todo = [], [root]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for f in cls.model_fields.values():
            for t in (f.annotation, *get_args(f.annotation)):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
    return seen


@pytest.mark.parametrize("root", [ExperimentPlan, Goal])
def test_every_field_the_llm_or_a_user_reads_is_documented(root):
    missing = [f"{cls.__name__}.{name}" for cls in _models(root)
               for name, f in cls.model_fields.items() if not f.description]
    assert missing == []


def test_results_stored_under_retired_names_still_load():
    from mlintern.schemas import ExperimentResult
    from mlintern.training.job import TrainOutcome

    plan = ExperimentPlan()
    stored = ExperimentResult(plan_id=plan.plan_id(), plan=plan, status="succeeded", job_seconds=7.0)
    old = stored.model_dump(mode="json")
    del old["job_seconds"]
    assert ExperimentResult.model_validate({**old, "train_wall_seconds": 5.0}).job_seconds == 5.0
    both = ExperimentResult.model_validate_json(stored.model_copy().model_dump_json()[:-1] + ', "train_wall_seconds": 5.0}')
    assert both.job_seconds == 7.0, "when both were stored, today's name wins"
    out = TrainOutcome.model_validate({"status": "succeeded", "model_dir": "/m", "final_loss": 0.5, "wall_seconds": 3})
    assert (out.model_path, out.train_loss, out.job_seconds) == ("/m", 0.5, 3.0)


def test_outcome_and_result_share_one_name_per_measurement():
    from mlintern.schemas import ExperimentResult
    from mlintern.training.job import TrainOutcome

    shared = set(TrainOutcome.model_fields) & set(ExperimentResult.model_fields)
    assert {"model_path", "train_loss", "job_seconds", "train_seconds", "train_loop_seconds", "eval_seconds",
            "steps", "examples", "tokens", "curve", "pruned_at", "dev", "failure", "status"} <= shared
    assert set(TrainOutcome.model_fields) - shared == {"stopped_by_time_limit"}


@pytest.mark.parametrize("module,package", [("mlintern/planners/base.py", "mlintern.planners"),
                                            ("mlintern/benchmarks/base.py", "mlintern.benchmarks")])
def test_base_modules_import_nothing_above_them(module, package):
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).parents[1] / module).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert [m for m in imported if m.startswith(package)] == [], f"{module} imports from {package}"


def test_schemas_import_only_schemas():
    """The shared types sit at the bottom: planners, budget, flows import them, never the reverse."""
    import ast
    from pathlib import Path

    for path in (Path(__file__).parents[1] / "mlintern" / "schemas").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert [m for m in imported if m.startswith("mlintern") and not m.startswith("mlintern.schemas")] == [], path


@pytest.mark.parametrize("flat,plan_id", [
    ({}, "e0ae5366016371fd"),
    ({"method": "dpo", "hyperparameters": {"beta": 0.3, "lora": True, "lora_r": 8, "learning_rate": 1e-5}},
     "25eb5e9e145efbb5"),
    ({"method": "grpo", "hyperparameters": {"beta": 0.0, "num_generations": 8, "max_completion_length": 64,
                                            "per_device_batch_size": 8}}, "4a950b56f739ab8f"),
    ({"hyperparameters": {"lora": True, "lora_alpha": 64, "max_steps": 500}, "init_from": "base", "stage": "scale_up"},
     "4a7df4f7017f89a0"),
], ids=["defaults", "dpo-lora", "grpo", "lora-scale-up"])
def test_method_knobs_sit_in_their_groups_and_plans_stored_flat_keep_their_ids(flat, plan_id):
    """The ids are those the flat layout (before the lora/dpo/grpo groups) gave these plans: a goal's
    stored experiments are still recognised, so no plan runs twice across the upgrade."""
    plan = ExperimentPlan.model_validate(flat)
    assert plan.plan_id() == plan_id
    hp = flat.get("hyperparameters", {})
    assert plan.hyperparameters.lora.enabled is hp.get("lora", False)
    assert plan.hyperparameters.lora.r == hp.get("lora_r", 16) and plan.hyperparameters.lora.alpha == hp.get("lora_alpha", 32)
    if plan.method == Method.grpo:
        assert (plan.hyperparameters.grpo.beta, plan.hyperparameters.grpo.num_generations) == (0.0, 8)
    if plan.method == Method.dpo:
        assert plan.hyperparameters.dpo.beta == 0.3
    grouped = ExperimentPlan.model_validate_json(plan.model_dump_json())
    assert grouped == plan and grouped.plan_id() == plan_id
    assert not {"lora_r", "beta", "num_generations"} & plan.hyperparameters.model_dump().keys()



def test_a_flat_knob_beside_a_group_object_fills_in_what_the_group_left_unset():
    from mlintern.schemas.plan import DPOSettings, GRPOSettings, LoraSettings

    hp = Hyperparameters(lora=LoraSettings(enabled=True, r=8), lora_alpha=64, beta=0.2,
                         grpo=GRPOSettings(num_generations=8), dpo=DPOSettings(beta=0.5))
    assert (hp.lora.enabled, hp.lora.r, hp.lora.alpha) == (True, 8, 64), "the group's r, the flat alpha"
    assert (hp.grpo.num_generations, hp.grpo.beta) == (8, 0.2) and hp.dpo.beta == 0.5, "a group's own value wins"

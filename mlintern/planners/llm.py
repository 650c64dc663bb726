"""The LLM planner: litellm with structured output, history and literature in the prompt.

The model answers in a strict "proposal" schema made from ExperimentPlan (`plan_schema`): every
key required (null = the default), only the knobs this goal can use (no GRPO fields unless
GRPO is allowed, no LoRA rank without LoRA, no data seed, split or weight decay), the column
map left to the column mapper, `method` narrowed to the goal's methods. Every key a small local
model must fill is one more chance to go wrong, and the grammar and prompt stay short. The
answer is validated into a real ExperimentPlan (defaults for what the proposal leaves out) and
checked against the goal:
- invalid output gets one repair round; fields still invalid that have defaults are reset;
- a plan outside the goal's limits is sent back once; numbers still outside are clamped into
  them (noted in the transcript) rather than wasting the round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field

from mlintern.llm import LLMClient, LLMError, LLMTranscript, run_log, safe_url, working_mode
from mlintern.planners.base import (
    PlanRejected,
    clamp_plan,
    plan_bounds,
    validate_plan,
    validate_proposal,
)
from mlintern.planners.rules import fix_plan
from mlintern.prompts import PROMPT_DIR, render
from mlintern.schemas import ExperimentPlan, Goal, Method, PlanningContext
from mlintern.structured import narrow_enum, strict_schema

log = logging.getLogger(__name__)

PLAN_TEMPLATES = ("planner_system.md", "planner_user.md", "repair.md", "plan_rejected.md")
# Never proposed: the column map (a free-form dict, outside the strict subset, filled by the
# column mapper at data-build time), knobs rarely worth a key a small model must fill, and
# fields the loop's policy sets (`stage`, where the schema has it).
PLAN_EXCLUDE = ("dataset.column_map", "dataset.seed", "dataset.hf_split", "hyperparameters.weight_decay", "stage")


def plan_exclusions(goal: Goal) -> tuple[str, ...]:
    """ExperimentPlan fields the planner LLM does not see for this goal (they keep defaults)."""
    space = goal.search_space
    methods = set(space.methods)
    out = list(PLAN_EXCLUDE)
    if True not in space.lora_choices:
        out.append("hyperparameters.lora")
    if Method.sft not in methods:
        out.append("hyperparameters.packing")
    if Method.dpo not in methods:
        out.append("hyperparameters.dpo")
    if Method.grpo not in methods:
        out += ["hyperparameters.grpo", "reward_code"]
    return tuple(out)


def plan_schema(goal: Goal) -> dict:
    """The schema the planner LLM answers in (strict subset; see mlintern/structured.py)."""
    schema = strict_schema(ExperimentPlan, exclude=plan_exclusions(goal))
    return narrow_enum(schema, "method", [m.value for m in goal.search_space.methods])


def template_sha256(names: tuple[str, ...] = PLAN_TEMPLATES) -> dict[str, str]:
    """sha256 of each prompt template's source, so a transcript names the prompts it used."""
    return {name: hashlib.sha256((PROMPT_DIR / f"{name}.j2").read_bytes()).hexdigest() for name in names}


@dataclass
class LLMPlanner:
    model: str
    api_base: str | None = None
    budget_dollars: float = 1.0
    name: str = "llm"
    client: LLMClient = field(init=False)
    last_transcript: LLMTranscript | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.name = f"llm:{self.model}"
        self.client = LLMClient(model=self.model, api_base=self.api_base, budget_dollars=self.budget_dollars)

    def summary(self) -> str:
        return self.name

    def messages(self, ctx: PlanningContext, schema: dict | None = None) -> list[dict]:
        schema = schema or plan_schema(ctx.goal)
        steps = plan_bounds(ctx).max_steps
        system = render("planner_system.md", schema=json.dumps(schema), max_steps_hint=steps[1] if steps else None)
        from mlintern.planners.facts import budget_facts

        user = render(
            "planner_user.md", goal=ctx.goal, metric=ctx.metric, baseline=ctx.baseline,
            champion=ctx.champion, history=ctx.history, literature=ctx.literature,
            experiments_left=ctx.experiments_left, hours_left=ctx.hours_left, budget=budget_facts(ctx),
            bounds=plan_bounds(ctx), example=example_answer(ctx),
            failure=ctx.failure, failure_plan_id=ctx.failure_plan.plan_id() if ctx.failure_plan else None,
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def new_transcript(self) -> LLMTranscript:
        return LLMTranscript(planner=self.name, model=self.model, api_base=safe_url(self.api_base),
                             prompt_sha256=template_sha256(), goal_dollars_spent=self.client.total_dollars)

    def propose(self, ctx: PlanningContext) -> ExperimentPlan:
        """A validated plan; `last_transcript` tells how it was made (also when this raises)."""
        self.client.take_calls()  # calls made outside planning (paper digests) belong to no plan
        transcript = self.last_transcript = self.new_transcript()
        try:
            plan = self._propose(ctx, transcript)
        except Exception as exc:
            transcript.error = f"{type(exc).__name__}: {exc}"[:2000]
            raise
        finally:
            transcript.add(self.client.take_calls())
            transcript.mode = working_mode(self.model, self.api_base)
            transcript.budget_left_dollars = max(0.0, self.budget_dollars - self.client.total_dollars)
        salvaged = [note for c in transcript.calls for note in c.notes]
        transcript.notes = salvaged + transcript.notes
        if transcript.source == "llm" and salvaged:
            transcript.source = "llm-salvaged"
        elif transcript.source == "llm" and any(c.purpose == "repair" for c in transcript.calls):
            transcript.source = "llm-repaired"
        return plan

    def _ask(self, messages: list[dict], schema: dict, purpose: str, ctx: PlanningContext,
             transcript: LLMTranscript) -> ExperimentPlan:
        plan = self.client.structured(messages, ExperimentPlan, json_schema=schema, purpose=purpose, salvage=True)
        return tidy_plan(plan, ctx, transcript.notes)

    def _propose(self, ctx: PlanningContext, transcript: LLMTranscript) -> ExperimentPlan:
        schema = plan_schema(ctx.goal)
        messages = self.messages(ctx, schema)
        plan = self._ask(messages, schema, "plan", ctx, transcript)
        try:
            return validate_proposal(plan, ctx)
        except PlanRejected as exc:
            problems = str(exc)
            run_log().warning("LLM plan rejected (%s); asking once for a plan within the limits", problems)
        messages = messages + [
            {"role": "assistant", "content": plan.model_dump_json(exclude={"dataset": {"column_map"}})},
            {"role": "user", "content": render("plan_rejected.md", problems=problems)},
        ]
        plan = self._ask(messages, schema, "plan_rejected", ctx, transcript)
        try:
            plan = validate_proposal(plan, ctx)
            transcript.source = "llm-revised"
            return plan
        except PlanRejected as exc:
            still = exc
        clamped, notes = clamp_plan(plan, ctx)
        if notes:
            try:
                plan = validate_proposal(clamped, ctx)
                transcript.source, transcript.notes = "llm-clamped", transcript.notes + notes
                run_log().warning("LLM plan still outside the goal's limits after one revision; clamped: %s", "; ".join(notes))
                return plan
            except PlanRejected as exc:
                still = exc
        if ctx.failure is not None and ctx.failure_plan is not None:
            run_log().warning("LLM fix rejected (%s); falling back to the rule-based fix", still)
            transcript.source = "rule-fix"
            transcript.notes.append(f"LLM fix rejected ({still}); rule-based fix used")
            return validate_plan(fix_plan(ctx.failure_plan, ctx.failure), ctx)
        raise PlanRejected(f"LLM {self.model} proposed an invalid plan twice: {still}") from None


_ARXIV_ID = re.compile(r"^(arXiv:)?\d{4}\.\d{4,5}(v\d+)?$", re.I)


def tidy_plan(plan: ExperimentPlan, ctx: PlanningContext, notes: list[str]) -> ExperimentPlan:
    """Clear fields a weak model fills with junk that would still validate: `retry_of` that names
    no plan to fix (the loop follows it as a lineage link), `hf_config` on a non-hub source, and
    cited papers that are not arXiv ids. Each change is noted."""
    data = plan.model_dump()
    wanted = ctx.failure_plan.plan_id() if ctx.failure_plan is not None else None
    if plan.retry_of not in (None, wanted):
        notes.append(f"retry_of {plan.retry_of!r} is no plan to fix; set to {wanted!r}")
        data["retry_of"] = wanted
    if plan.dataset.hf_config is not None and not plan.dataset.source.startswith("hf:"):
        notes.append(f"dropped dataset.hf_config {plan.dataset.hf_config!r} (source {plan.dataset.source!r} "
                     "is no hub dataset)")
        data["dataset"]["hf_config"] = None
    cited = [p for p in plan.cited_papers if _ARXIV_ID.match(p.strip())]
    if cited != plan.cited_papers:
        notes.append(f"dropped cited_papers that are no arXiv ids: {[p for p in plan.cited_papers if p not in cited]}")
        data["cited_papers"] = cited
    return plan if data == plan.model_dump() else ExperimentPlan.model_validate(data)


__all__ = ["LLMPlanner", "LLMError", "plan_schema", "plan_exclusions", "template_sha256"]


def example_answer(ctx: PlanningContext) -> str:
    """One valid plan as JSON, every key present (as the strict schema wants): the next of the
    loop's seed configurations at the shortest affordable run. Small local models copy the form
    of an example far more reliably than they read a JSON schema (SmolLM2-135M on llama.cpp)."""
    from mlintern.planners.search import make_plan, seed_configs

    seeds = seed_configs(ctx)
    bounds = plan_bounds(ctx)
    steps = bounds.max_steps[0] if bounds.max_steps else 10
    plan = make_plan(seeds[len(ctx.history) % len(seeds)], steps, ctx, stage="explore",
                     rationale="why this run, and what its result will decide")
    plan = plan.model_copy(update={"hypothesis": "what this run tests and the dev score change expected"})
    return json.dumps(_keys_of(plan_schema(ctx.goal), plan.model_dump(mode="json")), separators=(", ", ": "))


def _keys_of(schema: dict, value):
    """`value` with only the keys the schema asks for (the loop sets `stage`; GRPO keys only for GRPO goals)."""
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") == "object"), schema)
    if isinstance(value, dict) and "properties" in schema:
        return {k: _keys_of(schema["properties"][k], v) for k, v in value.items() if k in schema["properties"]}
    return value

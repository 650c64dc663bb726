"""Research efficiency at a fixed GPU budget, and the loop's orchestration overhead (issue 6, parts 2-3).

Arms, each on the real SmolLM2-135M-Instruct and reasoning-gym basic_arithmetic (bench/rg_data.py):
  a  one SFT run with the project's default ExperimentPlan (lr 5e-5, 20 steps, batch 8, 256 rows, from base)
  b  random search: SearchPlanner(sampler="random"); every run from base; best dev wins (noise_z=0, no patience)
  c  Optuna TPE:    SearchPlanner(sampler="tpe");    same rules as b
  d  the loop's default policy: LoopState (noise-aware promotion noise_z=1, patience 2, fix-and-retry on
     failure) + the TPE planner + champion chaining (plan.init_from="champion" starts from the champion), i.e.
     flows/research_loop.py's plan_round/run_experiments/record without Prefect and MLflow.
b, c and d stop when the project's own accounting (ExperimentResult.accelerator_hours = train_seconds +
eval_seconds, LoopState.hours_left) has spent --gpu-budget-s, or at --max-experiments.

Each experiment runs like flows/experiment.py: write the plan's training rows (conversational
prompt/completion, the first num_examples rows of the pool for dataset.seed), train in a child process
(bench/child_train.py = mlintern.training.runner with report_to="none"), then score dev in this process.
Scoring: lm-eval is not on the GPU machine, so this is batched greedy HF generate on the chat-templated
question + "\nGive only the final answer." (max 24 new tokens, stop at "\n\n" / <|im_end|> / </s>, first
line) scored by reasoning-gym's own score_answer (copied in bench/rg_data.py and checked against the
project's scorer). The held-out test set is scored once per arm (its final model) and once for the base.

Timestamps of every phase (planning, data, child start, imports, trainer build, train loop, save,
eval load, eval generate) go to the JSON report: GPU-busy = train loop + eval generate; the rest is idle.

Usage: python bench/research_efficiency.py --model DIR --data .wheels/rgdata --work /tmp/rx --out rx.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = os.environ.get("BENCH_SRC") or str(ROOT)  # a frozen copy of mlintern (bench/stage.sh), else this checkout
sys.path.insert(0, SRC)
sys.path.insert(0, str(ROOT / "bench"))

from rg_data import PROMPT_SUFFIX, score_prediction  # noqa: E402

from mlintern.loop import LoopState  # noqa: E402
from mlintern.planners.search import SearchPlanner  # noqa: E402
from mlintern.schemas import (  # noqa: E402
    BenchmarkSpec, Budget, EvalScore, ExperimentPlan, ExperimentResult, Failure, FailureKind, Goal, PlanningContext,
    StopRule,
)
from mlintern.training.job import TrainJob, TrainOutcome  # noqa: E402


def now() -> float:
    return time.time()


class Evaluator:
    """Batched greedy generation + reasoning-gym scorer (stands in for lm-eval, absent on the device)."""

    def __init__(self, tokenizer_dir: str, device: str, batch_size: int = 512, max_new_tokens: int = 24):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.device, self.bs, self.max_new = device, batch_size, max_new_tokens

    def prompts(self, rows):
        return [self.tok.apply_chat_template([{"role": "user", "content": r["question"] + PROMPT_SUFFIX}],
                                             add_generation_prompt=True, tokenize=False) for r in rows]

    def __call__(self, model_path: str, rows: list[dict], task: str) -> tuple[EvalScore, dict]:
        import torch
        from transformers import AutoModelForCausalLM

        t0 = now()
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        if self.device == "cuda":
            torch.cuda.synchronize()
        t1 = now()
        scores = []
        prompts = self.prompts(rows)
        with torch.no_grad():
            for i in range(0, len(rows), self.bs):
                enc = self.tok(prompts[i:i + self.bs], return_tensors="pt", padding=True,
                               add_special_tokens=False).to(self.device)
                out = model.generate(**enc, max_new_tokens=self.max_new, do_sample=False,
                                     pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id)
                texts = self.tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=False)
                scores += [score_prediction(t, r["answer"]) for t, r in zip(texts, rows[i:i + self.bs])]
        if self.device == "cuda":
            torch.cuda.synchronize()
        t2 = now()
        del model
        if self.device == "cuda":
            torch.cuda.empty_cache()
        n = len(scores)
        value = sum(scores) / n
        var = sum((s - value) ** 2 for s in scores) / max(n - 1, 1)
        stderr = math.sqrt(var / n) if var > 0 else math.sqrt(max(value * (1 - value), 1e-9) / n)
        return (EvalScore(task=task, metric="score", value=value, stderr=stderr, n=n),
                {"eval_load_s": t1 - t0, "eval_gen_s": t2 - t1, "eval_gen_begin": t1, "eval_gen_end": t2})


class Lab:
    def __init__(self, args):
        self.args = args
        self.data = Path(args.data)
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.dev = [json.loads(line) for line in (self.data / "dev.jsonl").read_text().splitlines()][: args.dev_n]
        self.test = [json.loads(line) for line in (self.data / "test.jsonl").read_text().splitlines()][: args.test_n]
        self.pools = {}
        self.evaluator = Evaluator(args.model, args.device)
        self.records: list[dict] = []
        self.cache: dict[tuple, ExperimentResult] = {}

    def pool(self, seed: int) -> list[dict]:
        if seed not in self.pools:
            f = self.data / f"train_s{seed}.jsonl"
            if not f.exists():
                raise FileNotFoundError(f"no training pool for dataset.seed={seed} ({f})")
            self.pools[seed] = [json.loads(line) for line in f.read_text().splitlines()]
        return self.pools[seed]

    def write_data(self, plan: ExperimentPlan, path: Path) -> int:
        rows = self.pool(plan.dataset.seed)[: plan.dataset.num_examples]
        path.write_text("".join(json.dumps({
            "prompt": [{"role": "user", "content": r["question"] + PROMPT_SUFFIX}],
            "completion": [{"role": "assistant", "content": r["answer"]}],
        }) + "\n" for r in rows))
        return len(rows)

    def experiment(self, goal: Goal, plan: ExperimentPlan, init_model: str, tag: str) -> ExperimentResult:
        """flows/experiment.py without Prefect/MLflow: data -> child-process training -> dev eval."""
        rec = {"tag": tag, "plan_id": plan.plan_id(), "init": "base" if init_model == self.args.model else "champion",
               "plan": plan.model_dump(mode="json", include={"hyperparameters", "dataset", "init_from"}),
               "t_start": now()}
        key = (plan.plan_id(), init_model, goal.seed, goal.device)
        if key in self.cache:
            # b, c and d share their first plans (TPE's 3 startup trials are the random sampler's draws with the
            # same seeds): the same plan from the same weights with the same seed is not trained twice; the
            # cached result keeps its accelerator_hours, so every arm is charged the full GPU cost.
            cached = self.cache[key]
            rec.update(cached=True, t_end=now(), status=cached.status, dev=cached.dev.value if cached.dev else None,
                       train_seconds=cached.train_seconds, eval_seconds=cached.eval_seconds)
            self.records.append(rec)
            print(f"  [{tag}] {plan.plan_id()} cached (same plan, init and seed as an earlier run) dev={rec['dev']}",
                  flush=True)
            return cached.model_copy()
        out_dir = self.work / f"s{goal.seed}" / f"{plan.plan_id()}_{rec['init']}_{len(self.records)}"
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        result = ExperimentResult(plan_id=plan.plan_id(), plan=plan, status="failed")
        data_path = out_dir / "train.jsonl"
        rec["rows"] = self.write_data(plan, data_path)
        job = TrainJob(plan=plan, model_path=init_model, data_path=str(data_path), output_dir=str(out_dir),
                       device=goal.device, seed=goal.seed)
        (out_dir / "job.json").write_text(job.model_dump_json())
        rec["t_spawn"] = now()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
        times_path = out_dir / "times.json"
        with open(out_dir / "train.log", "wb") as log:
            proc = subprocess.run([sys.executable, str(ROOT / "bench" / "child_train.py"), str(out_dir / "job.json"),
                                   str(out_dir / "outcome.json"), str(times_path)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, timeout=self.args.child_timeout)
        rec["t_child_exit"] = now()
        rec["child_rc"] = proc.returncode
        rec["child"] = json.loads(times_path.read_text()) if times_path.exists() else {}
        if (out_dir / "outcome.json").exists():
            outcome = TrainOutcome.model_validate_json((out_dir / "outcome.json").read_text())
        else:
            tail = (out_dir / "train.log").read_bytes()[-3000:].decode(errors="replace")
            outcome = TrainOutcome(status="failed", failure=Failure(kind=FailureKind.crash, message=tail[-500:]))
        result.train_seconds = outcome.train_seconds
        result.train_loss = outcome.train_loss
        result.failure = outcome.failure
        if outcome.status == "succeeded":
            t = now()
            result.dev, ev = self.evaluator(outcome.model_path, self.dev, "dev")
            result.eval_seconds = now() - t
            result.model_path = outcome.model_path
            result.status = "succeeded"
            rec.update(ev)
        else:
            print(f"  [{tag}] plan {plan.plan_id()} FAILED: {outcome.failure.kind.value}: "
                  f"{outcome.failure.message[:300]}", flush=True)
            print((out_dir / "train.log").read_bytes()[-2000:].decode(errors="replace"), flush=True)
        result.accelerator_hours = (result.train_seconds + result.eval_seconds) / 3600
        rec.update(t_end=now(), status=result.status, dev=result.dev.value if result.dev else None,
                   train_seconds=result.train_seconds, eval_seconds=result.eval_seconds, loss=result.train_loss)
        self.records.append(rec)
        self.cache[key] = result
        hp = plan.hyperparameters
        print(f"  [{tag}] {plan.plan_id()} {result.status} lr={hp.learning_rate:.2e} steps={hp.max_steps} "
              f"bs={hp.per_device_batch_size} lora={hp.lora.enabled} n={plan.dataset.num_examples} init={rec['init']} "
              f"dev={rec['dev']} loss={result.train_loss} acc_s={result.accelerator_hours * 3600:.1f} "
              f"wall={rec['t_end'] - rec['t_start']:.1f}s", flush=True)
        return result

    def cleanup_seed(self, seed: int) -> None:
        shutil.rmtree(self.work / f"s{seed}", ignore_errors=True)
        self.cache = {k: v for k, v in self.cache.items() if k[2] != seed}


def make_goal(args, seed: int, policy: str) -> Goal:
    stop = StopRule() if policy == "loop" else StopRule(patience=100, noise_z=0.0)
    return Goal(benchmark=BenchmarkSpec(dev_size=max(5, args.dev_n), test_size=max(5, args.test_n)),
                budget=Budget(max_experiments=args.max_experiments, gpu_hours=args.gpu_budget_s / 3600,
                              wall_time_minutes=24 * 60),
                stop=stop, device=args.device, seed=seed, planner="search", use_literature=False)


def run_search_arm(lab: Lab, goal: Goal, base_dev: EvalScore, sampler: str, chaining: bool, tag: str,
                   deadline: float) -> tuple[LoopState, dict]:
    """plan_round + run_experiments + record from flows/research_loop.py (width 1), timed."""
    planner = SearchPlanner(sampler=sampler)
    state = LoopState(goal=goal, baseline=base_dev)
    t_arm = now()
    plan_s, book_s = [], []
    reason = None
    while (reason := state.stop_reason()) is None:
        if now() > deadline:
            reason = "bench deadline (arm truncated)"
            break
        t0 = now()
        pending = state.pending_failure()
        ctx = PlanningContext(goal=goal, metric="score", baseline=state.baseline, history=state.history,
                              champion=state.champion, experiments_left=state.experiments_left,
                              hours_left=state.hours_left, literature=[],
                              failure=pending[0] if pending else None, failure_plan=pending[1] if pending else None)
        plan = planner.propose(ctx)
        if not chaining and plan.init_from != "base":
            plan = plan.model_copy(update={"init_from": "base"})
        plan_s.append(now() - t0)
        init_model = (state.champion.model_path if chaining and plan.init_from == "champion" and state.champion
                      else lab.args.model)
        result = lab.experiment(goal, plan, init_model, tag)
        t1 = now()
        promoted = state.record(result)
        book_s.append(now() - t1)
        if promoted:
            print(f"  [{tag}] new champion {result.plan_id}: dev {result.dev.value:.4f}", flush=True)
    return state, {"stop_reason": reason, "wall_s": now() - t_arm, "plan_s": plan_s, "bookkeeping_s": book_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF folder of SmolLM2-135M-Instruct (or a stand-in)")
    ap.add_argument("--data", default=str(ROOT / ".wheels" / "rgdata"))
    ap.add_argument("--work", default="/tmp/rx")
    ap.add_argument("--out", default="rx.json")
    ap.add_argument("--arms", default="a,d,c,b")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--gpu-budget-s", type=float, default=75.0)
    ap.add_argument("--max-experiments", type=int, default=12)
    ap.add_argument("--dev-n", type=int, default=100)
    ap.add_argument("--test-n", type=int, default=500)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="stop starting work after this many seconds")
    ap.add_argument("--child-timeout", type=float, default=300.0)
    ap.add_argument("--base-test", type=float, default=None, help="reuse a base test score measured earlier")
    ap.add_argument("--base-dev", type=float, default=None)
    args = ap.parse_args()
    t_begin = now()
    deadline = t_begin + args.deadline_s
    lab = Lab(args)
    report = {"args": vars(args), "arms": {}, "started": t_begin}
    out = Path(args.out)

    def save():
        report["records"] = lab.records
        report["elapsed_s"] = now() - t_begin
        out.write_text(json.dumps(report, indent=1, default=str))

    if args.base_dev is not None:
        base_dev = EvalScore(task="dev", metric="score", value=args.base_dev, n=args.dev_n,
                             stderr=math.sqrt(max(args.base_dev * (1 - args.base_dev), 1e-9) / args.dev_n))
        base_test = EvalScore(task="test", metric="score", value=args.base_test, n=args.test_n)
    else:
        base_dev, ev = lab.evaluator(args.model, lab.dev, "dev")
        base_test, ev2 = lab.evaluator(args.model, lab.test, "test")
        report["base_eval_timing"] = [ev, ev2]
    report["base"] = {"dev": base_dev.model_dump(), "test": base_test.model_dump()}
    print(f"base: dev {base_dev.value:.4f} (n={base_dev.n}), test {base_test.value:.4f} (n={base_test.n})", flush=True)
    save()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            tag = f"{arm}_s{seed}"
            if now() > deadline:
                report["arms"][tag] = {"status": "not run (bench deadline)"}
                continue
            print(f"== arm {tag}", flush=True)
            t_arm = now()
            info: dict = {}
            if arm == "a":
                goal = make_goal(args, seed, "search")
                result = lab.experiment(goal, ExperimentPlan(init_from="base"), args.model, tag)
                history, final = [result], result if result.status == "succeeded" else None
                info = {"stop_reason": "single run", "wall_s": now() - t_arm, "plan_s": [0.0], "bookkeeping_s": [0.0]}
            else:
                sampler = "random" if arm == "b" else "tpe"
                policy = "loop" if arm == "d" else "search"
                goal = make_goal(args, seed, policy)
                state, info = run_search_arm(lab, goal, base_dev, sampler, arm == "d", tag, deadline)
                history, final = state.history, state.champion
            if final is not None:
                test, ev = lab.evaluator(final.model_path, lab.test, "test")
                info["final_test_eval"] = ev
            else:
                test = base_test  # nothing promoted: the deliverable is the base model
            acc_s = sum(r.accelerator_hours for r in history) * 3600
            report["arms"][tag] = dict(
                info, status="done", arm=arm, seed=seed, experiments=len(history),
                failed=sum(r.status == "failed" for r in history), accelerator_s=acc_s,
                final_plan=final.plan_id if final else None, final_dev=final.dev.value if final else None,
                test=test.value, test_stderr=test.stderr, gain=test.value - base_test.value,
                truncated=info.get("stop_reason", "").startswith("bench deadline"))
            print(f"== {tag}: {len(history)} experiments, acc {acc_s:.0f}s, wall {info['wall_s']:.0f}s, "
                  f"stop: {info['stop_reason']}; final {report['arms'][tag]['final_plan']} test {test.value:.4f} "
                  f"gain {test.value - base_test.value:+.4f}", flush=True)
            save()
        lab.cleanup_seed(seed)
    summarize(report)
    save()


def summarize(report: dict) -> None:
    """Gain table and the orchestration-overhead breakdown (part 3)."""
    arms = {k: v for k, v in report["arms"].items() if v.get("status") == "done"}
    recs = report.get("records", [])
    print("\narm     exps fail acc_s  wall_s  test    gain    ratio_vs_a  stop")
    for tag, a in arms.items():
        ga = arms.get(f"a_s{a['seed']}", {}).get("gain")
        ratio = (a["gain"] / ga) if ga not in (None, 0) else float("nan")
        print(f"{tag:7s} {a['experiments']:4d} {a['failed']:4d} {a['accelerator_s']:6.0f} {a['wall_s']:7.0f} "
              f"{a['test']:.4f} {a['gain']:+.4f} {ratio:10.2f}  {a['stop_reason']}")
    # part 3: per-experiment phase breakdown from timestamps
    phases = {k: [] for k in ("plan+book", "data", "proc_start", "imports", "build", "train_loop", "save",
                              "proc_exit", "eval_load", "eval_gen", "total")}
    busy = wall = 0.0
    for tag, a in arms.items():
        wall += a["wall_s"]
        for p, b in zip(a.get("plan_s", []), a.get("bookkeeping_s", [])):
            phases["plan+book"].append(p + b)
    for r in recs:
        if r.get("cached"):
            continue
        c = r.get("child", {})
        phases["data"].append(r["t_spawn"] - r["t_start"])
        if c:
            phases["proc_start"].append(c["proc_start"] - r["t_spawn"])
            phases["imports"].append(c["imports_done"] - c["proc_start"])
            if "build_end" in c:
                phases["build"].append(c["build_end"] - c["build_begin"])
            if "train_end" in c:
                phases["train_loop"].append(c["train_end"] - c["train_begin"])
                busy += c["train_end"] - c["train_begin"]
            if "save_end" in c:
                phases["save"].append(c["save_end"] - c["save_begin"])
            phases["proc_exit"].append(r["t_child_exit"] - c.get("proc_end", c.get("save_end", r["t_child_exit"])))
        if "eval_gen_s" in r:
            phases["eval_load"].append(r["eval_load_s"])
            phases["eval_gen"].append(r["eval_gen_s"])
            busy += r["eval_gen_s"]
        phases["total"].append(r["t_end"] - r["t_start"])
    for a in arms.values():
        if "final_test_eval" in a:
            busy += a["final_test_eval"]["eval_gen_s"]
    print("\nphase (per experiment, seconds)   mean    sum")
    for k, v in phases.items():
        if v:
            print(f"  {k:30s} {sum(v) / len(v):6.2f} {sum(v):7.1f}")
    if wall:
        print(f"\nGPU busy (train loop + eval generate) {busy:.1f}s of {wall:.1f}s arm wall time: "
              f"GPU idle {100 * (1 - busy / wall):.1f}% of the loop's wall clock")
    report["overhead"] = {"phases_mean_s": {k: (sum(v) / len(v) if v else None) for k, v in phases.items()},
                          "phases_sum_s": {k: sum(v) for k, v in phases.items()},
                          "gpu_busy_s": busy, "arms_wall_s": wall,
                          "gpu_idle_fraction": (1 - busy / wall) if wall else None}


if __name__ == "__main__":
    main()

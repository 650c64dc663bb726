"""Tokens/s and MFU of the project's SFT step (trl SFTTrainer) vs trl's defaults, same data, same call.

Models (random weights, fp32 master weights + bf16 autocast in every variant):
  smollm2-135m  LlamaConfig of SmolLM2-135M (hidden 576, 30 layers, 9 heads / 3 kv, inter 1536, vocab 49152, tied)
  qwen3-1.7b    the published Qwen3-1.7B config (hidden 2048, 28 layers, 16 heads / 8 kv, head_dim 128,
                inter 6144, vocab 151936, tied, rope_theta 1e6)
Data: synthetic conversational prompt/completion rows (trl's prompt-completion format, chat template of
the SmolLM2 tokenizer), total length uniform in 64..1024 tokens, prompt share uniform in 10..50%.
Tokens counted = real (non-pad) tokens of the batches of the timed steps (from the collator's output).

Variants (SFTConfig; all: max_length=1024, report_to none, save_strategy no):
  trl_defaults       SFTConfig() defaults: batch 8, padded, gradient_checkpointing=True, logging_steps=10
  project_now        mlintern.training.common.base_args(job) + completion_only_loss=True, as sft.py builds it
                     (batch 8, padded, no checkpointing, logging_steps=1)
  +packing           project_now + packing=True (bfd => padding-free, position_ids, block-causal mask)
  +packing+liger     ... + use_liger_kernel=True (Liger RMSNorm/SwiGLU/RoPE Triton kernels)
  +packing+liger+bsN ... + larger per-device batch
  (+compile)         ... + torch_compile=True   (only with --compile)
MFU = useful model FLOPs / time / peak, useful FLOPs per step = 6*N_layers_matmul*real_tokens
  + 6*N_lm_head*label_tokens (trl's fused LM head only projects positions with a label)
  + 6*n_layers*n_heads*head_dim*sum(seq_len^2) (causal attention, fwd+bwd), recompute not counted.
Peak: the bf16 8192^3 matmul rate measured in the same process, and the datasheet dense bf16 peak.

Usage: python bench/throughput.py [--models smollm2-135m,qwen3-1.7b] [--out tp.json] [--cpu-test]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("BENCH_SRC") or str(ROOT))

QWEN3_1_7B = {  # https://huggingface.co/Qwen/Qwen3-1.7B/blob/main/config.json
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
    "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": None, "tie_word_embeddings": True, "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "intermediate_size": 1536,
    "vocab_size": 49152, "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 100000,
    "rms_norm_eps": 1e-5, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    "attention_bias": False, "mlp_bias": False,
}
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 49152,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
DATASHEET_BF16_DENSE = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "H20": 148e12, "A100": 312e12}


def log(*a):
    print(*a, flush=True)


def measure_matmul(n: int = 8192, reps: int = 30) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / times[len(times) // 2]


def datasheet_peak(name: str) -> float | None:
    for key in ("H100 PCIe", "H200", "H100", "H20", "A100"):
        if key in name:
            return DATASHEET_BF16_DENSE[key]
    return None


def packed_equivalence(cfg_dict: dict, device: str, attn: str = "sdpa") -> float:
    """Max |logit difference| between two sequences run separately and packed padding-free in one row
    (position_ids restart at 0, no attention_mask): ~0 means the attention kept the sequences apart."""
    import torch

    model = build_model(cfg_dict, device)
    model.config._attn_implementation = attn
    model.eval()
    g = torch.Generator().manual_seed(0)
    a = torch.randint(3, 1000, (1, 100), generator=g).to(device)
    b = torch.randint(3, 1000, (1, 150), generator=g).to(device)
    with torch.no_grad():
        la = model(input_ids=a).logits
        lb = model(input_ids=b).logits
        pos = torch.cat([torch.arange(100), torch.arange(150)])[None].to(device)
        lp = model(input_ids=torch.cat([a, b], dim=1), position_ids=pos, use_cache=False).logits
    diff = max((lp[:, :100] - la).abs().max().item(), (lp[:, 100:] - lb).abs().max().item())
    del model
    return diff


def synthetic_rows(tok, n: int, seed: int = 0, lo: int = 64, hi: int = 1024) -> list[dict]:
    """Chat rows whose tokenized length (template included) is roughly uniform in [lo, hi]."""
    rnd = random.Random(seed)
    words = [t[1:] for t in tok.get_vocab() if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower()
             and len(t) > 3]
    words.sort()
    overhead = len(tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                                           tokenize=True))
    rows = []
    for _ in range(n):
        total = rnd.randint(lo, hi) - overhead
        p = max(4, int(total * rnd.uniform(0.1, 0.5)))
        c = max(4, total - p)
        rows.append({"prompt": [{"role": "user", "content": " ".join(rnd.choices(words, k=p))}],
                     "completion": [{"role": "assistant", "content": " ".join(rnd.choices(words, k=c))}]})
    return rows


def build_model(cfg_dict: dict, device: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**cfg_dict)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model


def count_params(model) -> tuple[int, int]:
    """(matmul params inside the decoder layers, LM-head params)."""
    import torch

    body = sum(m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in n)
    head = model.get_output_embeddings().weight.numel()
    return body, head


class StepClock:
    """TrainerCallback: wall time at each step end (after a device sync), and a deadline stop."""

    def __new__(cls, deadline: float, cuda: bool):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self):
                self.ends: list[float] = []
                self.t0 = None

            def on_train_begin(self, args, state, control, **kw):
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if cuda:
                    import torch

                    torch.cuda.synchronize()
                self.ends.append(time.perf_counter())
                if time.time() > deadline:
                    control.should_training_stop = True

        return _Clock()


def wrap_collator(trainer) -> list[dict]:
    """Record real tokens, label tokens and sum(seq_len^2) of every batch, in order."""
    import torch

    stats: list[dict] = []
    inner = trainer.data_collator

    def collate(features):
        b = inner(features)
        if "attention_mask" in b:
            lens = b["attention_mask"].sum(dim=1).tolist()
        elif "cu_seq_lens_q" in b:
            lens = torch.diff(b["cu_seq_lens_q"]).tolist()
        else:  # padding-free without boundaries: one sequence per row
            lens = [b["input_ids"].shape[1]] * b["input_ids"].shape[0]
        labels = int((b["labels"][:, 1:] != -100).sum())
        stats.append({"real": int(sum(lens)), "labels": labels, "sq": float(sum(x * x for x in lens)),
                      "shape": list(b["input_ids"].shape)})
        return b

    trainer.data_collator = collate
    return stats


def followup_configs(model_name: str) -> list[tuple[str, dict]]:
    """Second round: padded batches with Liger, length grouping, bigger batches, and flex attention for
    padding-free packing (sdpa gets a dense bs*1024-square block mask there)."""
    big = 32 if model_name == "smollm2-135m" else 16
    lg = {"use_liger_kernel": True}
    return [("trl_defaults", {"_defaults": True}),
            ("project_now", {}),
            ("+liger", dict(lg)),
            ("+liger+group_by_length", dict(lg, group_by_length=True)),
            (f"+liger+group_by_length+bs{big}", dict(lg, group_by_length=True, per_device_train_batch_size=big)),
            ("+packing+liger+flex", dict(lg, packing=True, _attn="flex_attention")),
            (f"+packing+liger+flex+bs{big}", dict(lg, packing=True, _attn="flex_attention",
                                                  per_device_train_batch_size=big))]


def variant_configs(model_name: str, cpu: bool, compile_: bool, big_mem: bool) -> list[tuple[str, dict]]:
    big_bs = 32 if model_name == "smollm2-135m" else (16 if big_mem else 12)
    v = [("trl_defaults", {"_defaults": True}),
         ("project_now", {}),
         ("+packing", {"packing": True})]
    if not cpu:
        v += [("+packing+liger", {"packing": True, "use_liger_kernel": True}),
              (f"+packing+liger+bs{big_bs}", {"packing": True, "use_liger_kernel": True,
                                              "per_device_train_batch_size": big_bs})]
        if compile_:
            v.append((f"+packing+liger+bs{big_bs}+compile", {"packing": True, "use_liger_kernel": True,
                                                             "per_device_train_batch_size": big_bs,
                                                             "torch_compile": True}))
    return v


def run_variant(name: str, extra: dict, cfg_dict: dict, rows: list[dict], tok, steps: int, warm: int,
                deadline: float, cpu: bool, flops: dict) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mlintern.schemas import ExperimentPlan, Hyperparameters
    from mlintern.training.common import base_args
    from mlintern.training.job import TrainJob

    extra = dict(extra)
    defaults = extra.pop("_defaults", False)
    attn = extra.pop("_attn", None)
    common = dict(output_dir=f"/tmp/tp_{name}", max_steps=steps, report_to="none", save_strategy="no",
                  disable_tqdm=True, max_length=1024, seed=0)
    if defaults:
        kw = dict(common)
        if cpu:
            kw.update(use_cpu=True, bf16=False)
    else:
        job = TrainJob(plan=ExperimentPlan(hyperparameters=Hyperparameters(
            max_steps=steps, per_device_batch_size=8, max_length=1024)),
            model_path="unused", data_path="unused", output_dir=common["output_dir"],
            device="cpu" if cpu else "cuda")
        kw = dict(base_args(job), **common)
        kw.update(completion_only_loss=True, run_name=None)
    if extra.pop("group_by_length", False):  # renamed in transformers 5.x
        if "train_sampling_strategy" in SFTConfig.__dataclass_fields__:
            extra["train_sampling_strategy"] = "group_by_length"
        else:
            extra["group_by_length"] = True
    kw.update(extra)
    args = SFTConfig(**kw)
    bs = args.per_device_train_batch_size
    need = steps * bs * (3 if args.packing else 1) + 64
    ds = Dataset.from_list(rows[:need])
    t0 = time.time()
    model = build_model(dict(cfg_dict, _attn_implementation=attn) if attn else cfg_dict, "cpu" if cpu else "cuda")
    clock = StepClock(deadline, not cpu)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[clock])
    stats = wrap_collator(trainer)
    t_build = time.time() - t0
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    err = None
    try:
        trainer.train()
    except torch.OutOfMemoryError as e:  # recorded, the next variant goes on
        err = f"OOM: {str(e)[:200]}"
    n = len(clock.ends)
    res = {"variant": name, "batch": bs, "attn": model.config._attn_implementation, "packing": bool(args.packing), "liger": bool(args.use_liger_kernel),
           "grad_ckpt": bool(args.gradient_checkpointing), "logging_steps": args.logging_steps,
           "compile": bool(args.torch_compile), "build_s": t_build, "steps_done": n, "error": err,
           "peak_mem_gib": (torch.cuda.max_memory_allocated() / 2**30) if not cpu else None}
    if n > warm + 1:
        dt = clock.ends[-1] - clock.ends[warm - 1]
        timed = stats[warm:n]
        real = sum(s["real"] for s in timed)
        labels = sum(s["labels"] for s in timed)
        sq = sum(s["sq"] for s in timed)
        padded = sum(s["shape"][0] * s["shape"][1] for s in timed)
        f = 6 * flops["body"] * real + 6 * flops["head"] * labels + 6 * flops["attn"] * sq
        res.update(timed_steps=n - warm, seconds=dt, real_tokens=real, tokens_per_s=real / dt,
                   pad_fraction=1 - real / padded, step_s=dt / (n - warm), model_tflops=f / dt / 1e12,
                   mfu_measured=(f / dt / flops["measured_peak"]) if flops.get("measured_peak") else None,
                   mfu_datasheet=(f / dt / flops["datasheet_peak"]) if flops.get("datasheet_peak") else None)
    del trainer, model, ds
    gc.collect()
    if not cpu:
        torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2-135m,qwen3-1.7b")
    ap.add_argument("--tokenizer", default=str(ROOT / ".wheels" / "tok"))
    ap.add_argument("--out", default="tp.json")
    ap.add_argument("--cpu-test", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--followup", action="store_true", help="the second-round variant set")
    ap.add_argument("--budget-s", type=float, default=400, help="stop starting/continuing variants after this")
    ap.add_argument("--variant-s", type=float, default=70, help="max training seconds per variant")
    ap.add_argument("--len-range", default="64,1024", help="token length range of the synthetic rows")
    args = ap.parse_args()
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer

    t_begin = time.time()
    cpu = args.cpu_test
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        import liger_kernel  # noqa: F401
        from importlib.metadata import version

        info["liger_kernel"] = version("liger-kernel")
    except Exception as e:  # noqa: BLE001
        info["liger_kernel"] = f"unavailable: {e}"
    if not cpu:
        name = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=name, gpu_mem_gib=props.total_memory / 2**30, sms=props.multi_processor_count)
        info["matmul_bf16_tflops"] = measure_matmul() / 1e12
        info["datasheet_bf16_tflops"] = (datasheet_peak(name) or 0) / 1e12
        log(f"GPU {name}: measured bf16 8192^3 matmul {info['matmul_bf16_tflops']:.0f} TFLOP/s; "
            f"datasheet dense bf16 {info['datasheet_bf16_tflops']:.0f}")
    log(json.dumps(info))
    eq_cfg = SMOLLM2_135M if not cpu else TINY
    info["packed_vs_separate_max_logit_diff"] = packed_equivalence(eq_cfg, "cpu" if cpu else "cuda")
    log(f"padding-free packing check (sdpa, fp32): max |logit diff| packed vs separate = "
        f"{info['packed_vs_separate_max_logit_diff']:.2e}")
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    lo, hi = (int(x) for x in args.len_range.split(","))
    info["len_range"] = [lo, hi]
    rows = synthetic_rows(tok, 3000 if not cpu else 200, lo=lo, hi=hi)
    report = {"info": info, "results": []}
    out = Path(args.out)
    cfgs = {"smollm2-135m": SMOLLM2_135M, "qwen3-1.7b": QWEN3_1_7B, "tiny": TINY}
    for mname in args.models.split(","):
        cfg = cfgs[mname]
        m = build_model(cfg, "meta")
        body, head = count_params(m)
        total = sum(p.numel() for p in m.parameters())
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        flops = {"body": body, "head": head, "attn": cfg["num_hidden_layers"] * cfg["num_attention_heads"] * hd,
                 "measured_peak": info.get("matmul_bf16_tflops", 0) * 1e12 or None,
                 "datasheet_peak": info.get("datasheet_bf16_tflops", 0) * 1e12 or None}
        del m
        log(f"== {mname}: {total / 1e6:.1f}M params ({body / 1e6:.1f}M layer matmuls, {head / 1e6:.1f}M LM head)")
        big = info.get("gpu_mem_gib", 0) > 100
        steps, warm = (33, 3) if mname != "qwen3-1.7b" else (15, 3)
        if cpu:
            steps, warm = 4, 1
        vset = followup_configs(mname) if args.followup else variant_configs(mname, cpu, args.compile, big)
        for vname, extra in vset:
            if time.time() - t_begin > args.budget_s:
                report["results"].append({"model": mname, "variant": vname, "error": "not run: time budget"})
                continue
            deadline = min(time.time() + args.variant_s, t_begin + args.budget_s + 30)
            try:
                r = run_variant(vname, extra, cfg, rows, tok, steps, warm, deadline, cpu, flops)
            except Exception as e:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                r = {"variant": vname, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                gc.collect()
                if not cpu:
                    torch.cuda.empty_cache()
            r["model"] = mname
            report["results"].append(r)
            out.write_text(json.dumps(report, indent=1))
            if "tokens_per_s" in r:
                log(f"  {vname:34s} bs={r['batch']:3d} {r['tokens_per_s']:10.0f} tok/s  pad {r['pad_fraction']:.0%}  "
                    f"{r['model_tflops']:6.1f} TFLOP/s  MFU {100 * (r['mfu_measured'] or 0):5.1f}% of measured, "
                    f"{100 * (r['mfu_datasheet'] or 0):5.1f}% of datasheet  mem {r['peak_mem_gib'] or 0:.1f} GiB  "
                    f"({r['timed_steps']} steps)")
            else:
                log(f"  {vname}: {r.get('error')} steps_done={r.get('steps_done')}")
    # summary: ratios vs trl defaults of the same model
    log("\nmodel         variant                              tok/s   x_trl_default  MFU(meas)  MFU(sheet)")
    for mname in args.models.split(","):
        rs = [r for r in report["results"] if r["model"] == mname]
        base = next((r.get("tokens_per_s") for r in rs if r["variant"] == "trl_defaults"), None)
        for r in rs:
            if "tokens_per_s" in r:
                r["x_vs_trl_defaults"] = r["tokens_per_s"] / base if base else None
                log(f"{mname:13s} {r['variant']:34s} {r['tokens_per_s']:9.0f}  {r['x_vs_trl_defaults'] or 0:12.2f}"
                    f"  {100 * (r['mfu_measured'] or 0):8.1f}%  {100 * (r['mfu_datasheet'] or 0):8.1f}%")
    report["elapsed_s"] = time.time() - t_begin
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

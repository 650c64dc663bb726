"""Load the model and tokenizer a job starts from, once per process where a cache is given.

Training always starts from fp32 master weights (bf16 autocast on a GPU): a checkpoint saved in
bf16 is upcast, so small updates are not lost to bf16 rounding. The persistent worker keeps the
last few models it loaded on the CPU and hands each job a copy, so a loop that restarts from the
base model or the champion pays the disk read once.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)


def _stamp(path: str) -> tuple:
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("config.json")) if p.is_dir() else []
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)


class ModelCache:
    """path -> (fp32 CPU model, tokenizer); at most `size` entries, least recently used first out."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: OrderedDict[tuple, tuple] = OrderedDict()
        self.hits = 0

    def get(self, path: str, attn_implementation: str | None):
        key = (path, attn_implementation, _stamp(path))
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            model, tok = self._items[key]
            return copy.deepcopy(model), tok
        model, tok = _load(path, attn_implementation)
        self._items[key] = (model, tok)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return copy.deepcopy(model), tok


def _load(path: str, attn_implementation: str | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_for_training(path: str, attn_implementation: str | None = None, cache: ModelCache | None = None):
    """A fresh fp32 model (on the CPU; the trainer moves it) and its tokenizer."""
    if cache is not None:
        return cache.get(path, attn_implementation)
    return _load(path, attn_implementation)

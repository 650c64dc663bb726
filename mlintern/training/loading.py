"""Load the model and tokenizer a job starts from, once per process where a cache is given.

Training always starts from fp32 master weights (bf16 autocast on a GPU): a checkpoint saved in
bf16 is upcast, so small updates are not lost to bf16 rounding. The persistent worker keeps the
last few models it loaded and hands each job a copy, so a loop that restarts from the base model
or the champion pays the disk read once. On a GPU the kept model lives on the GPU when it is small
(a copy there is a device-to-device clone): measured on an H200, a copy of SmolLM2-135M kept on the
CPU took 2.0-2.2 s per job, four times the 0.5 s of loading it from the page-cached disk.
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


GPU_SHARE = 0.05  # a kept model stays on the GPU if its weights take at most this share of its memory


class ModelCache:
    """path -> (fp32 model, tokenizer); at most `size` entries, least recently used first out.
    A kept model is placed on `device` (the worker's GPU) when its weights take at most GPU_SHARE
    of that GPU's memory, else it stays on the CPU."""

    def __init__(self, size: int = 2, device: str | None = None):
        self.size = size
        self.device = device
        self._items: OrderedDict[tuple, tuple] = OrderedDict()
        self.hits = 0

    def get(self, path: str, attn_implementation: str | None):
        key = (path, attn_implementation, _stamp(path))
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
        else:
            self.load(path, attn_implementation)
        model, tok = self._items[key]
        return copy.deepcopy(model), tok

    def load(self, path: str, attn_implementation: str | None) -> None:
        """Read `path` into the cache unless it is there already (a warm-up ahead of the job)."""
        key = (path, attn_implementation, _stamp(path))
        if key in self._items:
            return
        model, tok = _load(path, attn_implementation)
        self._items[key] = (_place(model, self.device), tok)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def _place(model, device: str | None):
    """`model` on `device` if that is a GPU with room to spare (see GPU_SHARE), else unchanged."""
    if not device or not device.startswith("cuda"):
        return model
    import torch

    if not torch.cuda.is_available():
        return model
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    return model.to(device) if weights <= GPU_SHARE * total else model


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

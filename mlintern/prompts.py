"""Prompt templates live in agent_prompts/ as Jinja2 files; this module only renders them.

mlintern/agent_prompts is a link to the top-level agent_prompts/, so the templates are package
data: a wheel carries copies of them, and an editable checkout reads them in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

PROMPT_DIR = Path(__file__).parent / "agent_prompts"

_env = Environment(
    loader=FileSystemLoader(str(PROMPT_DIR)),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def render(name: str, **context: Any) -> str:
    """Render agent_prompts/<name>.j2 with the given context (missing variables raise)."""
    return _env.get_template(f"{name}.j2").render(**context)

"""Prompt pools for stage 3: the prompts rolled out (and the held-out ones evaluated), each with reward metadata.

A pool is read by a loader registered under a format name (:func:`register_prompt_source`); ``jsonl`` is built in,
and a project adds its own on import (DeepGen-nano's shape world registers ``world`` in
:mod:`deepgen.nano.prompts`).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from .grpo_config import PromptSourceConfig
from .registry import registrar


@dataclass
class Prompt:
    text: str
    metadata: dict[str, Any]
    images: list[Image.Image] = field(default_factory=list)  # edit sources (empty for text-to-image)


# ``loader(path, size, **options) -> list[Prompt]``; edit sources at ``size`` x ``size`` where the format renders.
PromptLoader = Callable[..., list[Prompt]]
PROMPT_SOURCES: dict[str, PromptLoader] = {}


# Decorator: ``@register_prompt_source(name)`` makes ``loader(path, size, **options) -> list[Prompt]`` the
# ``grpo.prompts.format: <name>``.
register_prompt_source = registrar(PROMPT_SOURCES, "prompt source")


@register_prompt_source("jsonl")
def load_jsonl_prompts(path: str, size: int) -> list[Prompt]:
    """One JSON object per line: ``prompt``, optional ``metadata`` (dict) and ``image`` (an edit source's path)."""
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ValueError(f"{path}:{number} has no non-empty \"prompt\" string.")
        images = [Image.open(row["image"]).convert("RGB")] if row.get("image") else []
        prompts.append(Prompt(row["prompt"], dict(row.get("metadata") or {}), images))
    if not prompts:
        raise ValueError(f"{path} holds no prompts.")
    return prompts


def load_prompts(config: PromptSourceConfig, size: int) -> list[Prompt]:
    """The prompt pool of ``config`` (see :class:`PromptSourceConfig`), read by its registered loader."""
    loader = PROMPT_SOURCES.get(config.format)
    if loader is None:
        raise ValueError(f"Prompt source format {config.format!r} is not registered; registered: "
                         f"{sorted(PROMPT_SOURCES)}. A project's own format registers on import (the shape world's "
                         "'world': import deepgen.nano.prompts).")
    try:
        inspect.signature(loader).bind(config.path, size, **config.options)
    except TypeError as error:
        raise ValueError(f"Options {config.options} do not fit prompt source {config.format!r}: {error}; it takes "
                         f"{inspect.signature(loader)}.") from None
    return loader(config.path, size, **config.options)

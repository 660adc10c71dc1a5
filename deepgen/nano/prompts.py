"""The shape world as a stage-3 prompt source, registered on import as ``grpo.prompts.format: world``."""

from __future__ import annotations

from typing import Optional, Sequence

from ..training.prompts import Prompt, register_prompt_source
from . import world


@register_prompt_source("world")
def world_prompts(path: str, size: int, samples: int = 512, seed: int = 0,
                  capabilities: Optional[Sequence[str]] = None, prompt_version: int = 1) -> list[Prompt]:
    """``samples`` prompts of the world split ``path`` ("train" or "eval") drawn with ``seed`` over
    ``capabilities`` (null = all five), edit sources rendered at ``size``; ``prompt_version`` 2 includes plain
    prompts (``deepgen.nano.world``; 1, the default, is what the shipped stage 3 was trained on)."""
    drawn = world.dataset(path, samples, seed=seed, capabilities=capabilities or world.CAPABILITIES,
                          prompt_version=prompt_version)
    return [Prompt(s.prompt, dict(s.metadata), [s.source_image(size)] if s.source is not None else [])
            for s in drawn]

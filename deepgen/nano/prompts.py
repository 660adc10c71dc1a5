"""The shape world as a stage-3 prompt source, registered on import as ``grpo.prompts.format: world``."""

from __future__ import annotations

from typing import Optional, Sequence

from ..training.prompts import Prompt, register_prompt_source
from . import world


@register_prompt_source("world")
def world_prompts(path: str, size: int, samples: int = 512, seed: int = 0,
                  capabilities: Optional[Sequence[str]] = None, prompt_version: int = 1,
                  plain: float = 0.0) -> list[Prompt]:
    """``samples`` prompts of the world split ``path`` ("train" or "eval") drawn with ``seed`` over
    ``capabilities`` (null = all five), edit sources rendered at ``size``; ``prompt_version`` 2 and 3 include
    plain prompts, 3 more of them (``deepgen.nano.world``; 1, the default, is what the shipped stage 3 was trained
    on). A ``plain`` fraction of the pool are plain prompts instead (``world.plain_samples``: "a red circle", one
    object, no size or position), for a policy that has to learn that "a" means exactly one."""
    if not 0.0 <= plain <= 1.0:
        raise ValueError(f"plain is the fraction of plain prompts in the pool, from 0 to 1; got {plain}.")
    n_plain = round(samples * plain)
    drawn = world.dataset(path, samples - n_plain, seed=seed, capabilities=capabilities or world.CAPABILITIES,
                          prompt_version=prompt_version) + world.plain_samples(path, n_plain, seed=seed)
    return [Prompt(s.prompt, dict(s.metadata), [s.source_image(size)] if s.source is not None else [])
            for s in drawn]

"""Prompt pools for stage 3: the prompts rolled out (and the held-out ones evaluated), each with reward metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .grpo_config import PromptSourceConfig


@dataclass
class Prompt:
    text: str
    metadata: dict[str, Any]
    images: list[Image.Image] = field(default_factory=list)  # edit sources (empty for text-to-image)


def load_prompts(config: PromptSourceConfig, size: int) -> list[Prompt]:
    """The prompt pool (see :class:`PromptSourceConfig`); edit sources rendered/loaded at ``size``."""
    if config.format == "world":
        from deepgen import world

        samples = world.dataset(config.path, config.world_samples, seed=config.world_seed,
                                capabilities=config.world_capabilities or world.CAPABILITIES)
        return [Prompt(s.prompt, dict(s.metadata), [s.source_image(size)] if s.source is not None else [])
                for s in samples]
    if config.format == "jsonl":
        prompts = []
        for number, line in enumerate(Path(config.path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise ValueError(f"{config.path}:{number} has no non-empty \"prompt\" string.")
            images = [Image.open(row["image"]).convert("RGB")] if row.get("image") else []
            prompts.append(Prompt(row["prompt"], dict(row.get("metadata") or {}), images))
        if not prompts:
            raise ValueError(f"{config.path} holds no prompts.")
        return prompts
    raise ValueError(f"Prompt source format {config.format!r} is not supported; use 'world' or 'jsonl'.")

"""The model side of the runner: any ``--model`` or ``--contestant`` behind one batched call.

Batches are exact: an item's images are the same bytes whatever else shares its batch. DeepGen pads a batch's
prompt rows together and the pads take part in the connector and the DiT (as in the released model), so only
items whose [prompt, negative] rows have the same padded length are batched together (:meth:`batch_key`); each
image's noise comes from its own generator.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Hashable, Optional, Sequence

import torch
from PIL import Image

from ..builtin import OFFICIAL_DIT, OFFICIAL_VLM, default_model_name
from ..contestants import Contestant, LoadedModel, load_contestant, load_registry
from ..pipeline import DeepGenPipeline


class BenchModel:
    """A loaded model that generates a batch of items, ``images_per_prompt`` images each, one generator per image.

    Args:
        loaded: a :class:`deepgen.contestants.LoadedModel` (DeepGen or a diffusers baseline).
    """

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.pipe = loaded.pipe
        self.is_deepgen = isinstance(loaded.pipe, DeepGenPipeline)

    @property
    def max_side(self) -> int:
        return self.loaded.max_side

    def describe(self) -> dict:
        return {**self.loaded.contestant.describe(), "revision": self.loaded.revision}

    def batch_key(self, prompt: str, negative_prompt: str, edit: bool, item_id: str) -> Hashable:
        """Items with equal keys may share a batch without changing each other's images."""
        if not self.is_deepgen:
            # Stock pipelines pad prompts to a fixed length or mask the pads; their edit APIs take one image.
            return ("edit", item_id) if edit else ("t2i",)
        dummy = [[torch.zeros(3, 32, 32)]] * 2 if edit else None  # image tokens: the same count for every item
        return edit, int(self.pipe.processor([prompt, negative_prompt], dummy).input_ids.shape[1])

    def generate(self, prompts: Sequence[str], negative_prompts: Sequence[str],
                 sources: Optional[Sequence[Image.Image]], height: int, width: int, steps: int, guidance: float,
                 images_per_prompt: int, generators: Sequence[torch.Generator]) -> list[Image.Image]:
        """Images of prompt ``b`` at ``[b * images_per_prompt, (b + 1) * images_per_prompt)``; ``generators`` in
        the same order. ``sources``: one RGB image per prompt for edits, resized to ``width`` x ``height``."""
        contestant = self.loaded.contestant
        kwargs: dict[str, Any] = dict(prompt=list(prompts), height=height, width=width, num_inference_steps=steps,
                                      num_images_per_prompt=images_per_prompt, generator=list(generators))
        kwargs[contestant.guidance_argument] = guidance
        negatives = [contestant.negative_prompt_argument(n) for n in negative_prompts]
        if any(n is not None for n in negatives):
            kwargs["negative_prompt"] = [n if n is not None else given for n, given in zip(negatives, negative_prompts)]
        if sources is not None and self.is_deepgen:
            kwargs["image"] = [[source] for source in sources]
        elif sources is not None:
            if len(sources) != 1:
                raise ValueError("Diffusers baselines edit one source per call; batch_key keeps edits apart.")
            kwargs["image"] = sources[0]
        return list(self.pipe(**kwargs).images)


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name if Path(name).exists() else name).strip("-._")
    return (slug or "model")[:64]


def load_bench_model(model: Optional[str], contestant_id: Optional[str], registry: Path,
                     device: torch.device, vlm: str = OFFICIAL_VLM, dit: str = OFFICIAL_DIT) -> BenchModel:
    """Load ``--model`` (what ``python -m deepgen generate`` takes) or the ``--contestant`` entry of ``registry``."""
    if model is not None and contestant_id is not None:
        raise ValueError("Pass --model or --contestant, not both.")
    if contestant_id is not None:
        entries = {c.id: c for c in load_registry(registry)}
        if contestant_id not in entries:
            raise ValueError(f"No contestant {contestant_id!r} in {registry}; known: {sorted(entries)}.")
        contestant = entries[contestant_id]
    else:
        name = str(model) if model is not None else default_model_name()
        contestant = Contestant(id=_slug(name), label=name, kind="deepgen", source=name, vlm=vlm, dit=dit)
    loaded = load_contestant(contestant, device)
    loaded.pipe.set_progress_bar_config(disable=True)
    return BenchModel(loaded)

"""Helpers shared by the nano pretraining scripts (imported from the scripts' own folder).

- :func:`load_world_shards`: the parquet shards of ``make_data.py`` as uint8 arrays, cached beside the shards;
- :func:`describe_scene`: the canonical caption of a scene, the answer the nano VLM learns to give;
- :class:`StandInTextEncoder`: the frozen text encoder the base DiT is pretrained with, standing in for SD3's
  CLIP/T5 (which DeepGen replaces by the VLM + SCB in stage 1);
- :func:`save_checkpoint` / :func:`load_checkpoint`: atomic, resumable training state.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import nn

from deepgen.nano import world

# Extra sentences for the nano tokenizer: the wording of the VLM's answers and questions (see pretrain_vlm.py).
TOKENIZER_EXTRA = (
    "Describe the image.", "What does the image look like after this edit?", "What is the colour of the sun?",
    "What shape is a shape with three corners?", "a grey background with a large red circle at the top left",
    "a white background with two small blue squares", "a black background", "the digit 7 and the letter A",
    "It is green. It is a triangle.",
)


def tokenizer_corpus() -> list[str]:
    """Everything the nano tokenizer is trained on: the world's phrases and the VLM answer wording."""
    return world.caption_corpus() + list(TOKENIZER_EXTRA)


def set_threads(num_threads: int) -> None:
    """Pin torch to ``num_threads`` cores: the recipe runs two jobs side by side on a 2-core machine."""
    torch.set_num_threads(num_threads)
    torch.set_num_interop_threads(1)


# --- data ------------------------------------------------------------------------------------------------------


@dataclass
class WorldArrays:
    """The training set in memory. ``images``/``sources``: (N, H, W, 3) uint8 (``sources`` zero where a row has
    no source); ``has_source``: (N,) bool; ``prompts``, ``capabilities``: N strings; ``metadata``: N dicts."""

    images: np.ndarray
    sources: np.ndarray
    has_source: np.ndarray
    prompts: list[str]
    capabilities: list[str]
    metadata: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.prompts)


def _decode(cell: Optional[dict[str, Any]], size: int) -> Optional[np.ndarray]:
    if cell is None or cell.get("bytes") is None:
        return None
    image = Image.open(io.BytesIO(cell["bytes"])).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image)


def load_world_shards(folder: Path, size: int = 64) -> WorldArrays:
    """Read every ``train-*.parquet`` in ``folder`` (decoding once; later calls read ``cache-{size}.npz``)."""
    folder = Path(folder)
    shards = sorted(folder.glob("train-*.parquet"))
    if not shards:
        raise ValueError(f"No train-*.parquet shards in {folder}; run train/nano/make_data.py --out {folder} first.")
    cache = folder / f"cache-{size}.npz"
    if cache.is_file() and cache.stat().st_mtime >= max(s.stat().st_mtime for s in shards):
        data = np.load(cache, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        return WorldArrays(data["images"], data["sources"], data["has_source"], meta["prompts"],
                           meta["capabilities"], [json.loads(m) for m in meta["metadata"]])
    images, sources, has_source, prompts, capabilities, metadata = [], [], [], [], [], []
    blank = np.zeros((size, size, 3), dtype=np.uint8)
    for shard in shards:
        for row in pq.read_table(shard).to_pylist():
            images.append(_decode(row["image"], size))
            source = _decode(row["source_image"], size)
            sources.append(blank if source is None else source)
            has_source.append(source is not None)
            prompts.append(row["prompt"])
            capabilities.append(row["capability"])
            metadata.append(row["metadata"])
    arrays = WorldArrays(np.stack(images), np.stack(sources), np.array(has_source), prompts, capabilities,
                         [json.loads(m) for m in metadata])
    meta = json.dumps({"prompts": prompts, "capabilities": capabilities, "metadata": metadata})
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as handle:
        np.savez(handle, images=arrays.images, sources=arrays.sources, has_source=arrays.has_source,
                 meta=np.array(meta))
    os.replace(handle.name, cache)
    return arrays


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --- captions --------------------------------------------------------------------------------------------------


def describe_object(obj: dict[str, Any]) -> str:
    return f"a {obj['size']} {obj['colour']} {obj['shape']} {world.POSITION_PHRASES[obj['position']]}"


def describe_scene(scene: dict[str, Any]) -> str:
    """Canonical caption of a :meth:`deepgen.nano.world.Scene.to_dict`, objects in reading order (grid cells).

    e.g. "a grey background with a large red circle at the top left and a small blue square in the center";
    a glyph scene reads "a grey background with the digit 7 in red".
    """
    background = f"a {scene['background']} background"
    glyph = scene.get("glyph")
    if glyph is not None:
        kind = "digit" if glyph["glyph"].isdigit() else "letter"
        return f"{background} with the {kind} {glyph['glyph']} in {glyph['colour']}"
    objects = sorted(scene["objects"], key=lambda obj: world.POSITIONS.index(obj["position"]))
    if not objects:
        return background
    return f"{background} with " + " and ".join(describe_object(obj) for obj in objects)


def target_scene(metadata: dict[str, Any]) -> dict[str, Any]:
    """The target scene dict of a training record, rebuilt from its metadata for generation and text rows."""
    if "target" in metadata:
        return metadata["target"]
    if metadata["capability"] == "text_rendering":
        return {"background": metadata["background"], "objects": [],
                "glyph": {"glyph": metadata["glyph"], "colour": metadata["colour"]}}
    raise ValueError("Generation metadata lists required groups, not a scene; caption the rendered target instead.")


# --- the base DiT's frozen text encoder --------------------------------------------------------------------------


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sine/cosine position table (Vaswani et al. 2017, §3.5)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class StandInTextEncoder(nn.Module):
    """A fixed random text encoder for pretraining the base DiT, the stand-in for SD3's CLIP + T5.

    Each token gets a fixed random embedding plus a sinusoidal position (so that "a red circle and a blue
    square" differs from "a blue circle and a red square"); the pooled vector is a fixed random projection of
    the mean embedding. Nothing here is trained: the DiT learns to read this code, as SD3 learned to read T5.

    Args:
        vocab_size: tokenizer size (ids beyond it are an error).
        dim: the DiT's ``joint_attention_dim``.
        pooled_dim: the DiT's ``pooled_projection_dim``.
        max_length: longest prompt in tokens.
        seed: seed of the random tables (saved with the DiT so that pretraining can resume).
    """

    def __init__(self, vocab_size: int, dim: int, pooled_dim: int, max_length: int = 48, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("token_table", torch.randn(vocab_size, dim, generator=generator))
        self.register_buffer("position_table", 0.5 * sinusoidal_positions(max_length, dim))
        self.register_buffer("pooled_matrix", torch.randn(dim, pooled_dim, generator=generator) * dim ** -0.5)
        self.max_length = max_length

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) right-padded ids and mask -> ``(seq (B, T, dim), pooled (B, pooled_dim))``; pads are zero."""
        if input_ids.shape[1] > self.max_length:
            raise ValueError(f"Prompt of {input_ids.shape[1]} tokens exceeds max_length={self.max_length}.")
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        seq = (self.token_table[input_ids] + self.position_table[: input_ids.shape[1]]) * mask
        pooled = (seq.sum(1) / mask.sum(1).clamp(min=1.0)) @ self.pooled_matrix
        return seq, pooled


# --- checkpoints -----------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file then rename: a kill mid-write never leaves a broken checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        torch.save(state, handle)
    os.replace(handle.name, path)


def load_checkpoint(path: Path) -> Optional[dict[str, Any]]:
    path = Path(path)
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def cosine_lr(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 10% of ``base_lr`` at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))

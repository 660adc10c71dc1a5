"""The shape world's rewards for stage 3, registered by name on import
(:func:`deepgen.training.rewards.register_reward`):

- ``shapeeval``: ShapeEval's ``overall`` score (or one criterion) against each sample's world metadata;
- ``glyph``: OCR accuracy with ShapeEval's template matcher as the OCR engine (the world's digits and letters);
- ``glyph_iou``: the dense IoU of the image with the requested glyph (near misses keep part credit).
"""

from __future__ import annotations

import torch
from PIL import Image

from ..training.rewards import OCRReward, check_batch, register_reward
from .shapeeval import evaluate, glyph_iou, read_glyph


class ShapeEvalReward:
    """ShapeEval's ``overall`` score (or one criterion) against each sample's world metadata."""

    def __init__(self, criterion: str = "overall"):
        self.criterion = criterion

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        check_batch(images, prompts, metadata)
        return torch.tensor([evaluate(img, meta).get(self.criterion, 0.0) for img, meta in zip(images, metadata)],
                            dtype=torch.float32)


class GlyphIoUReward:
    """Dense text reward: :func:`deepgen.nano.shapeeval.glyph_iou` of the image with the glyph the prompt asks for
    (``metadata["glyph"]``; 0 without one). Unlike OCR's right-or-wrong reading it separates near misses from
    blobs, so a group of images that are all misread still has a reward spread to learn from."""

    def __call__(self, images, prompts, metadata) -> torch.Tensor:
        check_batch(images, prompts, metadata)
        return torch.tensor([glyph_iou(image, meta["glyph"]) if meta.get("glyph") else 0.0
                             for image, meta in zip(images, metadata)], dtype=torch.float32)


def glyph_recognizer(image: Image.Image) -> str:
    """ShapeEval's template matcher as an OCR engine for the world's single digits and letters."""
    reading = read_glyph(image)
    return reading.glyph if reading is not None else ""


@register_reward("shapeeval")
def shapeeval_reward(device: torch.device, criterion: str = "overall") -> ShapeEvalReward:
    return ShapeEvalReward(criterion)


@register_reward("glyph")
def glyph_reward(device: torch.device) -> OCRReward:
    return OCRReward(glyph_recognizer)


@register_reward("glyph_iou")
def glyph_iou_reward(device: torch.device) -> GlyphIoUReward:
    return GlyphIoUReward()

"""The shape world's rewards (deepgen/nano/rewards.py) and prompt source (deepgen/nano/prompts.py): ShapeEval,
glyph OCR and glyph IoU scores, registered by name with generic training."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageFilter

from deepgen.nano import prompts, world
from deepgen.nano.rewards import GlyphIoUReward, ShapeEvalReward, glyph_recognizer
from deepgen.training.grpo_config import PromptSourceConfig, RewardSpec
from deepgen.training.prompts import load_prompts
from deepgen.training.rewards import REWARDS, OCRReward, build_rewards


def _samples(capability: str, n: int = 3):
    return world.dataset("eval", n, seed=1, capabilities=(capability,))


def test_shapeeval_reward_prefers_ground_truth():
    samples = _samples("generation", 4)
    prompts, meta = [s.prompt for s in samples], [s.metadata for s in samples]
    good = ShapeEvalReward()([s.target_image(64) for s in samples], prompts, meta)
    blank = ShapeEvalReward()([Image.new("RGB", (64, 64), (200, 200, 200))] * 4, prompts, meta)
    assert good.shape == (4,) and good.dtype == torch.float32
    assert torch.all(good > 0.9) and torch.all(blank < good)


def test_ocr_reward_on_rendered_glyphs():
    samples = _samples("text_rendering", 3)
    scores = OCRReward(glyph_recognizer)([s.target_image(64) for s in samples], [s.prompt for s in samples],
                                         [s.metadata for s in samples])
    assert torch.all(scores == 1.0)


def test_glyph_iou_reward_is_dense_and_zero_without_a_glyph():
    samples = _samples("text_rendering", 3)
    images = [s.target_image(64) for s in samples]
    exact = GlyphIoUReward()(images, [s.prompt for s in samples], [s.metadata for s in samples])
    assert torch.all(exact > 0.98)
    blurred = [image.filter(ImageFilter.GaussianBlur(2)) for image in images]
    partial = GlyphIoUReward()(blurred, [s.prompt for s in samples], [s.metadata for s in samples])
    assert torch.all((partial > 0.0) & (partial < exact))
    assert GlyphIoUReward()(images[:1], ["a red circle"], [{"capability": "generation"}]).item() == 0.0


def test_batch_mismatch_is_an_error():
    with pytest.raises(ValueError, match="as many prompts"):
        ShapeEvalReward()([Image.new("RGB", (8, 8))], ["a", "b"], [{}])


def test_world_rewards_and_prompt_source_are_registered_by_name():
    assert {"shapeeval", "glyph", "glyph_iou"} <= set(REWARDS)
    mixed = build_rewards({"shapeeval": RewardSpec(weight=2.0, options={"criterion": "colour"}),
                           "glyph_iou": RewardSpec(), "glyph": None}, torch.device("cpu"))
    assert list(mixed.rewards) == ["shapeeval", "glyph_iou"] and mixed.weights["shapeeval"] == 2.0
    assert mixed.rewards["shapeeval"].criterion == "colour"
    pool = load_prompts(PromptSourceConfig(format="world", path="eval",
                                           options={"samples": 6, "seed": 2, "capabilities": ["editing"]}), 32)
    assert [p.text for p in pool] == [s.prompt for s in world.dataset("eval", 6, seed=2, capabilities=["editing"])]
    assert all(p.images[0].size == (32, 32) and p.metadata["capability"] == "editing" for p in pool)
    assert prompts.world_prompts("train", 16, samples=2)[0].metadata == world.dataset("train", 2)[0].metadata
    plain = prompts.world_prompts("train", 16, samples=40, capabilities=["generation"], prompt_version=2)
    assert [p.text for p in plain] == [s.prompt for s in world.dataset("train", 40, capabilities=["generation"],
                                                                       prompt_version=2)]


def test_the_world_prompt_pool_can_mix_in_plain_prompts():
    pool = prompts.world_prompts("train", 16, samples=10, seed=3, capabilities=["generation"], prompt_version=2,
                                 plain=0.4)
    assert [p.text for p in pool[:6]] == [s.prompt for s in world.dataset("train", 6, seed=3, capabilities=["generation"],
                                                                           prompt_version=2)]
    assert [p.text for p in pool[6:]] == [s.prompt for s in world.plain_samples("train", 4, seed=3)]
    assert all(p.metadata["groups"][0]["count"] == 1 and not p.images for p in pool[6:])
    with pytest.raises(ValueError, match="fraction of plain prompts"):
        prompts.world_prompts("train", 16, samples=4, plain=1.5)

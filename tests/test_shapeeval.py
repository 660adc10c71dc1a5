"""Tests for ShapeEval (deepgen/nano/shapeeval.py): ground truth scores ~1, corrupted outputs score low."""

import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from deepgen.nano import shapeeval, world


def _eval_samples(capability: str, n: int = 100) -> list[world.Sample]:
    return world.dataset("eval", n, seed=11, capabilities=(capability,))


def _next_colour(colour: str, background: str) -> str:
    """A different object colour that is not the background either."""
    index = world.OBJECT_COLOURS.index(colour)
    for step in range(1, len(world.OBJECT_COLOURS)):
        candidate = world.OBJECT_COLOURS[(index + step) % len(world.OBJECT_COLOURS)]
        if candidate != background:
            return candidate
    raise AssertionError("unreachable: there are more object colours than backgrounds")


def _recoloured(scene: world.Scene) -> world.Scene:
    """The scene with every object (or the glyph) in the wrong colour."""
    if scene.glyph is not None:
        return replace(scene, glyph=replace(scene.glyph, colour=_next_colour(scene.glyph.colour, scene.background)))
    return replace(scene, objects=[replace(o, colour=_next_colour(o.colour, scene.background)) for o in scene.objects])


@pytest.mark.parametrize("capability", world.CAPABILITIES)
def test_ground_truth_scores_near_perfect(capability):
    samples = _eval_samples(capability)
    results = shapeeval.evaluate_dataset([s.target_image(64) for s in samples], samples)
    scores = results["capabilities"][capability]
    assert scores["n"] == len(samples)
    assert scores["overall"] >= 0.95 and scores["correct"] >= 0.95, scores


@pytest.mark.parametrize("capability", world.CAPABILITIES)
def test_blurred_ground_truth_still_scores_high(capability):
    samples = _eval_samples(capability)
    images = [s.target_image(64).filter(ImageFilter.GaussianBlur(1)) for s in samples]
    scores = shapeeval.evaluate_dataset(images, samples)["capabilities"][capability]
    assert scores["overall"] >= 0.95, scores


@pytest.mark.parametrize("size", [32, 128])
def test_any_image_size_is_accepted(size):
    samples = world.dataset("eval", 25, seed=5)
    results = shapeeval.evaluate_dataset([s.target_image(size) for s in samples], samples)
    assert results["overall"] >= 0.95, results


def test_numpy_and_json_inputs_match_pil_and_sample():
    sample = world.sample("editing", 4, "eval")
    image = sample.target_image(64)
    expected = shapeeval.evaluate(image, sample)
    assert shapeeval.evaluate(np.asarray(image), json.dumps(sample.metadata)) == expected
    assert shapeeval.evaluate(image, sample.metadata) == expected


@pytest.mark.parametrize("shape", world.SHAPES)
def test_every_shape_size_and_position_is_read_back(shape):
    colours = [c for c in world.OBJECT_COLOURS if c not in ("white", "black")]
    for i, (size, position) in enumerate((z, p) for z in world.SIZES for p in world.POSITIONS):
        background = world.BACKGROUND_COLOURS[i % 3]
        obj = world.ShapeSpec(shape, colours[i % len(colours)], position, size)
        image = world.Scene([obj], background).render(64)
        for variant in (image, image.filter(ImageFilter.GaussianBlur(1))):
            reading = shapeeval.read_scene(variant)
            assert reading.background == background
            assert [(c.shape, c.colour, c.position, c.size) for c in reading.components] == [
                (shape, obj.colour, position, size)]


@pytest.mark.parametrize("glyph", world.GLYPHS)
def test_every_glyph_is_recognised(glyph):
    for colour in ("red", "blue", "white"):
        image = world.Scene(glyph=world.GlyphSpec(glyph, colour)).render(64)
        for variant in (image, image.filter(ImageFilter.GaussianBlur(1)), world.Scene(
                glyph=world.GlyphSpec(glyph, colour)).render(128)):
            reading = shapeeval.read_glyph(variant)
            assert (reading.glyph, reading.colour) == (glyph, colour)


def test_glyph_iou_is_dense_and_peaks_at_the_requested_glyph():
    image = world.Scene(glyph=world.GlyphSpec("E", "green")).render(64)
    assert shapeeval.glyph_iou(image, "E") == pytest.approx(1.0, abs=0.02)
    assert shapeeval.glyph_iou(image, "F") < shapeeval.glyph_iou(image, "E")  # a near miss keeps part credit
    assert shapeeval.glyph_iou(image, "F") > shapeeval.glyph_iou(image, "1") > 0.0
    assert shapeeval.glyph_iou(Image.new("RGB", (64, 64), world.PALETTE["grey"]), "E") == 0.0
    with pytest.raises(ValueError, match="Unknown glyph"):
        shapeeval.glyph_iou(image, "e")


def test_criteria_pinpoint_the_mistake():
    spec = world.ShapeSpec("circle", "red", "left", "large")
    metadata = {"capability": "generation", "groups": [
        {"shape": "circle", "colour": "red", "count": 1, "size": "large", "position": "left"}]}
    moved = shapeeval.evaluate(world.Scene([replace(spec, position="right")]).render(), metadata)
    assert moved == {"colour": 1.0, "shape": 1.0, "count": 1.0, "size": 1.0, "position": 0.0,
                     "overall": 0.8, "correct": 0.0}
    shrunk = shapeeval.evaluate(world.Scene([replace(spec, size="small")]).render(), metadata)
    assert shrunk["size"] == 0.0 and shrunk["position"] == 1.0
    squared = shapeeval.evaluate(world.Scene([replace(spec, shape="square")]).render(), metadata)
    assert squared["shape"] == 0.0 and squared["colour"] == 1.0 and squared["overall"] <= 0.25
    extra = world.Scene([spec, world.ShapeSpec("triangle", "blue", "right")]).render()
    assert shapeeval.evaluate(extra, metadata)["count"] == 0.0


def test_wrong_colour_scores_low():
    samples = [s for s in world.dataset("eval", 150, seed=12) if s.target.objects or s.target.glyph]
    images = [_recoloured(s.target).render(64) for s in samples]
    results = shapeeval.evaluate_dataset(images, samples)
    for capability, scores in results["capabilities"].items():
        assert scores["correct"] == 0.0 and scores["overall"] <= 0.5, (capability, scores)


def test_blank_and_noise_images_score_low():
    samples = world.dataset("eval", 150, seed=13)
    blank = [Image.new("RGB", (64, 64), world.PALETTE["grey"])] * len(samples)
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in samples]
    blank_results = shapeeval.evaluate_dataset(blank, samples)
    # A blank canvas is only right for removing the sole object of a grey scene.
    assert blank_results["overall"] <= 0.15, blank_results
    for capability in ("generation", "reasoning_generation", "text_rendering"):
        assert blank_results["capabilities"][capability]["overall"] == 0.0
    assert shapeeval.evaluate_dataset(noise, samples)["overall"] <= 0.05


def test_shuffled_targets_score_low():
    samples = world.dataset("eval", 150, seed=14)
    order = list(range(len(samples)))
    random.Random(0).shuffle(order)
    results = shapeeval.evaluate_dataset([samples[i].target_image(64) for i in order], samples)
    for capability, scores in results["capabilities"].items():
        assert scores["overall"] <= 0.3 and scores["correct"] <= 0.1, (capability, scores)


def test_unedited_source_keeps_everything_but_follows_no_instruction():
    samples = world.dataset("eval", 60, seed=15, capabilities=("editing", "reasoning_editing"))
    for sample in samples:
        scores = shapeeval.evaluate(sample.source_image(64), sample)
        assert scores["instruction"] == 0.0 and scores["overall"] == 0.0, sample.prompt
        if sample.metadata["operation"] in ("recolour", "move", "background"):
            assert scores["preservation"] == 1.0, sample.prompt


def test_format_table_lists_every_capability():
    samples = world.dataset("eval", 10, seed=16)
    table = shapeeval.format_table(shapeeval.evaluate_dataset([s.target_image() for s in samples], samples))
    lines = table.splitlines()
    assert lines[0].startswith("| capability | n | overall | correct |")
    assert [line.split(" | ")[0][2:] for line in lines[2:]] == list(world.CAPABILITIES) + ["**overall**"]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_errors_explain_what_was_wrong():
    sample = world.sample("generation", 0)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        shapeeval.evaluate(np.zeros((64, 64), dtype=np.uint8), sample)
    with pytest.raises(ValueError, match="expected one of"):
        shapeeval.evaluate(sample.target_image(), {"capability": "poetry"})
    with pytest.raises(ValueError, match="one image per sample"):
        shapeeval.evaluate_dataset([], [sample])


def test_vae_probe_images_read_back_as_their_pairs():
    """train/nano/probe_vae.py's images are valid: without a VAE in between, ShapeEval finds every pair."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train" / "nano"))
    from probe_vae import probe_images

    for size in world.SIZES:
        pairs, images = probe_images(size)
        assert len(pairs) == len(world.SHAPES) * len(world.OBJECT_COLOURS)
        assert images.shape == (len(pairs) * len(world.POSITIONS), 64, 64, 3)
        for k, image in enumerate(images):
            colour, shape = pairs[k // len(world.POSITIONS)]
            (component,) = shapeeval.read_scene(image).components
            assert (component.colour, component.shape, component.size) == (colour, shape, size)
            assert component.position == world.POSITIONS[k % len(world.POSITIONS)]


def test_per_sample_scores_follow_the_samples_and_average_to_the_table():
    samples = world.dataset("eval", 20, seed=2)
    images = [s.target_image(64) if i % 2 else Image.new("RGB", (64, 64)) for i, s in enumerate(samples)]
    results = shapeeval.evaluate_dataset(images, samples)
    assert [row["capability"] for row in results["per_sample"]] == [s.capability for s in samples]
    for capability, scores in results["capabilities"].items():
        rows = [row["overall"] for row in results["per_sample"] if row["capability"] == capability]
        assert np.mean(rows) == pytest.approx(scores["overall"])


def _synthetic_results(scores_by_capability: dict[str, list[float]]) -> dict:
    return {"per_sample": [{"capability": capability, "overall": score}
                           for capability, scores in scores_by_capability.items() for score in scores]}


def test_compare_identical_models_gives_a_zero_difference_and_interval():
    results = _synthetic_results({"generation": [0.2, 0.9, 0.5], "editing": [0.0, 1.0]})
    table = shapeeval.compare([results], [results], n_resamples=200)
    for row in table.values():
        assert row["delta"] == 0.0 and row["low"] == 0.0 and row["high"] == 0.0
    assert table["overall"]["n"] == 5


def test_compare_pools_draws_and_averages_capabilities_unweighted():
    rng = np.random.default_rng(0)
    base_a = {"generation": list(rng.uniform(0, 0.8, 40)), "editing": list(rng.uniform(0, 0.8, 40))}
    base_b = {"generation": list(rng.uniform(0, 0.8, 40)), "editing": list(rng.uniform(0, 0.8, 40))}
    shifted = [{"generation": [x + 0.1 for x in d["generation"]], "editing": [x - 0.3 for x in d["editing"]]}
               for d in (base_a, base_b)]
    table = shapeeval.compare([_synthetic_results(base_a), _synthetic_results(base_b)],
                              [_synthetic_results(d) for d in shifted], n_resamples=500)
    assert table["generation"]["n"] == 80
    assert table["generation"]["delta"] == pytest.approx(0.1)
    assert table["editing"]["delta"] == pytest.approx(-0.3)
    assert table["overall"]["delta"] == pytest.approx(-0.1)
    assert table["generation"]["low"] == pytest.approx(0.1) and table["generation"]["high"] == pytest.approx(0.1)


def test_compare_interval_covers_the_mean_difference_of_noisy_pairs():
    rng = np.random.default_rng(1)
    base = {"generation": list(rng.uniform(0, 1, 200))}
    candidate = {"generation": [x + rng.normal(0.05, 0.2) for x in base["generation"]]}
    row = shapeeval.compare([_synthetic_results(base)], [_synthetic_results(candidate)])["generation"]
    assert row["low"] < row["delta"] < row["high"]
    assert 0.02 < row["high"] - row["low"] < 0.12  # about 4 standard errors of 0.2 / sqrt(200)


def test_compare_rejects_results_of_different_samples():
    a = _synthetic_results({"generation": [0.5, 0.5], "editing": [0.5]})
    b = _synthetic_results({"editing": [0.5], "generation": [0.5, 0.5]})
    with pytest.raises(ValueError, match="same samples"):
        shapeeval.compare([a], [b])
    with pytest.raises(ValueError, match="one of each per draw"):
        shapeeval.compare([a, a], [a])
    with pytest.raises(ValueError, match="per-sample scores"):
        shapeeval.compare([{"overall": 0.5}], [a])
    with pytest.raises(ValueError, match="level in"):
        shapeeval.compare([a], [a], level=95)

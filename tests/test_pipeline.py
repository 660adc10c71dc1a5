"""``DeepGenPipeline`` on the tiny random model: outputs, seeding, editing, callbacks and input validation."""

from __future__ import annotations

import inspect
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepgen import DeepGenPipeline, DeepGenPipelineOutput, load_image
from deepgen.pipeline import EDIT_NEGATIVE_PROMPT, classifier_free_guidance

SIZE = 32
STEPS = 2


def run(pipe: DeepGenPipeline, prompt="a red circle", seed: int = 0, **kwargs):
    kwargs = {"height": SIZE, "width": SIZE, "num_inference_steps": STEPS, **kwargs}
    if "latents" not in kwargs:
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(prompt, **kwargs).images


def picture(width: int = SIZE, height: int = SIZE, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def latent_shape(batch: int, height: int = SIZE, width: int = SIZE) -> tuple[int, int, int, int]:
    return batch, 16, height // 8, width // 8


@pytest.fixture(scope="module")
def conditioned_pipe() -> DeepGenPipeline:
    """``tiny_pipe`` with random SCB heads. The tiny preset zero-initialises ``projector_2/3`` as the authors do,
    so its DiT never sees the prompt; tests about prompts and guidance need a pipeline where it does."""
    pipe = DeepGenPipeline.from_config("tiny", seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for head in (pipe.scb.projector_2, pipe.scb.projector_3):
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- outputs ---------------------------------------------------------------------------------------------------


def test_output_types(tiny_pipe):
    pil = run(tiny_pipe, output_type="pil")
    assert isinstance(pil, list) and len(pil) == 1
    assert pil[0].size == (SIZE, SIZE) and pil[0].mode == "RGB"
    array = run(tiny_pipe, output_type="np")
    assert isinstance(array, np.ndarray) and array.shape == (1, SIZE, SIZE, 3)
    assert array.dtype == np.float32 and 0.0 <= array.min() and array.max() <= 1.0
    tensor = run(tiny_pipe, output_type="pt")
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (1, 3, SIZE, SIZE)
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    latents = run(tiny_pipe, output_type="latent")
    assert latents.shape == latent_shape(1) and latents.dtype == torch.float32
    # the same call, the same numbers, whatever the output type
    np.testing.assert_allclose(array[0], tensor[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert np.abs(np.asarray(pil[0], dtype=np.float32) / 255 - array[0]).max() < 1.5 / 255


def test_return_dict(tiny_pipe):
    output = tiny_pipe("a cat", height=SIZE, width=SIZE, num_inference_steps=1, output_type="latent")
    assert isinstance(output, DeepGenPipelineOutput)
    as_tuple = tiny_pipe("a cat", height=SIZE, width=SIZE, num_inference_steps=1, output_type="latent",
                         return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == latent_shape(1)


def test_non_square_size(tiny_pipe):
    assert run(tiny_pipe, height=48, width=32, output_type="pil")[0].size == (32, 48)


def test_batch_and_images_per_prompt(tiny_pipe):
    assert len(run(tiny_pipe, ["a red circle", "a blue square"])) == 2
    latents = run(tiny_pipe, ["a red circle", "a blue square"], num_images_per_prompt=2, output_type="latent")
    assert latents.shape == latent_shape(4)
    assert not torch.allclose(latents[0], latents[1]), "images of one prompt should get different noise"


def test_seeding(tiny_pipe):
    a = run(tiny_pipe, seed=1, output_type="latent")
    assert torch.equal(a, run(tiny_pipe, seed=1, output_type="latent"))
    assert not torch.allclose(a, run(tiny_pipe, seed=2, output_type="latent"))


def test_supplied_latents_are_used(tiny_pipe):
    noise = torch.randn(latent_shape(1), generator=torch.Generator().manual_seed(5))
    from_latents = run(tiny_pipe, latents=noise, output_type="latent")
    assert torch.equal(from_latents, run(tiny_pipe, seed=5, output_type="latent"))
    assert not torch.allclose(from_latents, run(tiny_pipe, latents=noise + 1, output_type="latent"))


def test_prompt_and_negative_prompt_matter(conditioned_pipe):
    pipe = conditioned_pipe
    plain = run(pipe, "a red circle", output_type="latent")
    assert not torch.allclose(plain, run(pipe, "a blue square", output_type="latent"), atol=1e-4)
    assert torch.equal(plain, run(pipe, "a red circle", negative_prompt="", output_type="latent"))
    assert torch.equal(plain, run(pipe, "a red circle", negative_prompt=[""], output_type="latent"))
    blurry = run(pipe, "a red circle", negative_prompt="blurry", output_type="latent")
    assert not torch.allclose(plain, blurry, atol=1e-4)
    assert torch.equal(blurry, run(pipe, ("a red circle",), negative_prompt=("blurry",), output_type="latent"))


def test_guidance_scale_one_skips_the_unconditional_pass(conditioned_pipe):
    pipe, batches = conditioned_pipe, []
    hook = pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, output: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        without_cfg = run(pipe, ["a red circle", "a blue square"], guidance_scale=1.0, output_type="latent")
        assert batches == [2] * STEPS
        batches.clear()
        with_cfg = run(pipe, ["a red circle", "a blue square"], guidance_scale=4.0, output_type="latent")
        assert batches == [4] * STEPS
    finally:
        hook.remove()
    assert without_cfg.shape == latent_shape(2)
    assert not torch.allclose(without_cfg, with_cfg, atol=1e-4)


def test_callback_on_step_end(tiny_pipe):
    calls = []

    def record(pipe, step, timestep, tensors):
        calls.append((step, float(timestep), tensors["latents"].shape))
        return {}

    run(tiny_pipe, num_inference_steps=3, output_type="latent", callback_on_step_end=record)
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[0][1] > calls[1][1] > calls[2][1]  # timesteps decrease
    assert all(c[2] == latent_shape(1) for c in calls)

    replacement = torch.full(latent_shape(1), 0.25)
    replaced = run(tiny_pipe, output_type="latent",
                   callback_on_step_end=lambda pipe, i, t, tensors: {"latents": replacement} if i == STEPS - 1 else {})
    assert torch.equal(replaced, replacement)
    changed_early = run(tiny_pipe, output_type="latent",
                        callback_on_step_end=lambda pipe, i, t, tensors: {"latents": tensors["latents"] * 0} if i == 0
                        else None)
    assert not torch.allclose(changed_early, run(tiny_pipe, output_type="latent"))
    with pytest.raises(ValueError, match="Callbacks can receive"):
        run(tiny_pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=("prompt_embeds",))


# --- editing ---------------------------------------------------------------------------------------------------


def test_edit_with_one_reference(tiny_pipe):
    source = picture()
    edited = run(tiny_pipe, "make it green", image=source, output_type="latent")
    assert edited.shape == latent_shape(1)
    assert not torch.allclose(edited, run(tiny_pipe, "make it green", output_type="latent")), "the image is ignored"
    assert not torch.allclose(edited, run(tiny_pipe, "make it green", image=picture(seed=1), output_type="latent"))
    # numpy input is the same image
    assert torch.equal(edited, run(tiny_pipe, "make it green", image=np.asarray(source), output_type="latent"))


def test_edit_batch_with_images_per_prompt_and_generator_list(tiny_pipe):
    def generators():  # one per image
        return [torch.Generator().manual_seed(i) for i in range(4)]

    latents = run(tiny_pipe, ["make it green", "make it blue"], image=picture(), num_images_per_prompt=2,
                  generator=generators(), output_type="latent")
    assert latents.shape == latent_shape(4)
    assert torch.equal(latents, run(tiny_pipe, ["make it green", "make it blue"], image=picture(),
                                    num_images_per_prompt=2, generator=generators(), output_type="latent"))


def test_edit_with_two_references(tiny_pipe):
    one = run(tiny_pipe, "combine them", image=[picture(seed=0)], output_type="latent")
    two = run(tiny_pipe, "combine them", image=[picture(seed=0), picture(64, 32, seed=1)], output_type="latent")
    assert two.shape == latent_shape(1)
    assert not torch.allclose(one, two)


def test_edit_per_prompt_image_lists(tiny_pipe):
    first, second = picture(seed=0), picture(seed=1)
    both = run(tiny_pipe, ["make it green", "make it blue"], image=[[first], [second]], output_type="latent")
    assert both.shape == latent_shape(2)
    shared = run(tiny_pipe, ["make it green", "make it blue"], image=first, output_type="latent")
    assert not torch.allclose(both[1], shared[1]), "the second prompt's own image was not used"
    with pytest.raises(ValueError, match="one list of reference images per prompt"):
        run(tiny_pipe, ["a", "b"], image=[[first], [second], [first]])
    with pytest.raises(ValueError, match="same number of reference images"):
        run(tiny_pipe, ["a", "b"], image=[[first], [first, second]])
    with pytest.raises(ValueError, match="Reference image 1 has different sizes across prompts"):
        run(tiny_pipe, ["a", "b"], image=[[first, picture(64, 32)], [first, picture(32, 64)]], height=64, width=64)


@pytest.mark.parametrize("source, expected", [
    ((1000, 700), (512, 384)),  # long side >= 512: scaled to 512, the other side rounded *up* (358.4 -> 384)
    ((500, 375), (512, 384)),  # both sides < 512: not scaled, each rounded up to a multiple of 32
    ((700, 1000), (384, 512)),
    ((96, 64), (96, 64)),
    ((40, 72), (64, 96)),
])
def test_single_edit_size_is_the_authors_resize_image(tiny_pipe, source, expected):
    references, height, width = tiny_pipe.prepare_images(picture(*source), 1, None, None)
    assert (width, height) == expected
    assert tuple(references[0][0].shape) == (3, expected[1], expected[0])  # the output takes the reference's size


def test_single_edit_with_one_side_given_keeps_the_aspect_ratio(tiny_pipe):
    references, height, width = tiny_pipe.prepare_images(picture(96, 64), 1, None, 192)
    assert (width, height) == (192, 128) and tuple(references[0][0].shape) == (3, 128, 192)
    assert tiny_pipe.prepare_images(picture(96, 64), 1, 64, None)[1:] == (64, 96)


def test_edit_output_takes_the_resized_reference_size(tiny_pipe):
    kwargs = {"num_inference_steps": 1, "generator": torch.Generator().manual_seed(0)}
    assert tiny_pipe("widen", image=picture(500, 375), **kwargs).images[0].size == (512, 384)
    assert tiny_pipe("widen", image=picture(96, 64), height=32, width=32, **kwargs).images[0].size == (32, 32)


def test_several_references_use_the_output_size_not_the_first_aspect(tiny_pipe):
    refs = [picture(1000, 700), picture(300, 600)]
    references, height, width = tiny_pipe.prepare_images(refs, 1, None, None)
    assert (width, height) == (512, 512)
    assert [tuple(r.shape[-2:]) for r in references[0]] == [(384, 512), (512, 256)]
    references, height, width = tiny_pipe.prepare_images(refs, 1, 128, 256)
    assert (width, height) == (256, 128)
    assert [tuple(r.shape[-2:]) for r in references[0]] == [(192, 256), (256, 128)]


def test_edit_with_given_image_latents(tiny_pipe):
    source = picture()
    references, _, _ = tiny_pipe.prepare_images(source, 1, SIZE, SIZE)
    latents = tiny_pipe.encode_images(references[0], torch.Generator().manual_seed(9))
    encoded = run(tiny_pipe, "edit", image=source, image_generator=torch.Generator().manual_seed(9),
                  output_type="latent")
    given = run(tiny_pipe, "edit", image=source, image_latents=[latents], output_type="latent")
    torch.testing.assert_close(given, encoded, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="without `image`"):
        run(tiny_pipe, "edit", image_latents=[latents])
    with pytest.raises(ValueError, match="2 image latents for 1 reference"):
        run(tiny_pipe, "edit", image=source, image_latents=[latents, latents])


# --- input validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, message", [
    ("", "empty"),
    ("   ", "empty"),
    ([], "non-empty string or list"),
    (None, "non-empty string or list"),
    (3, "non-empty string or list"),
    (["ok", 5], r"prompt\[1\]` must be a string"),
    (["ok", ""], r"prompt\[1\]` is empty"),
])
def test_bad_prompt(tiny_pipe, prompt, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_pipe, prompt)


@pytest.mark.parametrize("kwargs, message", [
    ({"height": 40}, "`height` must be a multiple of 16"),
    ({"width": 24}, "`width` must be a multiple of 16"),
    ({"height": 0}, "between 16 and 512"),
    ({"width": 1024}, "between 16 and 512"),
    ({"height": 32.0}, "must be an integer"),
    ({"num_inference_steps": 0}, r"num_inference_steps` must be an integer in \[1, 1000\]"),
    ({"num_inference_steps": 10_000}, r"num_inference_steps` must be an integer in \[1, 1000\]"),
    ({"num_inference_steps": 2.5}, "num_inference_steps"),
    ({"guidance_scale": float("nan")}, "finite number"),
    ({"guidance_scale": float("inf")}, "finite number"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
    ({"num_images_per_prompt": 0}, "positive integer"),
    ({"negative_prompt": ["a", "b"]}, "1 prompts but 2 negative prompts"),
    ({"negative_prompt": 3}, "negative_prompt"),
    ({"output_type": "jpeg"}, "output_type"),
    ({"latents": torch.zeros(1, 16, 8, 8)}, r"latents` must have shape \(1, 16, 4, 4\)"),
    ({"generator": [torch.Generator(), torch.Generator()]}, "2 generators for 1 images"),
])
def test_bad_arguments(tiny_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_pipe, **kwargs)


@pytest.mark.parametrize("image, message", [
    ("photo.png", "Images must be PIL.Image.Image or uint8 numpy arrays, got str"),
    (torch.zeros(3, 32, 32), "got Tensor"),
    (np.zeros((32, 32, 3), dtype=np.float32), "must be uint8"),
    (Image.new("I;16", (32, 32)), "16-bit or float"),
    (Image.new("F", (32, 32)), "16-bit or float"),
    (Image.new("RGB", (8, 32)), "too small"),
    (Image.new("L", (4097, 4097)), "exceeds the limit"),
])
def test_bad_image(tiny_pipe, image, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_pipe, "edit", image=image)


def test_transparent_and_grey_images_are_accepted(tiny_pipe):
    for image in (Image.new("RGBA", (32, 32), (255, 0, 0, 0)), Image.new("L", (32, 32), 128),
                  np.zeros((32, 32), dtype=np.uint8)):
        assert run(tiny_pipe, "edit", image=image, num_inference_steps=1, output_type="latent").shape == \
            latent_shape(1)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no real pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size, message", [(100_000, "too large to decode safely"), (5000, "exceeds the limit")])
def test_load_image_refuses_decompression_bombs(tmp_path, size, message):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(size, size))
    with pytest.raises(ValueError, match=message):
        load_image(path)


def test_load_image_refuses_non_images(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "missing.png")


def test_long_prompts_are_not_cut_below_the_vlm_positions(tiny_pipe, caplog):
    prompt = " ".join(["red circle"] * 700)  # > 1024 tokens: the old limit, which the authors do not have
    assert len(tiny_pipe.tokenizer(prompt)["input_ids"]) > 1024
    with caplog.at_level(logging.WARNING, logger="deepgen.vlm"):
        inputs = tiny_pipe.processor([prompt, ""])
    assert not caplog.records
    assert prompt in tiny_pipe.tokenizer.decode(inputs.input_ids[0])


def test_prompts_beyond_the_vlm_positions_are_cut_with_a_warning(tiny_pipe, caplog):
    limit = tiny_pipe.vlm.config.text_config.max_position_embeddings - tiny_pipe.scb.config.num_queries
    assert tiny_pipe.processor.max_sequence_length == limit
    prompt = " ".join(["red circle"] * limit)
    with caplog.at_level(logging.WARNING, logger="deepgen.vlm"):
        inputs = tiny_pipe.processor([prompt, ""])
    assert limit - 4 <= inputs.input_ids.shape[1] <= limit  # the text is cut to fit, the template kept
    assert tiny_pipe.tokenizer.decode(inputs.input_ids[0]).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert any("exceeds the" in r.getMessage() and f"{limit} positions" in r.getMessage() for r in caplog.records)


# --- offloading and persistence --------------------------------------------------------------------------------


def test_model_cpu_offload_on_cpu():
    """accelerate's model offload accepts the CPU as execution device; results are unchanged."""
    pipe = DeepGenPipeline.from_config("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    expected = run(pipe, output_type="latent")
    expected_edit = run(pipe, "edit", image=picture(), output_type="latent")
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._execution_device.type == "cpu"
    assert torch.equal(run(pipe, output_type="latent"), expected)
    assert torch.equal(run(pipe, "edit", image=picture(), output_type="latent"), expected_edit)


def test_from_config_save_load_round_trip(tmp_path: Path):
    pipe = DeepGenPipeline.from_config("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "tiny")
    loaded = DeepGenPipeline.from_pretrained(tmp_path / "tiny")
    loaded.set_progress_bar_config(disable=True)
    for name in ("vlm", "scb", "transformer", "vae"):
        ours, theirs = getattr(loaded, name).state_dict(), getattr(pipe, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert {k: v for k, v in loaded.scheduler.config.items() if not k.startswith("_")} == \
        {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    assert torch.equal(run(loaded, output_type="latent"), run(pipe, output_type="latent"))
    assert torch.equal(run(loaded, "edit", image=picture(), output_type="latent"),
                       run(pipe, "edit", image=picture(), output_type="latent"))


# --- guidance, seeds and the release card's arguments ------------------------------------------------------------


def test_classifier_free_guidance_formula():
    cond, uncond = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 4.0), torch.tensor([9.0, -7.0]))
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_guidance_at_most_one_is_one_conditional_pass(conditioned_pipe, scale):
    """The authors' pipeline guides only when guidance_scale > 1: below, no batch doubling and no extrapolation
    towards or away from the unconditional velocity (which differs from the conditional one here)."""
    pipe, batches = conditioned_pipe, []
    hook = pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, output: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        latents = run(pipe, ["a red circle", "a blue square"], guidance_scale=scale, output_type="latent")
    finally:
        hook.remove()
    assert batches == [2] * STEPS
    conditional = run(pipe, ["a red circle", "a blue square"], guidance_scale=1.0, output_type="latent")
    assert torch.equal(latents, conditional)
    guided = run(pipe, ["a red circle", "a blue square"], guidance_scale=1.5, output_type="latent")
    assert not torch.allclose(guided, conditional, atol=1e-4), "cond and uncond velocities must differ here"


def test_seed_argument_of_the_release_card(tiny_pipe):
    by_seed = tiny_pipe("a red circle", height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=4.0,
                        seed=42, output_type="latent").images
    by_generator = run(tiny_pipe, seed=42, output_type="latent")
    assert torch.equal(by_seed, by_generator)
    with pytest.raises(ValueError, match="either `seed` or `generator`"):
        tiny_pipe("a", seed=1, generator=torch.Generator().manual_seed(1), num_inference_steps=1)
    for bad in (-1, 1.5, "7", True):
        with pytest.raises(ValueError, match="`seed` must be a non-negative integer"):
            tiny_pipe("a", seed=bad, num_inference_steps=1)


def test_edit_negative_prompt_is_the_authors_benchmark_string(golden):
    benchmarks = (golden.parent / "BENCHMARKS.md").read_text()
    assert f"`{EDIT_NEGATIVE_PROMPT}`" in benchmarks
    assert inspect.signature(DeepGenPipeline.__call__).parameters["negative_prompt"].default is None  # means ""

"""Speed options (deepgen/acceleration.py) on tiny random pipelines: each applies, the pipeline still runs, and the
output moves only where the option says it may. No speed numbers here (benchmarks/ measures them)."""

from __future__ import annotations

import copy
import logging
import sys
import types
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from deepgen import DeepGenPipeline
from deepgen.acceleration import (DEFAULT_CACHE_THRESHOLD, AccelerationOptions, accelerate, apply_ahead_of_time,
                                  compile_ahead_of_time, compile_counters, count_cached_steps, enable_offload,
                                  enable_step_cache, quantize)
from deepgen.config import get_preset


def make_pipe(layers: int = 4) -> DeepGenPipeline:
    """The tiny preset with ``layers`` DiT layers (First Block Cache needs at least 3)."""
    config = get_preset("tiny")
    config.transformer["num_layers"] = layers
    pipe = DeepGenPipeline.from_config(config, seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(pipe: DeepGenPipeline, prompt: str = "a red fox in the snow", size: int = 64, steps: int = 8,
            image: Image.Image | None = None) -> torch.Tensor:
    return pipe(prompt, image=image, height=size, width=size, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def eager() -> torch.Tensor:
    return latents(make_pipe())


# --- options ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"quantize": "int4"}, "`quantize` must be one of"),
    ({"offload": "disk"}, "`offload` must be one of"),
    ({"cache_threshold": 0.0}, "`cache_threshold` must be a number in (0, 1)"),
    ({"cache_threshold": 1.5}, "`cache_threshold` must be a number in (0, 1)"),
    ({"quantize_components": ("vae",)}, "`quantize_components` may hold"),
    ({"compile": True, "compile_mode": "turbo"}, "`compile_mode` must be one of"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AccelerationOptions(**kwargs)


def test_options_record_round_trip():
    options = AccelerationOptions.fast(quantize="int8-weight-only")
    record = options.to_record()
    assert record["compile"] and record["cache_threshold"] == DEFAULT_CACHE_THRESHOLD
    assert record["quantize"] == "int8-weight-only"
    assert AccelerationOptions.from_record(record) == options
    assert options.changes_results and not AccelerationOptions(compile=True).changes_results
    assert not AccelerationOptions().enabled
    with pytest.raises(ValueError, match="Unknown acceleration options"):
        AccelerationOptions.from_record({"turbo": True})


# --- First Block Cache ----------------------------------------------------------------------------------------


def test_cache_at_a_tiny_threshold_skips_nothing_and_changes_nothing(eager):
    pipe = make_pipe()
    accelerate(pipe, AccelerationOptions(cache_threshold=0.01))
    with count_cached_steps(pipe) as stats:
        out = latents(pipe)
    assert (stats.calls, stats.skipped) == (8, 0)
    assert torch.equal(out, eager)


def test_cache_skips_steps_and_moves_the_output_a_little(eager):
    pipe = make_pipe()
    enable_step_cache(pipe, 0.5)
    with count_cached_steps(pipe) as first:
        out = latents(pipe)
    assert first.calls == 8 and first.skipped >= 4
    difference = (out - eager).abs()
    assert 0 < difference.max() < 0.2 and difference.mean() < 0.05
    # The pipeline resets the cache after each call: a second call repeats the first exactly.
    with count_cached_steps(pipe) as second:
        assert torch.equal(latents(pipe), out)
    assert second.skipped == first.skipped
    # A different size right after works (no stale residual of the previous shape) and disabling restores eager.
    latents(pipe, size=96, steps=2)
    pipe.transformer.disable_cache()
    assert torch.equal(latents(pipe), eager)


def test_cache_state_of_a_cancelled_call_does_not_leak(eager):
    pipe = make_pipe()
    enable_step_cache(pipe, 0.01)

    def cancel(_pipe, step, _t, tensors):
        if step == 2:
            raise KeyboardInterrupt("the user pressed stop")
        return tensors

    with pytest.raises(KeyboardInterrupt):
        pipe("a red fox in the snow", height=96, width=96, num_inference_steps=8, callback_on_step_end=cancel)
    assert torch.equal(latents(pipe), eager)  # another size, then the same result as a fresh pipeline


def test_cache_works_for_edits():
    pipe = make_pipe()
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    reference = latents(pipe, "make it blue", image=source)
    enable_step_cache(pipe, 0.01)
    assert torch.equal(latents(pipe, "make it blue", image=source), reference)


def test_cache_needs_three_layers_and_is_enabled_once():
    with pytest.raises(ValueError, match="at least 3 layers"):
        enable_step_cache(make_pipe(layers=2), 0.1)
    pipe = make_pipe()
    enable_step_cache(pipe, 0.1)
    with pytest.raises(ValueError, match="already enabled"):
        enable_step_cache(pipe, 0.2)


# --- quantisation and offloading --------------------------------------------------------------------------------


def test_int8_weight_only_quantises_the_dit_and_vlm_and_stays_close(eager):
    pytest.importorskip("torchao")
    pipe = make_pipe()
    record = accelerate(pipe, AccelerationOptions(quantize="int8-weight-only"))
    assert record["quantize"] == "int8-weight-only"
    block_weight = pipe.transformer.transformer_blocks[0].ff.net[0].proj.weight
    vlm_weight = pipe.vlm.model.language_model.layers[0].mlp.up_proj.weight
    assert "Int8" in type(block_weight).__name__ and "Int8" in type(vlm_weight).__name__
    assert type(pipe.transformer.proj_out.weight) is torch.nn.Parameter  # small layers stay as they are
    difference = (latents(pipe) - eager).abs()
    assert difference.max() < 0.02


def test_fp8_is_refused_off_cuda():
    pytest.importorskip("torchao")
    with pytest.raises(ValueError, match="fp8 quantisation needs a CUDA GPU of compute capability 8.9"):
        quantize(make_pipe(), "fp8")


def test_quantisation_without_torchao_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ImportError, match="pip install torchao"):
        quantize(make_pipe(), "int8-weight-only")


@pytest.mark.parametrize("mode", ["model", "group"])
def test_offload_needs_an_accelerator(mode):
    with pytest.raises(ValueError, match="runs on the CPU already"):
        enable_offload(make_pipe(), mode, torch.device("cpu"))


# --- compilation ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_regional_compile_matches_eager_without_recompiles(eager):
    torch._dynamo.reset()
    pipe = make_pipe()
    accelerate(pipe, AccelerationOptions(compile=True))
    torch.testing.assert_close(latents(pipe), eager, atol=1e-4, rtol=1e-4)
    before = compile_counters()
    latents(pipe, "a red fox sitting in deep fresh snow at dusk under a pine tree, watercolor on rough paper")
    latents(pipe, "fox", size=96)
    assert compile_counters()["recompiles"] == before["recompiles"]


class _Call:
    args: tuple
    kwargs: dict


def fake_spaces() -> types.ModuleType:
    """Stands in for ZeroGPU's ``spaces``: capture records the first call, compile keeps the exported program,
    apply runs it with the block's own weights (a copy: the exported module aliases the exported block's)."""
    module = types.ModuleType("spaces")

    @contextmanager
    def aoti_capture(block):
        call, original = _Call(), block.forward

        def record(*args, **kwargs):
            if not hasattr(call, "args"):
                call.args, call.kwargs = args, kwargs
            return original(*args, **kwargs)

        block.forward = record
        try:
            yield call
        finally:
            block.forward = original

    def aoti_apply(exported, block):
        graph = copy.deepcopy(exported.module())
        graph.load_state_dict(block.state_dict())
        block.forward = graph

    module.aoti_capture = aoti_capture
    module.aoti_compile = lambda exported, configs=None: exported
    module.aoti_apply = aoti_apply
    return module


@pytest.mark.slow
def test_ahead_of_time_blocks_serve_every_size_and_edits(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces())
    pipe = make_pipe()
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    expected = [latents(pipe, steps=2), latents(pipe, "fox", size=96, steps=2),
                latents(pipe, "make it blue", image=source, steps=2)]
    compiled = compile_ahead_of_time(pipe, lambda: latents(pipe, steps=1))
    assert len(compiled) == 3  # dual-attention, plain and context-pre-only blocks
    assert apply_ahead_of_time(pipe, compiled)
    got = [latents(pipe, steps=2), latents(pipe, "fox", size=96, steps=2),
           latents(pipe, "make it blue", image=source, steps=2)]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ahead_of_time_falls_back_to_eager(monkeypatch, caplog, eager):
    pipe = make_pipe()
    monkeypatch.setitem(sys.modules, "spaces", None)
    with caplog.at_level(logging.WARNING, logger="deepgen.acceleration"):
        assert compile_ahead_of_time(pipe, lambda: latents(pipe, steps=1)) is None
    assert "needs the `spaces` package" in caplog.text
    assert not apply_ahead_of_time(pipe, None)
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces())

    def failing_capture():
        raise RuntimeError("no GPU in this test")

    with caplog.at_level(logging.WARNING, logger="deepgen.acceleration"):
        assert compile_ahead_of_time(pipe, failing_capture) is None
    assert "failed (RuntimeError: no GPU in this test); running eager" in caplog.text
    with caplog.at_level(logging.WARNING, logger="deepgen.acceleration"):
        assert not apply_ahead_of_time(pipe, {(False, False): object()})  # programs of another DiT
    assert "running eager" in caplog.text
    assert torch.equal(latents(pipe), eager)

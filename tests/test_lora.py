"""LoRA adapters on the VLM and the DiT (deepgen/lora.py) and how pipelines save and restore them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from deepgen import DeepGenPipeline
from deepgen.lora import (
    ADAPTER_WEIGHTS,
    add_lora,
    has_lora,
    is_merged,
    load_lora,
    lora_layers,
    lora_parameters,
    lora_target_modules,
    merge_lora,
    save_lora,
    unmerge_lora,
)

PROMPTS = ["make the circle green"]


def _tiny(seed: int = 0) -> DeepGenPipeline:
    """The tiny preset with random SCB heads: like the authors, ``projector_2/3`` start at zero, which would make
    the SCB outputs (and so every VLM comparison below) zero whatever the VLM does."""
    pipe = DeepGenPipeline.from_config("tiny", seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in (pipe.scb.projector_2, pipe.scb.projector_3):
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _perturb(module: nn.Module, seed: int = 1) -> None:
    """LoRA B starts at zero (identity adapter); give it values so the adapter matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _source() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8))


def vlm_conditions(pipe: DeepGenPipeline) -> tuple[torch.Tensor, torch.Tensor]:
    """SCB outputs of an edit prompt: exercises the LLM, embedding, ViT and merger adapters."""
    references, _, _ = pipe.prepare_images(_source(), len(PROMPTS), 32, 32)
    seq, pooled = pipe.encode_prompt(PROMPTS, [""] * len(PROMPTS), references)
    assert pooled.abs().max() > 0, "all-zero SCB output: comparisons would be vacuous"
    return seq, pooled


def generate(pipe: DeepGenPipeline) -> torch.Tensor:
    return pipe(PROMPTS, image=_source(), height=32, width=32, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="latent").images


def assert_pair_close(a, b, atol: float) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


def _adapted_modules(module: nn.Module) -> set[str]:
    layers = set(lora_layers(module))
    return {name for name, sub in module.named_modules() if sub in layers}


def _base_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "lora_" not in k}


# --- the VLM ---------------------------------------------------------------------------------------------------


def test_vlm_lora_targets_every_linear_and_embedding():
    pipe = _tiny()
    targets = lora_target_modules(pipe.vlm)
    assert "model.language_model.embed_tokens" in targets and "lm_head" in targets
    assert any(t.startswith("model.visual.blocks.") for t in targets)
    assert any(t.startswith("model.visual.merger.") for t in targets)
    assert "model.visual.patch_embed.proj" not in targets  # a Conv3d
    add_lora(pipe.vlm, rank=4, alpha=8)
    assert _adapted_modules(pipe.vlm) == set(targets)
    assert all(p.numel() > 0 for p in lora_parameters(pipe.vlm))


def test_vlm_lora_changes_merges_and_unmerges():
    pipe = _tiny()
    before = vlm_conditions(pipe)
    add_lora(pipe.vlm, rank=4, alpha=8)
    assert_pair_close(vlm_conditions(pipe), before, atol=0)  # B = 0: an identity adapter
    _perturb(pipe.vlm)
    adapted = vlm_conditions(pipe)
    assert not torch.allclose(adapted[1], before[1], atol=1e-3), "the LoRA has no effect"

    weights = _base_weights(pipe.vlm)
    merge_lora(pipe.vlm)
    assert is_merged(pipe.vlm)
    assert_pair_close(vlm_conditions(pipe), adapted, atol=1e-5)
    embed = pipe.vlm.get_input_embeddings().get_base_layer().weight
    assert embed is pipe.vlm.lm_head.get_base_layer().weight, "merging must not untie the embeddings"
    unmerge_lora(pipe.vlm)
    assert not is_merged(pipe.vlm)
    for key, value in _base_weights(pipe.vlm).items():
        torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=0, msg=lambda m, key=key: f"{key}: {m}")
    assert_pair_close(vlm_conditions(pipe), adapted, atol=1e-6)


def test_vlm_lora_save_load_round_trip(tmp_path):
    pipe = _tiny()
    add_lora(pipe.vlm, rank=4, alpha=8)
    _perturb(pipe.vlm)
    save_lora(pipe.vlm, tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)
    assert saved and all("lora_" in k for k in saved), "the adapter file must hold adapter tensors only"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)

    fresh = _tiny()
    load_lora(fresh.vlm, tmp_path / "adapter")
    assert has_lora(fresh.vlm)
    assert_pair_close(vlm_conditions(fresh), vlm_conditions(pipe), atol=0)


def test_a_saved_vlm_adapter_loads_identically_through_transformers_own_load_adapter(tmp_path):
    """Our adapter folders are peft's format with model-relative keys (as in the authors' checkpoints), so the
    library's own loader reads them too: a user needs no deepgen code to apply a DeepGen VLM adapter."""
    pipe = _tiny()
    add_lora(pipe.vlm, rank=4, alpha=8)
    _perturb(pipe.vlm)
    save_lora(pipe.vlm, tmp_path / "adapter")
    fresh = _tiny()
    fresh.vlm.load_adapter(str(tmp_path / "adapter"))
    assert_pair_close(vlm_conditions(fresh), vlm_conditions(pipe), atol=0)


def test_load_lora_refuses_tensors_that_do_not_fit(tmp_path):
    pipe = _tiny()
    add_lora(pipe.vlm, rank=4, alpha=8)
    save_lora(pipe.vlm, tmp_path / "adapter")
    state = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)
    state["model.language_model.layers.0.mlp.extra.lora_A.weight"] = torch.zeros(4, 4)
    save_file(state, tmp_path / "adapter" / ADAPTER_WEIGHTS)
    with pytest.raises(ValueError, match="does not fit"):
        load_lora(_tiny().vlm, tmp_path / "adapter")


def test_add_lora_bad_arguments():
    with pytest.raises(ValueError, match="rank must be >= 1"):
        add_lora(nn.Linear(2, 2), rank=0, alpha=1)
    with pytest.raises(ValueError, match="No LoRA target modules"):
        add_lora(nn.Sequential(nn.ReLU()), rank=2, alpha=2)
    with pytest.raises(ValueError, match="no LoRA adapter named"):
        save_lora(nn.Linear(2, 2), "unused")


# --- the DiT ---------------------------------------------------------------------------------------------------


def test_dit_lora_changes_round_trips_merges_and_unmerges(tmp_path):
    pipe = _tiny()
    before = generate(pipe)
    add_lora(pipe.transformer, rank=4, alpha=8)
    assert has_lora(pipe.transformer) and not has_lora(pipe.vlm)
    torch.testing.assert_close(generate(pipe), before, atol=0, rtol=0)
    _perturb(pipe.transformer)
    adapted = generate(pipe)
    assert not torch.allclose(adapted, before, atol=1e-3)

    save_lora(pipe.transformer, tmp_path / "dit_adapter")
    fresh = _tiny()
    load_lora(fresh.transformer, tmp_path / "dit_adapter")
    torch.testing.assert_close(generate(fresh), adapted, atol=0, rtol=0)

    weights = _base_weights(pipe.transformer)
    merge_lora(pipe.transformer)
    assert is_merged(pipe.transformer)
    torch.testing.assert_close(generate(pipe), adapted, atol=1e-5, rtol=0)
    unmerge_lora(pipe.transformer)
    assert not is_merged(pipe.transformer)
    for key, value in _base_weights(pipe.transformer).items():
        torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=0, msg=lambda m, key=key: f"{key}: {m}")
    torch.testing.assert_close(generate(pipe), adapted, atol=1e-5, rtol=0)


# --- pipelines -------------------------------------------------------------------------------------------------


def test_pipeline_save_pretrained_keeps_adapters_apart(tmp_path):
    pipe = _tiny()
    add_lora(pipe.vlm, rank=4, alpha=8)
    add_lora(pipe.transformer, rank=2, alpha=2)
    _perturb(pipe.vlm)
    _perturb(pipe.transformer, seed=2)
    pipe.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "vlm_lora" / ADAPTER_WEIGHTS).is_file()
    assert (tmp_path / "pipe" / "transformer_lora" / ADAPTER_WEIGHTS).is_file()
    base_keys = load_file(tmp_path / "pipe" / "vlm" / "model.safetensors")
    assert not any("lora_" in k or "base_layer" in k for k in base_keys)

    loaded = DeepGenPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert has_lora(loaded.vlm) and has_lora(loaded.transformer)
    assert not is_merged(loaded.vlm) and not is_merged(loaded.transformer)
    assert len(lora_layers(loaded.vlm)) == len(lora_layers(pipe.vlm))
    assert torch.equal(generate(loaded), generate(pipe))


@pytest.mark.parametrize("component", ["vlm", "transformer"])
def test_saving_a_merged_pipeline_raises(tmp_path, component):
    pipe = _tiny()
    add_lora(getattr(pipe, component), rank=2, alpha=2)
    merge_lora(getattr(pipe, component))
    with pytest.raises(ValueError, match=rf"unmerge_lora\(pipe\.{component}\)"):
        pipe.save_pretrained(tmp_path / "pipe")
    assert not (tmp_path / "pipe").exists()
    assert list(tmp_path.iterdir()) == [], "a refused save left files behind"


def test_fixture_native_lora_loads_as_adapters(golden):
    pipe = DeepGenPipeline.from_native_checkpoint(golden / "checkpoint_native_with_lora.pt", vlm=golden / "vlm",
                                                  dit=golden)
    assert has_lora(pipe.vlm) and not is_merged(pipe.vlm)
    adapted = _adapted_modules(pipe.vlm)
    expected = set(json.loads((golden / "keys.json").read_text())["lmm_lora_target_modules"])
    assert adapted == expected
    config = pipe.vlm.peft_config["default"]
    assert (config.r, config.lora_alpha) == (4, 8)  # alpha from native_config.json

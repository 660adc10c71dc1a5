"""Typed configs and presets (deepgen/config.py), including the full-size preset built on the meta device."""

from __future__ import annotations

import dataclasses

import pytest

from deepgen import DeepGenConfig, DeepGenPipeline, get_preset
from deepgen.config import PRESETS, reference_scb_layers


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name, tmp_path):
    config = get_preset(name)
    config.to_json_file(tmp_path / "config.json")
    loaded = DeepGenConfig.from_json_file(tmp_path / "config.json")
    assert loaded == config
    assert loaded.to_dict() == config.to_dict()
    assert DeepGenConfig.from_dict(config.to_dict()) == config


def test_get_preset_returns_fresh_copies_and_overrides():
    first = get_preset("tiny")
    first.vlm["text_config"]["hidden_size"] = 1
    assert get_preset("tiny").vlm["text_config"]["hidden_size"] != 1
    assert get_preset("tiny", num_queries=7).num_queries == 7
    with pytest.raises(ValueError, match="Unknown DeepGen preset 'nope'"):
        get_preset("nope")


def test_reference_scb_layers():
    assert reference_scb_layers(36) == [35, 29, 23, 17, 11, 5]
    assert reference_scb_layers(4) == [3]
    assert reference_scb_layers(6, stride=1) == [5, 4, 3, 2, 1]
    with pytest.raises(ValueError, match="at least 2 decoder layers"):
        reference_scb_layers(1)


@pytest.mark.parametrize("layers", [[], [5], [-1], [3, 2, 99]])
def test_bad_scb_layers_raise(layers):
    # tiny: 4 decoder layers -> hidden-state indices 0..4
    with pytest.raises(ValueError, match="scb_layers"):
        get_preset("tiny", scb_layers=layers)


def test_bad_fields_raise():
    with pytest.raises(ValueError, match="num_queries"):
        get_preset("tiny", num_queries=0)
    data = get_preset("tiny").to_dict()
    data["num_layers"] = 3
    with pytest.raises(ValueError, match="Unknown DeepGenConfig fields.*num_layers"):
        DeepGenConfig.from_dict(data)


def test_deepgen_1_0_preset_values():
    """The published architecture (ARCHITECTURE.md, "Parts")."""
    config = get_preset("deepgen-1.0")
    text, vision = config.vlm["text_config"], config.vlm["vision_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"],
            text["num_key_value_heads"], text["intermediate_size"], text["vocab_size"]) == \
        (2048, 36, 16, 2, 11008, 151936)
    assert text["rope_scaling"]["mrope_section"] == [16, 24, 24]
    assert (vision["depth"], vision["hidden_size"], vision["out_hidden_size"], vision["window_size"],
            vision["fullatt_block_indexes"]) == (32, 1280, 2048, 112, [7, 15, 23, 31])
    assert config.vlm["image_token_id"] == 151655 and config.vlm["vision_start_token_id"] == 151652
    assert config.scb_layers == [35, 29, 23, 17, 11, 5]
    assert config.num_queries == 128
    assert dataclasses.asdict(config.connector) == {
        "hidden_size": 2048, "intermediate_size": 11946, "num_hidden_layers": 6, "num_attention_heads": 32,
        "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
    dit = config.transformer
    assert (dit["num_layers"], dit["num_attention_heads"], dit["attention_head_dim"], dit["joint_attention_dim"],
            dit["caption_projection_dim"], dit["pooled_projection_dim"], dit["pos_embed_max_size"]) == \
        (24, 24, 64, 4096, 1536, 2048, 384)
    assert dit["dual_attention_layers"] == list(range(13))
    assert (config.vae["scaling_factor"], config.vae["shift_factor"]) == (1.5305, 0.0609)
    assert (config.lora.rank, config.lora.alpha) == (64, 128)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_deepgen_1_0_builds_on_meta_with_plausible_sizes():
    pipe = DeepGenPipeline.from_config("deepgen-1.0", device="meta")
    assert {p.device.type for p in pipe.vlm.parameters()} == {"meta"}
    assert {p.device.type for p in pipe.transformer.parameters()} == {"meta"}
    assert pipe.tokenizer.convert_tokens_to_ids("<|image_pad|>") == pipe.vlm.config.image_token_id
    vlm, dit, bridge = _count(pipe.vlm), _count(pipe.transformer), _count(pipe.scb)
    assert 3.6e9 < vlm < 3.9e9, f"VLM has {vlm / 1e9:.3f}B parameters (Qwen2.5-VL-3B: ~3.75B, tied embeddings)"
    assert 2.0e9 < dit < 2.5e9, f"DiT has {dit / 1e9:.3f}B parameters (SD3.5-M Kontext: ~2.2B)"
    assert 0.3e9 < bridge < 0.5e9, f"think tokens + SCB have {bridge / 1e9:.3f}B parameters (~0.4B)"
    assert 0.05e9 < _count(pipe.vae) < 0.1e9
    # projector_1 stacks six 2048-wide hidden states
    assert tuple(pipe.scb.projector_1.weight.shape) == (2048, 6 * 2048)

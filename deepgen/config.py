"""Typed configuration of a DeepGen model, with named presets.

A :class:`DeepGenConfig` describes every architectural part (see ``ARCHITECTURE.md``): the Qwen2.5-VL encoder,
the think tokens, Stacked Channel Bridging with its connector, the Kontext DiT, the VAE and the scheduler. It
serializes to JSON, and :func:`get_preset` returns the published full-size model or small ones for tests.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


def reference_scb_layers(num_decoder_layers: int, stride: int = 6) -> list[int]:
    """The hidden-state indices DeepGen stacks: ``range(L - 1, 0, -stride)``, deepest first.

    ``output_hidden_states`` returns ``L + 1`` tensors (index 0 = input embeddings, ``k`` = output of decoder
    layer ``k - 1``, ``L`` = after the final norm). The authors take ``range(L - 1, 0, -6)``: for Qwen2.5-VL-3B
    (L = 36) that is [35, 29, 23, 17, 11, 5]; the final-norm output is never used.
    """
    if num_decoder_layers < 2:
        raise ValueError(f"The VLM needs at least 2 decoder layers to stack, got {num_decoder_layers}.")
    return list(range(num_decoder_layers - 1, 0, -stride))


@dataclass
class ConnectorConfig:
    """The SCB connector: a pre-LayerNorm bidirectional transformer encoder (SigLIP encoder layers)."""

    hidden_size: int = 2048
    intermediate_size: int = 11946
    num_hidden_layers: int = 6
    num_attention_heads: int = 32
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6


@dataclass
class LoraSettings:
    """LoRA on the VLM as the authors train it (stage 2): every Linear and Embedding module."""

    rank: int = 64
    alpha: int = 128  # alpha / rank = 2 is what the released weights were trained with
    dropout: float = 0.05


@dataclass
class DeepGenConfig:
    """Everything needed to build a DeepGen model with random weights.

    Component configs (``vlm``, ``transformer``, ``vae``, ``scheduler``) are plain dicts in the formats of
    transformers' ``Qwen2_5_VLConfig`` and diffusers' ``SD3Transformer2DModel`` / ``AutoencoderKL`` /
    ``FlowMatchEulerDiscreteScheduler`` configs, so they round-trip through those libraries unchanged.
    """

    vlm: dict[str, Any]
    transformer: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    num_queries: int = 128  # think tokens appended after the prompt
    scb_layers: Optional[list[int]] = None  # hidden-state indices to stack; None = reference_scb_layers(L)
    lora: LoraSettings = field(default_factory=LoraSettings)
    tokenizer_vocab_size: Optional[int] = None  # only for presets whose tokenizer is built offline

    def __post_init__(self) -> None:
        if isinstance(self.connector, dict):
            self.connector = ConnectorConfig(**self.connector)
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.scb_layers is None:
            self.scb_layers = reference_scb_layers(self.vlm_text_config["num_hidden_layers"])
        num_hidden_states = self.vlm_text_config["num_hidden_layers"] + 1
        bad = [i for i in self.scb_layers if not 0 <= i < num_hidden_states]
        if bad or not self.scb_layers:
            raise ValueError(
                f"scb_layers {self.scb_layers} must be a non-empty list of hidden-state indices in "
                f"[0, {num_hidden_states - 1}] (the VLM returns {num_hidden_states} hidden states)."
            )
        if self.num_queries < 1:
            raise ValueError(f"num_queries (think tokens) must be >= 1, got {self.num_queries}.")

    @property
    def vlm_text_config(self) -> dict[str, Any]:
        return self.vlm.get("text_config", self.vlm)

    @property
    def vlm_hidden_size(self) -> int:
        return self.vlm_text_config["hidden_size"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeepGenConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown DeepGenConfig fields {sorted(unknown)}; expected a subset of {sorted(known)}.")
        return cls(**copy.deepcopy(data))

    def to_json_file(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json_file(cls, path: Union[str, Path]) -> "DeepGenConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# --- presets -------------------------------------------------------------------------------------------------

_SCHEDULER_SD35M = {"num_train_timesteps": 1000, "shift": 3.0}

_VAE_SD3 = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
    "mid_block_add_attention": True,
}

# Qwen2.5-VL special tokens, in the order of the official tokenizer; their ids follow the BPE vocabulary.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)


def _qwen_token_ids(bpe_vocab_size: int) -> dict[str, int]:
    ids = {tok: bpe_vocab_size + i for i, tok in enumerate(QWEN_SPECIAL_TOKENS)}
    return {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vocab_size": bpe_vocab_size + len(QWEN_SPECIAL_TOKENS),
    }


def _small_vlm(hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, vision_hidden: int,
               vision_depth: int, vision_heads: int, bpe_vocab_size: int) -> dict[str, Any]:
    ids = _qwen_token_ids(bpe_vocab_size)
    head_dim = hidden // heads
    # M-RoPE splits head_dim / 2 rotary frequencies over (t, h, w); keep the 3B model's 16:24:24 proportions.
    t_section = head_dim // 2 // 4
    rest = head_dim // 2 - t_section
    text = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": mlp,
        "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "rope_scaling": {"type": "mrope", "mrope_section": [t_section, rest // 2, rest - rest // 2]},
        "tie_word_embeddings": True,
        "vocab_size": ids["vocab_size"],
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
    }
    vision = {
        "depth": vision_depth,
        "hidden_size": vision_hidden,
        "num_heads": vision_heads,
        "intermediate_size": 2 * vision_hidden,
        "out_hidden_size": hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [vision_depth - 1],
    }
    return {"text_config": text, "vision_config": vision, "tie_word_embeddings": True, **ids}


def _deepgen_1_0() -> DeepGenConfig:
    ids = _qwen_token_ids(151643)  # Qwen2.5's BPE vocabulary; the checkpoint's embedding is padded to 151936
    text = {
        "hidden_size": 2048,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "intermediate_size": 11008,
        "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 128000,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": True,
        "vocab_size": 151936,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    }
    vision = {
        "depth": 32,
        "hidden_size": 1280,
        "num_heads": 16,
        "intermediate_size": 3420,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    }
    ids["vocab_size"] = 151936
    vlm = {"text_config": text, "vision_config": vision, "tie_word_embeddings": True, **ids}
    transformer = {
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "num_layers": 24,
        "attention_head_dim": 64,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 1536,
        "pooled_projection_dim": 2048,
        "out_channels": 16,
        "pos_embed_max_size": 384,
        "dual_attention_layers": list(range(13)),
        "qk_norm": "rms_norm",
    }
    return DeepGenConfig(
        vlm=vlm,
        transformer=transformer,
        vae=copy.deepcopy(_VAE_SD3),
        scheduler=dict(_SCHEDULER_SD35M),
        connector=ConnectorConfig(),
        num_queries=128,
        lora=LoraSettings(rank=64, alpha=128),
    )


def _tiny() -> DeepGenConfig:
    """A random model that builds and runs on one CPU core in about a second (used by tests)."""
    bpe = 480
    transformer = {
        "sample_size": 64,  # default output 512 px, the size a user of the pipeline expects
        "patch_size": 2,
        "in_channels": 16,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": 24,
        "caption_projection_dim": 16,
        "pooled_projection_dim": 12,
        "out_channels": 16,
        "pos_embed_max_size": 32,
        "dual_attention_layers": [0],
        "qk_norm": "rms_norm",
    }
    vae = dict(copy.deepcopy(_VAE_SD3), block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
               sample_size=64)
    return DeepGenConfig(
        vlm=_small_vlm(hidden=32, layers=4, heads=2, kv_heads=1, mlp=64, vision_hidden=16, vision_depth=2,
                       vision_heads=2, bpe_vocab_size=bpe),
        transformer=transformer,
        vae=vae,
        scheduler=dict(_SCHEDULER_SD35M),
        connector=ConnectorConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2),
        num_queries=4,
        scb_layers=[3, 2, 1],
        lora=LoraSettings(rank=4, alpha=8),
        tokenizer_vocab_size=bpe,
    )


def _nano() -> DeepGenConfig:
    """DeepGen-nano: the shipped offline model, trained on the shape world (``train/nano/``) in about an hour
    on a 2-core CPU, generating 64 px images in about a second.

    Odd values and why: the VAE has 3 blocks (factor 4), so a 64 px image is a 16x16 latent and the DiT sees
    8x8 = 64 tokens; the ViT uses 7 px patches so that a 64 px reference (56 px after the 28/32 resize) gives
    8x8 patches merged to 4x4 = 16 image tokens, one per ~16 px, finer than the world's 21 px grid cells; SCB
    stacks every decoder layer but the last (``reference_scb_layers(6, stride=1)``), the nano analogue of the
    reference's stride 6 over 36 layers. ``scaling_factor`` / ``shift_factor`` are placeholders that
    ``train/nano/pretrain_vae.py`` replaces with the measured latent statistics; the VAE's GroupNorm has 4 groups
    because one channel per group normalises away the flat colours it must reproduce.
    """
    bpe = 480  # the world's phrases need fewer merges; build_tokenizer pads the rest with unused ids
    vlm = _small_vlm(hidden=128, layers=6, heads=4, kv_heads=2, mlp=384, vision_hidden=64, vision_depth=2,
                     vision_heads=2, bpe_vocab_size=bpe)
    vlm["vision_config"].update(patch_size=7, window_size=28)
    transformer = {
        "sample_size": 16,
        "patch_size": 2,
        "in_channels": 8,
        "num_layers": 4,
        "attention_head_dim": 32,
        "num_attention_heads": 4,
        "joint_attention_dim": 128,
        "caption_projection_dim": 128,  # SD3 requires caption_projection_dim == heads * head_dim
        "pooled_projection_dim": 64,
        "out_channels": 8,
        "pos_embed_max_size": 16,
        "dual_attention_layers": [0],
        "qk_norm": "rms_norm",
    }
    vae = dict(copy.deepcopy(_VAE_SD3), down_block_types=["DownEncoderBlock2D"] * 3,
               up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[16, 32, 64], layers_per_block=1,
               latent_channels=8, norm_num_groups=4, sample_size=64, scaling_factor=1.0, shift_factor=0.0,
               mid_block_add_attention=False)
    return DeepGenConfig(
        vlm=vlm,
        transformer=transformer,
        vae=vae,
        scheduler=dict(_SCHEDULER_SD35M),
        connector=ConnectorConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                                  num_attention_heads=4),
        num_queries=16,
        scb_layers=reference_scb_layers(6, stride=1),
        lora=LoraSettings(rank=8, alpha=16),
        tokenizer_vocab_size=bpe,
    )


PRESETS = {"deepgen-1.0": _deepgen_1_0, "tiny": _tiny, "nano": _nano}


def get_preset(name: str, **overrides: Any) -> DeepGenConfig:
    """Return a fresh copy of a named preset, with top-level fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"Unknown DeepGen preset {name!r}; choose one of {sorted(PRESETS)}.")
    config = PRESETS[name]()
    return dataclasses.replace(config, **overrides) if overrides else config

"""``DeepGenModel``: the trainable whole (VLM + think tokens/SCB + Kontext DiT) as one ``nn.Module``.

The pipeline owns the same components for inference; training wraps them in this module so that accelerate
(DDP/FSDP/DeepSpeed) sees one model whose forward returns the flow-matching velocity.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from .config import DeepGenConfig
from .kontext import KontextSD3Transformer2DModel
from .scb import StackedChannelBridge
from .vlm import VLMInputs, vlm_hidden_states


def build_vlm(config: DeepGenConfig, torch_dtype: torch.dtype = torch.float32) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL with random weights from ``config.vlm`` (SDPA attention, as the released model's parity needs)."""
    vlm_config = Qwen2_5_VLConfig(**config.vlm)
    return Qwen2_5_VLForConditionalGeneration._from_config(
        vlm_config, attn_implementation="sdpa", dtype=torch_dtype
    )


def build_bridge(config: DeepGenConfig) -> StackedChannelBridge:
    """Think tokens + SCB sized to connect ``config.vlm`` to ``config.transformer``."""
    return StackedChannelBridge(
        vlm_hidden_size=config.vlm_hidden_size,
        num_queries=config.num_queries,
        scb_layers=list(config.scb_layers),
        joint_attention_dim=config.transformer["joint_attention_dim"],
        pooled_projection_dim=config.transformer["pooled_projection_dim"],
        connector_config=vars(config.connector).copy(),
    )


class DeepGenModel(nn.Module):
    """VLM encoder -> SCB -> Kontext DiT. Holds references to the pipeline's components (no copies).

    The SCB (``pipe.scb``) sits under the name ``connector`` here: training checkpoints key its parameters
    ``connector.*`` (the authors' too), and those names are kept.
    """

    def __init__(self, vlm: Qwen2_5_VLForConditionalGeneration, connector: StackedChannelBridge,
                 transformer: KontextSD3Transformer2DModel):
        super().__init__()
        self.vlm = vlm
        self.connector = connector
        self.transformer = transformer

    def encode_condition(self, inputs: VLMInputs, masked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt rows -> DiT conditions ``(seq (R, L+Q, joint_dim), pooled (R, pooled_dim))``.

        ``masked=False`` reproduces the released model (pads take part in the connector and the mean).
        """
        hidden_states, mask = vlm_hidden_states(self.vlm, inputs, self.connector.meta_queries)
        return self.connector(hidden_states, attention_mask=mask if masked else None)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        reference_latents: Optional[Sequence[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """The flow-matching velocity (B, C, h, w) of ``latents`` at ``timestep`` (B,) = sigma * 1000."""
        dtype = self.transformer.dtype
        return self.transformer(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            pooled_projections=pooled_projections.to(dtype),
            timestep=timestep,
            reference_latents=[ref.to(dtype) for ref in reference_latents or ()],
            return_dict=False,
        )[0]

    def velocity_from_inputs(self, latents: torch.Tensor, timestep: torch.Tensor, inputs: VLMInputs,
                             reference_latents: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Encode ``inputs`` then predict the velocity: the differentiable path used in training."""
        seq, pooled = self.encode_condition(inputs)
        return self(latents, timestep, seq, pooled, reference_latents)

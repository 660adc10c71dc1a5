"""Think tokens and Stacked Channel Bridging (SCB), the bridge from the VLM to the DiT.

SCB takes the hidden states of several VLM layers (deepest first), stacks them on the channel axis, projects
them to the connector width (``projector_1``), runs the connector, and produces the DiT's two conditions:
the context sequence (``projector_3``) and the pooled vector (``projector_2`` of the mean over positions).
The think tokens (``meta_queries``) are learnable embeddings appended after the prompt; they live here because
they are trained together with the bridge.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .config import ConnectorConfig
from .connector import build_connector


class StackedChannelBridge(ModelMixin, ConfigMixin):
    """Think tokens + SCB. Parameter names match the authors' checkpoints (``meta_queries``, ``projector_1``,
    ``connector.layers.*``, ``projector_2``, ``projector_3``).

    Args:
        vlm_hidden_size: width of the VLM's hidden states (2048 for Qwen2.5-VL-3B).
        num_queries: number of think tokens (128).
        scb_layers: hidden-state indices to stack, deepest first ([35, 29, 23, 17, 11, 5]).
        joint_attention_dim: width of the DiT context (4096), output of ``projector_3``.
        pooled_projection_dim: width of the DiT pooled vector (2048), output of ``projector_2``.
        connector_config: :class:`ConnectorConfig` fields as a dict.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        vlm_hidden_size: int = 2048,
        num_queries: int = 128,
        scb_layers: Sequence[int] = (35, 29, 23, 17, 11, 5),
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 2048,
        connector_config: Optional[dict] = None,
    ):
        super().__init__()
        config = ConnectorConfig(**(connector_config or {}))
        self.scb_layers = list(scb_layers)
        self.meta_queries = nn.Parameter(torch.randn(num_queries, vlm_hidden_size) * vlm_hidden_size**-0.5)
        self.projector_1 = nn.Linear(vlm_hidden_size * len(self.scb_layers), config.hidden_size)
        self.connector = build_connector(config)
        self.projector_2 = nn.Linear(config.hidden_size, pooled_projection_dim)
        self.projector_3 = nn.Linear(config.hidden_size, joint_attention_dim)
        # The authors zero-initialise both heads so that a fresh bridge starts from an unconditional DiT.
        for head in (self.projector_2, self.projector_3):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Choose the connector's attention kernel (``"sdpa"``, the default, or ``"eager"``, as the authors'
        flash-attention-free reference); the connector reads it from its config at every forward."""
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"The connector supports attn_implementation 'sdpa' or 'eager', got "
                             f"{attn_implementation!r}.")
        self.connector.config._attn_implementation = attn_implementation

    def stack(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate the selected VLM hidden states on channels: (B, T, H) each -> (B, T, H * len(scb_layers))."""
        if len(hidden_states) <= max(self.scb_layers):
            raise ValueError(
                f"SCB needs hidden-state index {max(self.scb_layers)} but the VLM returned {len(hidden_states)} "
                "hidden states; the bridge and the VLM come from different configs."
            )
        return torch.cat([hidden_states[i] for i in self.scb_layers], dim=-1)

    def forward(
        self, hidden_states: Sequence[torch.Tensor], attention_mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Map VLM hidden states to DiT conditions.

        Args:
            hidden_states: all ``L + 1`` hidden states of the VLM, each (B, T, H), T = prompt + think tokens.
            attention_mask: None reproduces the released model: the connector attends over every position and
                the pooled vector averages all of them, pads included. A (B, T) mask gives the "masked" mode
                (pads excluded from attention and from the mean), which the released weights were *not*
                trained with.

        Returns:
            ``(seq_out, pooled_out)``: (B, T, joint_attention_dim) and (B, pooled_projection_dim).
        """
        x = self.projector_1(self.stack(hidden_states).to(self.projector_1.weight.dtype))  # (B, T, C)
        if attention_mask is None:
            x = self.connector(inputs_embeds=x).last_hidden_state
            pooled = x.mean(dim=1)  # (B, C)
        else:
            keep = attention_mask.to(torch.bool)
            additive = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
            additive = additive.masked_fill(~keep, torch.finfo(x.dtype).min)[:, None, None, :]
            x = self.connector(inputs_embeds=x, attention_mask=additive).last_hidden_state
            weights = keep.to(x.dtype).unsqueeze(-1)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.projector_3(x), self.projector_2(pooled)

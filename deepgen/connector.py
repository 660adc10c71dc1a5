"""The SCB connector: a bidirectional pre-LayerNorm transformer encoder between the VLM and the DiT.

DeepGen's connector is a stack of SigLIP encoder layers (``layers.{i}.self_attn.{q,k,v,out}_proj``,
``layer_norm{1,2}``, ``mlp.fc{1,2}``; tanh-GELU MLP, LayerNorm eps 1e-6) with no position embedding, no final
norm and no attention mask. We reuse transformers' ``SiglipEncoder`` rather than forking it, so the checkpoint
key names are the authors' exactly.
"""

from __future__ import annotations

from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoder

from .config import ConnectorConfig


def build_connector(config: ConnectorConfig, attn_implementation: str = "sdpa") -> SiglipEncoder:
    """Build the connector encoder with random weights from a :class:`ConnectorConfig`."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"Connector hidden_size {config.hidden_size} is not divisible by num_attention_heads "
            f"{config.num_attention_heads}; pick a head count that divides it."
        )
    siglip = SiglipVisionConfig(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        attention_dropout=0.0,
    )
    siglip._attn_implementation = attn_implementation
    return SiglipEncoder(siglip)

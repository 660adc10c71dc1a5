"""The Kontext DiT: SD3.5-Medium's MMDiT that also attends to clean reference-image latents.

Adapted from diffusers' ``SD3Transformer2DModel.forward`` (diffusers 0.35.2). Changes: an extra
``reference_latents`` argument; each reference is patch-embedded with the *same* ``pos_embed`` (same
centre-cropped sincos table, so a same-size reference gets the target's positions, no offset) and its tokens
are appended after the target tokens; only the first (target) tokens are un-patchified. ControlNet residuals,
IP-Adapter and skip-layer guidance are dropped (DeepGen uses none of them).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers


class KontextSD3Transformer2DModel(SD3Transformer2DModel, CacheMixin):
    """``SD3Transformer2DModel`` with Kontext reference tokens; same config and checkpoint keys.

    ``CacheMixin`` adds diffusers' step caching (``enable_cache``, ``cache_context``), which SD3's class lacks;
    ``_repeated_blocks`` lets ``compile_repeated_blocks`` compile the one block class instead of the whole model.
    """

    _repeated_blocks = ["JointTransformerBlock"]

    def max_latent_size(self) -> int:
        """The largest latent height/width the position table covers (pos_embed_max_size * patch_size)."""
        return self.config.pos_embed_max_size * self.config.patch_size

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        reference_latents: Optional[Sequence[torch.Tensor]] = None,
        joint_attention_kwargs: Optional[dict[str, Any]] = None,
        return_dict: bool = True,
    ) -> Union[torch.Tensor, Transformer2DModelOutput]:
        """Predict the flow-matching velocity of ``hidden_states``.

        Args:
            hidden_states: noisy target latents (B, C, h, w).
            encoder_hidden_states: context from SCB (B, T, joint_attention_dim).
            pooled_projections: pooled vector from SCB (B, pooled_projection_dim).
            timestep: (B,) float timesteps, sigma * 1000.
            reference_latents: clean latents of the reference images, each (B, C, h_i, w_i); they are never
                noised and are not decoded.
            joint_attention_kwargs: forwarded to the attention processors (``scale`` sets the LoRA scale).

        Returns:
            The velocity (B, C, h, w), in a ``Transformer2DModelOutput`` unless ``return_dict`` is False.
        """
        joint_attention_kwargs = dict(joint_attention_kwargs or {})
        lora_scale = joint_attention_kwargs.pop("scale", 1.0)
        if USE_PEFT_BACKEND:
            scale_lora_layers(self, lora_scale)

        height, width = hidden_states.shape[-2:]
        hidden_states = self.pos_embed(hidden_states)  # (B, h*w/p^2, D), positions added
        num_target_tokens = hidden_states.shape[1]
        if reference_latents:
            # (B, N_target + sum N_ref, D): references share the target's PatchEmbed and position table.
            hidden_states = torch.cat([hidden_states] + [self.pos_embed(ref) for ref in reference_latents], dim=1)
        temb = self.time_text_embed(timestep, pooled_projections)
        encoder_hidden_states = self.context_embedder(encoder_hidden_states)

        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                encoder_hidden_states, hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, temb, joint_attention_kwargs or None
                )
            else:
                encoder_hidden_states, hidden_states = block(
                    hidden_states=hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    temb=temb,
                    joint_attention_kwargs=joint_attention_kwargs or None,
                )

        hidden_states = hidden_states[:, :num_target_tokens]  # decode the target only
        hidden_states = self.proj_out(self.norm_out(hidden_states, temb))

        # unpatchify: (B, h/p * w/p, p*p*C) -> (B, C, h, w)
        p = self.config.patch_size
        hidden_states = hidden_states.reshape(hidden_states.shape[0], height // p, width // p, p, p, self.out_channels)
        hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
        output = hidden_states.reshape(hidden_states.shape[0], self.out_channels, height, width)

        if USE_PEFT_BACKEND:
            unscale_lora_layers(self, lora_scale)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

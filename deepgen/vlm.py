"""The VLM side of DeepGen: prompt templates, the processor, and the single encoder forward of Qwen2.5-VL.

Qwen2.5-VL is used as an encoder only: one forward per request with the think tokens appended, returning all
hidden states for Stacked Channel Bridging; no text is generated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from transformers import PreTrainedTokenizerBase, Qwen2_5_VLForConditionalGeneration

from .image_processing import vit_patches
from .qwen_adapter import image_features, mrope_position_ids

logger = logging.getLogger(__name__)

USER_TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
GENERATION_TEMPLATE = "Generate an image: {input}"
IMAGE_BLOCK = "<|vision_start|>{pads}<|vision_end|>"
IMAGE_START = "<|vision_start|>"
IMAGE_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"

# The authors' ``prompt_template`` (configs/models/deepgen_scb.py; the diffusers release's prompt_template.json).
# Inference uses INSTRUCTION, GENERATION and the three image tokens, as above; the other entries are unused by
# their generate() and ours, and must still equal these values (a release that changed them would run code we
# do not implement).
PROMPT_TEMPLATE = {
    "IMG_START_TOKEN": IMAGE_START,
    "IMG_END_TOKEN": IMAGE_END,
    "IMG_CONTEXT_TOKEN": IMAGE_PAD,
    "IMG_START_TOKEN_FOR_GENERATION": False,
    "SYSTEM": "<|im_start|>system\n{system}<|im_end|>\n",
    "INSTRUCTION": USER_TEMPLATE,
    "SUFFIX": "<|im_end|>",
    "SUFFIX_AS_EOS": True,
    "SEP": "\n",
    "STOP_WORDS": ["<|im_end|>", "<|endoftext|>"],
    "GENERATION": GENERATION_TEMPLATE,
    "CFG": "Generate an image.",
}


def check_prompt_template(template: dict) -> None:
    """Refuse a ``prompt_template.json`` that differs from the template we implement (:data:`PROMPT_TEMPLATE`)."""
    if not isinstance(template, dict):
        raise ValueError(f"prompt_template.json must hold a JSON object, got {type(template).__name__}.")
    differences = [f"{key}: ours {PROMPT_TEMPLATE.get(key)!r}, the release's {template.get(key)!r}"
                   for key in sorted(set(PROMPT_TEMPLATE) | set(template))
                   if template.get(key, PROMPT_TEMPLATE.get(key)) != PROMPT_TEMPLATE.get(key)]
    if differences:
        raise ValueError("The release's prompt_template.json differs from the prompt template DeepGen Studio "
                         "implements, so its images would not be the authors': " + "; ".join(differences) +
                         ". Use a release whose template matches, or report the new template.")


def template_prompt(text: str, image_tokens: Sequence[int] = ()) -> str:
    """The chat-formatted row the VLM reads (FIXTURE.md §4.1).

    Text-to-image: ``Generate an image: {text}`` as the user turn. Edit: one image block per reference
    (``<|vision_start|>`` + ``<|image_pad|>`` x N + ``<|vision_end|>``), then ``\\n{text}``, with no
    "Generate an image:" prefix. Negative prompts use the same template.
    """
    if not image_tokens:
        return USER_TEMPLATE.format(input=GENERATION_TEMPLATE.format(input=text))
    blocks = "".join(IMAGE_BLOCK.format(pads=IMAGE_PAD * n) for n in image_tokens)
    return USER_TEMPLATE.format(input=f"{blocks}\n{text}")


@dataclass
class VLMInputs:
    """Tokenised rows for the VLM. ``input_ids``/``attention_mask``: (R, L), left-padded; ``pixel_values``:
    (sum of patches, 3*2*14*14) for all images of all rows in order, ``image_grid_thw``: (num_images, 3)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: Optional[torch.Tensor] = None
    image_grid_thw: Optional[torch.Tensor] = None

    def to(self, device: torch.device) -> "VLMInputs":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return VLMInputs(move(self.input_ids), move(self.attention_mask), move(self.pixel_values),
                         move(self.image_grid_thw))


class DeepGenProcessor:
    """Turns prompts and reference images into :class:`VLMInputs`, as the authors' ``generate()`` does.

    The authors do not cut prompts at inference. A row only has to fit the VLM's positions: with
    ``max_sequence_length`` = ``max_position_embeddings`` minus the think tokens, a longer row (template and image
    tokens included) has its prompt text cut to fit, with a warning; this never happens silently.

    Args:
        tokenizer: a Qwen2 tokenizer (with ``<|image_pad|>`` and friends).
        patch_size, merge_size, temporal_patch_size: the Qwen2.5-VL vision config values.
        max_sequence_length: the most tokens a templated row may have (None: no limit).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, patch_size: int = 14, merge_size: int = 2,
                 temporal_patch_size: int = 2, max_sequence_length: Optional[int] = None):
        self.tokenizer = tokenizer
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.temporal_patch_size = temporal_patch_size
        self.max_sequence_length = max_sequence_length

    def _fit(self, text: str, image_tokens: Sequence[int]) -> str:
        """The templated row, with the prompt text cut (and a warning) if the row exceeds the positions."""
        row = template_prompt(text, image_tokens)
        if self.max_sequence_length is None:
            return row
        length = len(self.tokenizer(row, add_special_tokens=False)["input_ids"])
        if length <= self.max_sequence_length:
            return row
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        overhead = length - len(ids)
        keep = max(0, self.max_sequence_length - overhead)
        logger.warning("A prompt row of %d tokens exceeds the %d positions the VLM has for it "
                       "(max_position_embeddings minus the think tokens); its text is cut from %d to %d tokens.",
                       length, self.max_sequence_length, len(ids), keep)
        return template_prompt(self.tokenizer.decode(ids[:keep]), image_tokens)

    def __call__(self, texts: Sequence[str], images: Optional[Sequence[Sequence[torch.Tensor]]] = None) -> VLMInputs:
        """Template, tokenise (one call, left padding) and patchify.

        Args:
            texts: R prompt strings (positive rows, then negative rows).
            images: per row, the list of its reference images as (3, H, W) tensors in [-1, 1] (sides multiples
                of 32); None or empty lists for text-to-image rows.
        """
        images = images or [[] for _ in texts]
        if len(images) != len(texts):
            raise ValueError(f"Got {len(texts)} prompt rows but {len(images)} image lists.")
        rows, patches, grids = [], [], []
        for text, row_images in zip(texts, images):
            row_tokens = []
            for image in row_images:
                p, grid = vit_patches(image, self.patch_size, self.merge_size, self.temporal_patch_size)
                patches.append(p)
                grids.append(grid)
                row_tokens.append(int(grid.prod()) // self.merge_size**2)
            rows.append(self._fit(text, row_tokens))
        encoded = self.tokenizer(rows, padding=True, padding_side="left", return_tensors="pt")
        return VLMInputs(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            pixel_values=torch.cat(patches) if patches else None,
            image_grid_thw=torch.cat(grids) if grids else None,
        )


def vlm_hidden_states(
    vlm: Qwen2_5_VLForConditionalGeneration, inputs: VLMInputs, think_tokens: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Run the language model once over [prompt rows + think tokens] and return all hidden states.

    Steps (FIXTURE.md §4.3-4.6): append Q placeholder ids (0) with mask 1 for the think tokens; M-RoPE position
    ids through :mod:`deepgen.qwen_adapter`; embed (LoRA-adapted ``embed_tokens``), scatter the ViT outputs into
    the ``<|image_pad|>`` slots, replace the placeholders by ``think_tokens``; call the language model with
    ``inputs_embeds`` (no lm_head).

    Args:
        think_tokens: (Q, H) the learnable ``meta_queries``.

    Returns:
        ``(hidden_states, attention_mask)``: the L + 1 hidden states, each (R, T, H) with T = L + Q, and the
        (R, T) mask used.
    """
    input_ids, attention_mask = inputs.input_ids, inputs.attention_mask
    rows, num_queries = input_ids.shape[0], think_tokens.shape[0]
    query_ids = torch.zeros(rows, num_queries, dtype=input_ids.dtype, device=input_ids.device)
    extended_ids = torch.cat([input_ids, query_ids], dim=1)  # (R, T)
    extended_mask = torch.cat([attention_mask, torch.ones_like(query_ids)], dim=1)
    position_ids = mrope_position_ids(vlm.model, extended_ids, extended_mask, inputs.image_grid_thw)

    embeds = vlm.get_input_embeddings()(input_ids)  # (R, L, H)
    image_slots = input_ids == vlm.config.image_token_id
    if inputs.pixel_values is not None:
        image_embeds = image_features(vlm.model, inputs.pixel_values, inputs.image_grid_thw)  # (N, H)
        if image_embeds.shape[0] != int(image_slots.sum()):
            raise ValueError(
                f"{int(image_slots.sum())} <|image_pad|> tokens in the prompts but {image_embeds.shape[0]} image "
                "features; do not write <|image_pad|> in prompt text."
            )
        embeds = embeds.masked_scatter(image_slots.unsqueeze(-1).expand_as(embeds), image_embeds.to(embeds.dtype))
    elif image_slots.any():
        raise ValueError("The prompt contains <|image_pad|> tokens but no image was given; remove them.")
    queries = think_tokens.to(embeds.dtype).unsqueeze(0).expand(rows, -1, -1)
    embeds = torch.cat([embeds, queries], dim=1)  # (R, T, H)

    output = vlm.model.language_model(
        inputs_embeds=embeds,
        attention_mask=extended_mask.bool(),
        position_ids=position_ids,
        output_hidden_states=True,
        use_cache=False,
    )
    return output.hidden_states, extended_mask

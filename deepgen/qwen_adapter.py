"""The two places where DeepGen reaches inside transformers' Qwen2.5-VL, kept in one small adapter.

DeepGen runs Qwen2.5-VL as an encoder with think tokens appended, so it cannot call the model's ``forward``: it
needs the multimodal RoPE positions for a sequence the processor never saw, and the merged ViT features to
scatter into the ``<|image_pad|>`` slots. Both come from public methods of ``Qwen2_5_VLModel``
(``get_rope_index`` and ``get_image_features``), whose signatures and return types moved in transformers 5.
Everything version-specific lives here; ``tests/test_qwen_adapter.py`` pins the behaviour and fails with the
installed version in the message when a release changes it again.
"""

from __future__ import annotations

import functools
import inspect

import torch
import transformers

# Left-padding slots get this M-RoPE position. transformers 4.x (which produced the authors' reference and our
# golden fixture) fills them with 1, transformers 5 with 0; the connector reads pad rows unmasked, so the value
# changes the SCB outputs and is fixed here.
PAD_POSITION = 1

IMAGE_TOKEN_TYPE = 1  # transformers' mm_token_type_ids: 0 text, 1 image, 2 video


class UnsupportedTransformersError(RuntimeError):
    """The installed transformers changed a Qwen2.5-VL method this adapter relies on."""


def _unsupported(what: str) -> UnsupportedTransformersError:
    return UnsupportedTransformersError(
        f"transformers {transformers.__version__}: Qwen2.5-VL's {what}. deepgen/qwen_adapter.py supports the "
        "releases listed in requirements.txt; pin one of those or update the adapter."
    )


@functools.lru_cache(maxsize=None)
def _takes_token_types(model_class: type) -> bool:
    """Whether this release's ``get_rope_index`` wants ``mm_token_type_ids`` (asked once per class, not per
    forward); one without ``image_grid_thw`` is a signature this adapter does not know."""
    parameters = inspect.signature(model_class.get_rope_index).parameters
    if "image_grid_thw" not in parameters:
        raise _unsupported(f"get_rope_index{inspect.signature(model_class.get_rope_index)} takes no image_grid_thw")
    return "mm_token_type_ids" in parameters


def mrope_position_ids(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       image_grid_thw: torch.Tensor | None) -> torch.Tensor:
    """(3, R, T) multimodal RoPE positions of left-padded rows, pad slots at :data:`PAD_POSITION`.

    Args:
        model: the ``Qwen2_5_VLModel`` (``vlm.model``).
        input_ids, attention_mask: (R, T); image slots hold ``config.image_token_id``.
        image_grid_thw: (num_images, 3) in the order the images appear, or None for text only.
    """
    if image_grid_thw is None:
        # Text only: transformers computes plain 1-D positions itself for forward(); do the same here so that
        # every release returns the same thing (some refuse get_rope_index without vision tokens).
        positions = (attention_mask.long().cumsum(-1) - 1).unsqueeze(0).expand(3, -1, -1)
    else:
        kwargs = {"image_grid_thw": image_grid_thw, "attention_mask": attention_mask}
        if _takes_token_types(type(model)):  # transformers >= 5: modalities come from the processor's type ids
            kwargs["mm_token_type_ids"] = (input_ids == model.config.image_token_id).int() * IMAGE_TOKEN_TYPE
        positions, _ = model.get_rope_index(input_ids, **kwargs)
    if positions.shape != (3, *input_ids.shape):
        raise _unsupported(f"get_rope_index returned shape {tuple(positions.shape)}, expected (3, R, T)")
    return positions.masked_fill(attention_mask.unsqueeze(0) == 0, PAD_POSITION)


def image_features(model: torch.nn.Module, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
    """(N, H) merged ViT features of all images, in order, ready for the ``<|image_pad|>`` slots.

    ``get_image_features`` returns the per-image splits as a tuple (transformers 4) or as ``pooler_output`` of
    an output object (transformers 5).
    """
    output = model.get_image_features(pixel_values=pixel_values, image_grid_thw=image_grid_thw)
    features = getattr(output, "pooler_output", output)
    if isinstance(features, torch.Tensor):
        return features
    if isinstance(features, (tuple, list)) and all(isinstance(f, torch.Tensor) for f in features):
        return torch.cat(list(features))
    raise _unsupported(f"get_image_features returned {type(output).__name__}, not per-image feature tensors")

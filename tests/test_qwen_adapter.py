"""deepgen/qwen_adapter.py: the only calls into Qwen2.5-VL internals, pinned so that a transformers release that
changes them fails here, loudly, with the installed version in the message."""

from __future__ import annotations

import pytest
import torch
import transformers

from deepgen.qwen_adapter import PAD_POSITION, UnsupportedTransformersError, image_features, mrope_position_ids


@pytest.fixture(scope="module")
def qwen(tiny_pipe):
    return tiny_pipe.vlm.model


def test_text_rows_count_from_zero_and_pads_sit_at_the_reference_value(qwen):
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ids = torch.full_like(mask, 5)
    positions = mrope_position_ids(qwen, ids, mask, None)
    assert positions.shape == (3, 2, 5)
    for axis in positions:
        assert axis.tolist() == [[PAD_POSITION, PAD_POSITION, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_image_tokens_take_their_grid_positions_and_text_continues_after_them(qwen):
    """One image of grid (t, h, w) = (1, 4, 6) -> (4 / 2) x (6 / 2) = 6 merged tokens between text tokens."""
    image = qwen.config.image_token_id
    merge = qwen.config.vision_config.spatial_merge_size
    grid = torch.tensor([[1, 4, 6]])
    ids = torch.tensor([[7, 7, 8] + [image] * 6 + [9, 9, 9]])
    ids = torch.cat([torch.full((1, 2), 3), ids], dim=1)  # two left pads
    mask = torch.tensor([[0, 0] + [1] * 12])
    positions = mrope_position_ids(qwen, ids, mask, grid)
    h, w = 4 // merge, 6 // merge
    text_before = [0, 1, 2]
    temporal = [3] * (h * w)
    rows = [3 + r for r in range(h) for _ in range(w)]
    cols = [3 + c for _ in range(h) for c in range(w)]
    after = [3 + max(h, w) + i for i in range(3)]
    pads = [PAD_POSITION] * 2
    assert positions[0, 0].tolist() == pads + text_before + temporal + after
    assert positions[1, 0].tolist() == pads + text_before + rows + after
    assert positions[2, 0].tolist() == pads + text_before + cols + after


def test_image_features_are_one_row_per_merged_token(qwen):
    vision = qwen.config.vision_config
    grid = torch.tensor([[1, 4, 6], [1, 2, 2]])
    patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
    pixels = torch.randn(int(grid.prod(-1).sum()), patch_dim)
    with torch.no_grad():
        features = image_features(qwen, pixels, grid)
    assert features.shape == (6 + 1, qwen.config.text_config.hidden_size)


def test_a_changed_rope_index_fails_with_the_installed_version(qwen, monkeypatch):
    monkeypatch.setattr(type(qwen), "get_rope_index", lambda self, input_ids, **kwargs: (input_ids, None))
    ids = torch.tensor([[qwen.config.image_token_id] * 6])
    with pytest.raises(UnsupportedTransformersError, match=f"transformers {transformers.__version__}"):
        mrope_position_ids(qwen, ids, torch.ones_like(ids), torch.tensor([[1, 4, 6]]))


def test_changed_image_features_fail_with_the_installed_version(qwen, monkeypatch):
    monkeypatch.setattr(type(qwen), "get_image_features", lambda self, **kwargs: {"features": 1})
    with pytest.raises(UnsupportedTransformersError, match=f"transformers {transformers.__version__}"):
        image_features(qwen, torch.zeros(4, 8), torch.tensor([[1, 2, 2]]))

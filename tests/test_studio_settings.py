"""Request settings and their limits (``studio/settings.py``)."""

from __future__ import annotations

import pytest

from studio.settings import StudioInputError, aspect_size


def test_aspect_presets_keep_the_long_side_in_multiples_of_32():
    assert aspect_size("1:1 square", 512) == (512, 512)
    assert aspect_size("16:9 wide", 1024) == (1024, 576)
    assert aspect_size("3:4 portrait", 512) == (384, 512)
    with pytest.raises(StudioInputError):
        aspect_size("5:1", 512)

"""Helpers shared by the training-plumbing tests (test_trainer.py, test_checkpoints.py)."""

from __future__ import annotations

import pytest
from accelerate.state import AcceleratorState, GradientState

from deepgen.training.config import load_config


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps process-wide state; each test starts from none."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def tiny_config(tmp_path, *overrides):
    """A training config on the tiny preset writing under ``tmp_path``, with dotted overrides."""
    return load_config(None, ["model.pretrained=tiny", f"output_dir={tmp_path}", "data.resolution=32", *overrides])

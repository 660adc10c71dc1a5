"""Shared fixtures: a tiny random pipeline and the golden parity fixture (skipped where ../shared is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"


@pytest.fixture(scope="session")
def tiny_pipe():
    from deepgen import DeepGenPipeline

    pipe = DeepGenPipeline.from_config("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def golden() -> Path:
    if not (GOLDEN / "FIXTURE.md").is_file():
        pytest.skip(f"parity fixture not found at {GOLDEN} (a fresh clone has no ../shared; CI always has it)")
    return GOLDEN


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""Shared fixtures: a tiny random pipeline, the tiny configs' data, and the golden parity fixture (skipped where
../shared is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def tiny_pipe():
    from deepgen import DeepGenPipeline

    pipe = DeepGenPipeline.from_config("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """The data the ``tiny-*.yaml`` configs train on, written as they say (``train/nano/make_data.py``); pass it
    with the override ``data.sources.0.path=<this>``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_data", ROOT / "train" / "nano" / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    out = tmp_path_factory.mktemp("tiny-data")
    make_data.main(["--out", str(out), "--num-samples", "32", "--size", "32"])
    return str(out)


@pytest.fixture(scope="session")
def golden() -> Path:
    if not (GOLDEN / "FIXTURE.md").is_file():
        pytest.skip(f"parity fixture not found at {GOLDEN} (a fresh clone has no ../shared; CI always has it)")
    return GOLDEN


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

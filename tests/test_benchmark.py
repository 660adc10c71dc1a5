"""The inference benchmark runs on CPU and reports every stage."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"


def test_benchmark_reports_every_stage():
    spec = importlib.util.spec_from_file_location("bench_pipeline", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    meter = bench.run("tiny", size=32, steps=2, device=torch.device("cpu"), dtype=torch.float32, edit=True)
    names = [name for name, _, _ in meter.rows]
    assert names == ["VLM encode", "SCB (projectors + connector)", "step 0", "step 1", "VAE decode"]
    assert all(seconds > 0 and peak > 0 for _, seconds, peak in meter.rows)
    table = meter.table()
    assert "| VAE decode |" in table and "denoising mean per step" in table

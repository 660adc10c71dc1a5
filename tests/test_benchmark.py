"""The inference benchmark (benchmarks/bench_pipeline.py) and the GPU suite's dry profile run on CPU and report
what issue 21 asks for. Times are never asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from deepgen.config import get_preset
from deepgen.kontext import KontextSD3Transformer2DModel

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_pipeline.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_reports_modes_side_by_side(bench, tmp_path, capsys):
    pytest.importorskip("torchao")
    out, records_path = tmp_path / "report.txt", tmp_path / "records.json"
    assert bench.main(["--preset", "tiny", "--task", "t2i", "edit", "--size", "32", "--steps", "2", "--warmup", "0",
                       "--repeats", "2", "--modes", "eager", "int8", "fp8", "--out", str(out),
                       "--json", str(records_path)]) == 0
    captured = capsys.readouterr()
    assert "mode fp8: skipped (ValueError: fp8 quantisation needs a CUDA GPU" in captured.err
    records = json.loads(records_path.read_text())
    assert [(r["mode"], r["task"]) for r in records] == [("eager", "t2i"), ("eager", "edit"), ("int8", "t2i"),
                                                         ("int8", "edit")]
    for r in records:
        assert r["total_median_s"] >= r["total_min_s"] > 0
        assert set(r["stages_median_s"]) == {"condition", "denoise", "decode"}
        assert r["dit_calls"] == 2 * 2 and r["dit_flop_per_step"] > 0 and "N_img" in r["flop_formula"]
    eager_t2i, int8_t2i = records[0], records[2]
    assert eager_t2i["speedup"] == 1.0 and eager_t2i["latent_max_diff"] == 0.0
    assert 0 < int8_t2i["latent_max_diff"] < 0.05 and int8_t2i["options"]["quantize"] == "int8-weight-only"
    report = out.read_text()
    assert "### edit 32x32 batch 1" in report and "| int8 |" in report and "FLOP/step" in report


def test_unknown_mode_is_refused_before_any_work(bench):
    with pytest.raises(ValueError, match="Unknown mode 'turbo'"):
        bench.main(["--preset", "tiny", "--modes", "turbo"])


def test_flop_formula_matches_a_flop_counter(bench):
    """The printed formula counts the DiT's matmuls and attention: it agrees with torch's FLOP counter on a
    3-layer DiT (edit: target + reference tokens) to within the per-sample adaLN and embedding terms it skips."""
    config = dict(get_preset("tiny").transformer, num_layers=3, num_attention_heads=4, attention_head_dim=16,
                  caption_projection_dim=64)
    dit = KontextSD3Transformer2DModel.from_config(config).eval()
    rows, size, text = 2, 32, 40
    latents, reference = torch.randn(rows, 16, size, size), torch.randn(rows, 16, size, size)
    # The math SDPA backend runs attention as matmuls the counter sees (it does not count CPU flash attention).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        dit(latents, torch.randn(rows, text, config["joint_attention_dim"]),
            torch.randn(rows, config["pooled_projection_dim"]), torch.full((rows,), 500.0), [reference])
    target = (size // 2) ** 2
    flops, formula = bench.dit_flops(config, 2 * target, target, text, rows)
    assert flops == pytest.approx(counter.get_total_flops(), rel=0.03)
    assert f"N_img={2 * target}" in formula and f"N_txt={text}" in formula


@pytest.mark.slow
def test_gpu_suite_dry_profile_writes_every_part(tmp_path):
    env = dict(os.environ, RESULTS_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "dry"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(path.name for path in tmp_path.iterdir())
    for part in ("main", "quant", "offload"):
        assert f"cpu-{part}.txt" in names and f"cpu-{part}.json" in names
    assert "| cache |" in (tmp_path / "cpu-main.txt").read_text()

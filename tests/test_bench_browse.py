"""The "Benchmark runs" view: discovery under the root only, alignment across runs, export."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench_data import write_dpg, write_imgedit
from deepgen.bench import BENCHMARKS
from deepgen.bench.browse import ROOT_ENV, bench_root, build_rows, discover_runs, export_view, select_runs
from deepgen.bench.runner import GenerationSettings, run_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """Two ImgEdit runs (the second with one item missing) and a DPG run, under one root."""
    from deepgen.bench.models import load_bench_model

    model = load_bench_model("tiny", None, REPO / "contestants.yaml", torch.device("cpu"))
    base = tmp_path_factory.mktemp("browse")
    root = base / "runs"
    settings = GenerationSettings(height=32, width=32, steps=1, guidance=4.0, negative_prompt="",
                                  images_per_prompt=1, seed=0)
    run_benchmark(BENCHMARKS["imgedit"], write_imgedit(base), root / "imgedit" / "tiny-a", model, settings, 2,
                  progress=False)
    shutil.copytree(root / "imgedit" / "tiny-a", root / "imgedit" / "tiny-b")
    record = json.loads((root / "imgedit" / "tiny-b" / "record.json").read_text())
    record["model"]["id"] = "other"
    (root / "imgedit" / "tiny-b" / "record.json").write_text(json.dumps(record))
    (root / "imgedit" / "tiny-b" / "90002.png").unlink()
    run_benchmark(BENCHMARKS["dpg"], write_dpg(base), root / "dpg" / "tiny", model,
                  GenerationSettings(**{**settings.__dict__, "images_per_prompt": 4}), 2, limit=1, progress=False)
    return root


def test_root_comes_from_the_environment(tmp_path):
    assert bench_root({ROOT_ENV: str(tmp_path)}) == tmp_path.resolve()
    assert bench_root({ROOT_ENV: str(tmp_path / "missing")}) is None and bench_root({}) is None


def test_discovers_runs_including_dpg_records_beside_the_folder(runs_root):
    runs = discover_runs(runs_root)
    assert [run.key for run in runs] == ["dpg/tiny", "imgedit/tiny-a", "imgedit/tiny-b"]
    assert runs[1].model == "tiny" and "ImgEdit" in runs[1].label and "2/2" in runs[1].label


def test_selection_accepts_only_discovered_keys(runs_root, tmp_path):
    with pytest.raises(ValueError, match="Unknown run"):
        select_runs(runs_root, ["imgedit/tiny-a", str(tmp_path)])
    with pytest.raises(ValueError, match="Unknown run"):
        select_runs(runs_root, ["imgedit/tiny-a", "../runs/imgedit/tiny-b"])
    with pytest.raises(ValueError, match="2 to 4 different runs"):
        select_runs(runs_root, ["imgedit/tiny-a"])
    with pytest.raises(ValueError, match="different benchmarks"):
        select_runs(runs_root, ["imgedit/tiny-a", "dpg/tiny"])


def test_rows_align_items_with_sources_and_missing_outputs(runs_root):
    runs = select_runs(runs_root, ["imgedit/tiny-a", "imgedit/tiny-b"])
    rows, total = build_rows(runs_root, runs)
    assert total == 2 and [row.item_id for row in rows] == ["90001", "90002"]
    assert rows[0].prompt == "Give the hamster a tiny blue scarf."
    assert rows[0].source is not None and rows[0].source.name == "synthetic_0001.jpg"
    assert rows[1].outputs[0][0].name == "90002.png" and rows[1].outputs[1] == [None]
    rows, total = build_rows(runs_root, runs, query="CHARCOAL")
    assert total == 1 and rows[0].item_id == "90002"
    assert build_rows(runs_root, runs, start=1, count=5)[0][0].item_id == "90002"


def test_export_writes_grid_view_and_zip(runs_root, tmp_path):
    runs = select_runs(runs_root, ["imgedit/tiny-a", "imgedit/tiny-b"])
    rows, _ = build_rows(runs_root, runs)
    zip_path = export_view(runs, rows, tmp_path / "export")
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == ["benchmark-runs-grid.png", "view.json"]
        view = json.loads(archive.read("view.json"))
    assert [run["model"]["id"] for run in view["runs"]] == ["tiny", "other"]
    assert view["items"][1]["outputs"] == {"imgedit/tiny-a": ["90002.png"], "imgedit/tiny-b": [None]}
    with Image.open(tmp_path / "export" / "benchmark-runs-grid.png") as grid:
        assert grid.width == 3 * 192  # source + one image per run


def test_the_compare_view_shows_two_runs_side_by_side_and_exports(runs_root, tmp_path):
    from studio.ui.benchmark_runs import run_choices, show_runs

    class FakeStudio:
        output_root, output_ttl_s = tmp_path, 3600.0

    keys = [key for _, key in run_choices(runs_root) if key.startswith("imgedit/")]
    grid, prompts, export = show_runs(FakeStudio(), runs_root, keys, "", 1)
    assert grid.width > 0 and "tiny-a" in prompts and "tiny-b" in prompts
    with zipfile.ZipFile(export) as archive:
        assert {"view.json", "benchmark-runs-grid.png"} <= set(archive.namelist())


@pytest.mark.parametrize("keys, page, message", [
    (["imgedit/tiny-a"], 1, "Pick 2 to 4"),
    (["imgedit/tiny-a", "../../etc"], 1, "Unknown run"),
    (["imgedit/tiny-a", "dpg/tiny"], 1, "different benchmarks"),
    (["imgedit/tiny-a", "imgedit/tiny-b"], 0.5, "whole number"),
])
def test_the_compare_view_refuses_what_is_not_a_listed_pair_of_runs(runs_root, tmp_path, keys, page, message):
    import gradio as gr

    from studio.ui.benchmark_runs import show_runs

    class FakeStudio:
        output_root, output_ttl_s = tmp_path, 3600.0

    with pytest.raises(gr.Error, match=message):
        show_runs(FakeStudio(), runs_root, keys, "", page)
    with pytest.raises(gr.Error, match="No benchmark root"):
        show_runs(FakeStudio(), None, keys, "", 1)

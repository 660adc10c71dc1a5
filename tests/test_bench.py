"""The benchmark runner on BENCHMARKS.md's invented records: layouts, resume, batch independence, bad records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench_data import EDIT_NEG, EXPECTED, IMAGES_PER_PROMPT, WRITERS, write_cvtg, write_gedit, write_geneval, \
    write_imgedit, write_wise
from deepgen.bench import BENCHMARKS, EDIT_NEGATIVE_PROMPT
from deepgen.bench.base import PARTIAL_SUFFIX
from deepgen.bench.runner import GenerationSettings, plan_batches, run_benchmark, sample_seed, shard
from loopback import free_port

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    from deepgen.bench.models import load_bench_model

    return load_bench_model("tiny", None, REPO / "contestants.yaml", torch.device("cpu"))


def settings(benchmark: str, **overrides) -> GenerationSettings:
    defaults = BENCHMARKS[benchmark].defaults
    values = dict(height=SIZE, width=SIZE, steps=1, guidance=defaults.guidance,
                  negative_prompt=defaults.negative_prompt,
                  images_per_prompt=IMAGES_PER_PROMPT.get(benchmark, 1), seed=42)
    return GenerationSettings(**{**values, **overrides})


def run(model, benchmark: str, data: Path, out: Path, batch_size: int = 4, **kwargs) -> dict:
    run_settings = kwargs.pop("run_settings", None) or settings(benchmark)
    return run_benchmark(BENCHMARKS[benchmark], data, out, model, run_settings, batch_size, progress=False, **kwargs)


def files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_edit_negative_prompt_is_the_authors():
    assert EDIT_NEGATIVE_PROMPT == EDIT_NEG
    assert all(BENCHMARKS[b].defaults.negative_prompt == EDIT_NEG for b in ("imgedit", "gedit", "rise",
                                                                             "unireditbench"))
    assert BENCHMARKS["dpg"].defaults.guidance == 7.5 and BENCHMARKS["geneval"].defaults.images_per_prompt == 4


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_official_layout(model, name, tmp_path):
    data = WRITERS[name](tmp_path)
    out = tmp_path / "run"
    record = run(model, name, data, out)
    record_path = BENCHMARKS[name].record_path(out)
    written = files(out)
    if name == "dpg":  # the scorer lists every file of the folder: only the grids are inside
        assert record_path == tmp_path / "run.record.json" and record_path.is_file()
    else:
        assert record_path == out / "record.json"
        written.discard("record.json")
    assert written == EXPECTED[name]
    assert record["status"] == "complete" and record["counts"]["finished"] == (4 if name == "cvtg" else 2)
    saved = json.loads(record_path.read_text())
    assert saved["model"]["id"] == "tiny" and saved["model"]["revision"] == "random-init:seed0"
    assert saved["settings"]["steps"] == 1 and saved["environment"]["packages"]["torch"] == torch.__version__
    for relative in written - {n for n in written if n.endswith(".jsonl") or n.endswith("_SRCIMG.png")}:
        with Image.open(out / relative) as image:
            side = SIZE * 2 if name == "dpg" else SIZE  # DPG: 4 samples tiled 2x2
            assert image.size == (side, side) and image.mode == "RGB"


def test_geneval_metadata_keeps_the_record_and_adds_text(model, tmp_path):
    out = tmp_path / "run"
    run(model, "geneval", write_geneval(tmp_path), out)
    first = json.loads((out / "00000" / "metadata.jsonl").read_text())
    assert first["text"] == first["prompt"] and first["tag"] == "colors" and first["include"][0]["class"] == "toaster"
    second = json.loads((out / "00001" / "metadata.jsonl").read_text())
    assert "detailed_caption" not in second and second["tag"] == "position"


def test_gedit_from_parquet_keeps_unresized_rgb_source(model, tmp_path):
    out = tmp_path / "run"
    run(model, "gedit", write_gedit(tmp_path, parquet=True), out)
    assert files(out) - {"record.json"} == EXPECTED["gedit"]
    with Image.open(out / "fullset/subject-add/cn/synth0002_SRCIMG.png") as source:
        assert source.size == (48, 64) and source.mode == "RGB"  # grey source, unresized, converted


def test_cvtg_reads_lowercase_style_folder(model, tmp_path):
    out = tmp_path / "run"
    run(model, "cvtg", write_cvtg(tmp_path, style_folder="CVTG-style"), out)
    assert files(out) - {"record.json"} == EXPECTED["cvtg"]  # written under the scorer's CVTG-Style


def test_images_do_not_depend_on_batch_size(model, tmp_path):
    data = write_geneval(tmp_path)
    (tmp_path / "more.jsonl").write_text(data.read_text() + json.dumps({"prompt": "a dog"}) + "\n"
                                         + json.dumps({"prompt": "a cat"}) + "\n")
    run(model, "geneval", tmp_path / "more.jsonl", tmp_path / "b1", batch_size=1)
    run(model, "geneval", tmp_path / "more.jsonl", tmp_path / "b3", batch_size=3)
    names = files(tmp_path / "b1") - {"record.json"}
    assert names == files(tmp_path / "b3") - {"record.json"} and len(names) == 12
    for name in names:
        assert (tmp_path / "b1" / name).read_bytes() == (tmp_path / "b3" / name).read_bytes(), name
    # the two samples of an item differ, and so do items
    assert (tmp_path / "b1/00002/samples/0000.png").read_bytes() != (tmp_path / "b1/00002/samples/0001.png").read_bytes()


def test_edit_images_do_not_depend_on_batch_size(model, tmp_path):
    data = write_imgedit(tmp_path)
    run(model, "imgedit", data, tmp_path / "b1", batch_size=1)
    run(model, "imgedit", data, tmp_path / "b2", batch_size=2)
    for name in EXPECTED["imgedit"]:
        assert (tmp_path / "b1" / name).read_bytes() == (tmp_path / "b2" / name).read_bytes(), name


def test_resume_skips_finished_items_and_a_finished_rerun_writes_nothing(model, tmp_path):
    data = write_wise(tmp_path)
    out = tmp_path / "run"
    record = run(model, "wise", data, out, limit=1)
    assert files(out) == {"record.json", "9001.png"} and record["status"] == "complete"
    first = (out / "9001.png").stat().st_mtime_ns
    record = run(model, "wise", data, out)
    assert files(out) == {"record.json", "9001.png", "9002.png"}
    assert (out / "9001.png").stat().st_mtime_ns == first
    assert [s["generated_items"] for s in record["sessions"]] == [1, 1]
    assert record["sessions"][1]["skipped_finished"] == 1
    before = snapshot(tmp_path)
    run(model, "wise", data, out)
    assert snapshot(tmp_path) == before


def test_killed_run_loses_only_the_batch_in_flight(model, tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([{"prompt_id": i, "Prompt": f"prompt {i}"} for i in range(4)]))

    class Dying:
        def __init__(self, inner, calls):
            self.inner, self.calls = inner, calls

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def generate(self, *args):
            if self.calls == 0:
                raise KeyboardInterrupt
            self.calls -= 1
            return self.inner.generate(*args)

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(Dying(model, 1), "wise", tmp_path / "p.json", out, batch_size=2)
    assert len(files(out) - {"record.json"}) == 2
    assert json.loads((out / "record.json").read_text())["status"] == "running"
    (out / f".9.png.x{PARTIAL_SUFFIX}").write_bytes(b"half a png")  # what a kill mid-write leaves
    record = run(model, "wise", tmp_path / "p.json", out, batch_size=2)
    assert files(out) == {"record.json", "0.png", "1.png", "2.png", "3.png"} and record["status"] == "complete"


def test_resume_with_other_settings_is_refused(model, tmp_path):
    data = write_wise(tmp_path)
    out = tmp_path / "run"
    run(model, "wise", data, out, limit=1)
    with pytest.raises(ValueError, match="other settings.*steps"):
        run(model, "wise", data, out, run_settings=settings("wise", steps=2))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "9001.png").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="no run record"):
        run(model, "wise", data, foreign)


def test_bad_record_stops_before_any_image_with_file_and_line(model, tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n\n" + json.dumps({"tag": "x", "prompt": "  "}) + "\n"
                    + "{not json\n")
    with pytest.raises(ValueError, match=rf"{path}:3: 'prompt' must be a non-empty string.*stopping"):
        run(model, "geneval", path, tmp_path / "run")
    assert not (tmp_path / "run").exists() or not files(tmp_path / "run")
    record = run(model, "geneval", path, tmp_path / "run", skip_bad=True)
    assert files(tmp_path / "run") == {"record.json", "00000/metadata.jsonl", "00000/samples/0000.png",
                                       "00000/samples/0001.png"}
    assert record["counts"]["skipped_bad_records"] == 2
    assert f"{path}:4: invalid JSON" in record["skipped_bad_records"][1]


@pytest.mark.parametrize("content, message", [
    ('{"a": {"id": "missing.jpg", "prompt": "p"}}', "source image .* not found; paths are relative to"),
    ('{"a": {"id": "x.jpg"}}', "'prompt' must be a non-empty string"),
    ('{"../a": {"id": "x.jpg", "prompt": "p"}}', "cannot be used as a file or folder name"),
    ('{"a": {"id": "x.jpg", "prompt": "p"},\n "b": {"id": "x.jpg", "prompt": "q"}', "closing"),
])
def test_bad_imgedit_records(model, tmp_path, content, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    (tmp_path / "singleturn.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        run(model, "imgedit", tmp_path, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_duplicate_ids_are_refused(model, tmp_path):
    (tmp_path / "w.json").write_text('[{"prompt_id": 1, "Prompt": "a"},\n {"prompt_id": 1, "Prompt": "b"}]')
    with pytest.raises(ValueError, match=r"w.json:2: id '1' repeats the record at .*w.json:1"):
        run(model, "wise", tmp_path / "w.json", tmp_path / "run")


def test_shapeeval_scores_next_to_the_images(model, tmp_path):
    out = tmp_path / "run"
    record = run(model, "shapeeval", Path("eval:5"), out, run_settings=settings("shapeeval", height=64, width=64))
    assert record["scores"] == "scores.json"
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["capabilities"]) == {"generation", "reasoning_generation", "editing", "reasoning_editing",
                                           "text_rendering"}
    for capability in scores["capabilities"].values():
        low, high = capability["overall_interval"]
        assert 0.0 <= low <= capability["overall"] <= high <= 1.0
    assert (out / "scores.md").is_file()
    assert any(name.endswith("_source.png") for name in files(out))


def test_sample_seed_depends_only_on_its_inputs():
    base = sample_seed(42, "geneval", "00001", 0)
    assert base == sample_seed(42, "geneval", "00001", 0) and 0 <= base < 2**63
    assert len({base, sample_seed(43, "geneval", "00001", 0), sample_seed(42, "dpg", "00001", 0),
                sample_seed(42, "geneval", "00002", 0), sample_seed(42, "geneval", "00001", 1)}) == 5


@pytest.mark.parametrize("n, count", [(0, 2), (1, 2), (7, 2), (7, 3), (10, 4), (3, 5)])
def test_shards_are_disjoint_complete_and_unpadded(n, count):
    items = list(range(n))
    shares = [shard(items, index, count) for index in range(count)]
    assert sum(shares, []) == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_batches_group_equal_keys_only():
    from deepgen.bench.base import Item

    items = [Item(str(i), "p" * (i % 3), (), "") for i in range(7)]
    batches = plan_batches(items, key=lambda item: len(item.prompt), batch_size=2)
    assert [[item.id for item in batch] for batch in batches] == [["0", "3"], ["6"], ["1", "4"], ["2", "5"]]


def test_cli_prints_the_scorer_command(tmp_path, capsys):
    from deepgen.cli import main

    data = write_wise(tmp_path)
    code = main(["bench", "wise", "--data", str(data), "--out", str(tmp_path / "run"), "--model", "tiny",
                 "--steps", "1", "--size", str(SIZE), "--limit", "1", "--no-progress", "--device", "cpu"])
    assert code == 0 and files(tmp_path / "run") == {"record.json", "9001.png"}
    assert f"--image_dir {tmp_path / 'run'}" in capsys.readouterr().out
    assert main(["bench", "wise", "--data", str(data), "--out", str(tmp_path / "run"), "--model", "tiny",
                 "--steps", "2", "--size", str(SIZE), "--no-progress", "--device", "cpu"]) == 2
    assert "other settings" in capsys.readouterr().err


SHARD_SCRIPT = """
import sys
from deepgen.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_processes_with_gloo_split_the_items(tmp_path):
    """Two CPU processes (torch.distributed, gloo, loopback) write disjoint items, the same bytes as one process."""
    (tmp_path / "p.json").write_text(json.dumps([{"prompt_id": i, "Prompt": f"prompt number {i}"} for i in range(5)]))
    port = free_port()
    args = ["bench", "wise", "--data", str(tmp_path / "p.json"), "--model", "tiny", "--steps", "1", "--size",
            str(SIZE), "--batch-size", "2", "--no-progress", "--device", "cpu"]
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", SHARD_SCRIPT, *args, "--out", str(tmp_path / "two")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    record = json.loads((tmp_path / "two" / "record.json").read_text())
    assert record["environment"]["num_processes"] == 2
    assert sorted(p["items"] for p in record["sessions"][0]["processes"]) == [2, 3]
    single = subprocess.run([sys.executable, "-c", SHARD_SCRIPT, *args, "--out", str(tmp_path / "one")],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    for i in range(5):
        assert (tmp_path / "two" / f"{i}.png").read_bytes() == (tmp_path / "one" / f"{i}.png").read_bytes()

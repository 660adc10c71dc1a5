"""The Studio and its five tasks (``studio/tasks.py``, with ``studio/models.py`` and ``studio/records.py``) on the
``tiny`` preset: tiny sizes, 1-2 steps, offline."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepgen.contestants import LoadedModel
from studio import inputs
from studio.records import OUTPUT_TTL_S
from studio.settings import MAX_PROMPT_CHARS, MAX_STEPS, StudioInputError
from studio.tasks import Studio

REPO = Path(__file__).resolve().parents[1]
FAST = dict(width=64, height=64, steps=1, guidance=4.0)


def write_registry(path: Path, extra: str = "") -> Path:
    """Two offline DeepGen contestants (both the tiny preset) and a hub baseline that cannot load offline."""
    path.write_text(f"""
contestants:
  - {{id: tiny, label: tiny A, kind: deepgen, source: tiny, steps: 1, guidance: 1.0}}
  - {{id: tiny-b, label: tiny B, kind: deepgen, source: tiny, steps: 2, guidance: 2.0}}
  - id: sd35
    label: SD3.5 Medium
    kind: diffusers
    source: stabilityai/stable-diffusion-3.5-medium
    pipeline_class: StableDiffusion3Pipeline
    tasks: [t2i]
{extra}""", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    registry = write_registry(tmp_path_factory.mktemp("registry") / "contestants.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        studio = Studio.create(model="tiny", registry=registry, device="cpu",
                                  output_root=tmp_path_factory.mktemp("outputs"))
        yield studio
    studio.close()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def png_settings(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["deepgen"])


# --- contestants -------------------------------------------------------------------------------------------------


def test_unavailable_contestants_are_reported_not_fatal(studio):
    available, reason = studio.manager.availability("sd35")
    assert not available and "offline" in reason
    assert ("SD3.5 Medium (unavailable)", "sd35") in studio.contestant_choices()
    assert "unavailable" in studio.contestants_table()
    with pytest.raises(StudioInputError, match="SD3.5 Medium is unavailable"):
        studio.manager.get("sd35")


def test_banner_names_the_running_model(studio):
    banner = studio.model_banner()
    assert "tiny A" in banner and "`tiny`" in banner and "cpu" in banner and "random-weight" in banner
    assert "VLM weights:" in banner  # which VLM weights run (release, base, random) is always said


def test_unknown_model_becomes_the_running_contestant(tmp_path):
    with pytest.raises(ValueError, match="Cannot start with model 'no/such-model'"):
        Studio.create(model="no/such-model", registry=write_registry(tmp_path / "c.yaml"), device="cpu",
                         output_root=tmp_path / "out")


# --- generate -------------------------------------------------------------------------------------------------


def test_speed_options_apply_to_deepgen_models_and_are_recorded(tmp_path):
    from deepgen.acceleration import AccelerationOptions

    options = AccelerationOptions(cache_threshold=0.085)
    fast = Studio.create(model="deepgen-nano", registry=write_registry(tmp_path / "c.yaml"), device="cpu",
                         output_root=tmp_path / "out", acceleration=options)  # nano: a DiT deep enough to cache
    try:
        assert fast.manager.get(fast.manager.active_id).pipe.transformer.is_cache_enabled
        record = fast.generate("a red circle", seed=1, **FAST).record
        assert record["acceleration"]["cache_threshold"] == 0.085 and record["acceleration"]["compile"] is False
    finally:
        fast.close()



def test_generate_writes_lossless_pngs_with_settings_and_a_record(studio):
    steps_seen = []
    result = studio.generate("a red circle", "blurry", seed=11, num_images=2,
                             progress=lambda done, total, desc: steps_seen.append((done, total)), **FAST)
    run = result.runs[0]
    assert run.seeds == [11, 12] and len(result.files) == 2 and run.sizes == [(64, 64), (64, 64)]
    assert steps_seen[0] == (1, 2) and steps_seen[-1] == (2, 2)  # the progress bar counts denoising steps
    settings = png_settings(result.files[1])
    assert settings["seed"] == 12 and settings["prompt"] == "a red circle" and settings["negative_prompt"] == "blurry"
    assert settings["model"] == "tiny" and settings["revision"] == "random-init:seed0" and settings["steps"] == 1
    record = result.record
    assert record["task"] == "generate" and record["models"]["tiny"]["revision"] == "random-init:seed0"
    assert record["runs"][0]["seeds"] == [11, 12] and record["runs"][0]["elapsed_s"] >= 0
    assert record["environment"]["packages"]["torch"] and record["environment"]["python"]
    assert record["environment"]["device"] == "cpu" and record["runs"][0]["peak_memory_bytes"] > 0
    with zipfile.ZipFile(result.zip_path) as archive:
        names = set(archive.namelist())
        assert {"record.json", *(p.name for p in result.files)} <= names
        assert json.loads(archive.read("record.json"))["runs"][0]["files"] == [p.name for p in result.files]


def test_generate_is_reproducible_from_the_recorded_seed(studio):
    first = studio.generate("a blue square", seed=None, **FAST)
    seed = first.runs[0].seeds[0]
    second = studio.generate("a blue square", seed=seed, **FAST)
    assert np.array_equal(np.asarray(Image.open(first.files[0])), np.asarray(Image.open(second.files[0])))


def test_user_text_never_becomes_a_path(studio):
    result = studio.generate("../../etc/passwd", seed=1, **FAST)
    assert all(p.parent == result.folder and ".." not in p.name and "passwd" not in p.name for p in result.files)
    assert result.folder.parent == studio.output_root


# --- validation before model work ------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt="x" * (MAX_PROMPT_CHARS + 1)), "limit is"),
    (dict(steps=0), "Steps must be"),
    (dict(steps=MAX_STEPS + 1), "Steps must be"),
    (dict(guidance=float("nan")), "Guidance must be"),
    (dict(width=70), "Width must be a multiple of 16"),
    (dict(height=4096), "Height must be"),
    (dict(seed=-1), "seed must be"),
    (dict(num_images=5), "1 to 4 images"),
])
def test_generate_refuses_bad_input_before_model_work(studio, monkeypatch, change, message):
    monkeypatch.setattr(LoadedModel, "run", lambda *a, **k: pytest.fail("the model ran on bad input"))
    request = dict(prompt="ok", **FAST, seed=0, num_images=1) | change
    with pytest.raises(StudioInputError, match=message):
        studio.generate(**request)


def test_edit_refuses_bad_uploads(studio, tmp_path, monkeypatch):
    monkeypatch.setattr(LoadedModel, "run", lambda *a, **k: pytest.fail("the model ran on bad input"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    image = tmp_path / "ok.png"
    Image.new("RGB", (32, 32), "red").save(image)
    with pytest.raises(StudioInputError, match="Upload at least one image"):
        studio.edit(None, "make it blue", steps=1)
    with pytest.raises(StudioInputError, match="not an image"):
        studio.edit([str(text)], "make it blue", steps=1)
    with pytest.raises(StudioInputError, match="at most 4"):
        studio.edit([str(image)] * 5, "make it blue", steps=1)
    bomb = tmp_path / "huge.png"
    Image.new("1", (5000, 5000)).save(bomb)  # tiny file, 25 megapixels once decoded
    with pytest.raises(StudioInputError, match="larger than 4096x4096 pixels"):
        studio.edit([str(bomb)], "make it blue", steps=1)
    monkeypatch.setattr(inputs, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(StudioInputError, match="the limit is"):
        studio.edit([str(image)], "make it blue", steps=1)


# --- edit -------------------------------------------------------------------------------------------------------


def test_edit_output_follows_the_source_and_keeps_the_before_image(studio, tmp_path):
    source = tmp_path / "wide.png"
    Image.new("RGB", (96, 64), (200, 30, 30)).save(source)
    result = studio.edit([str(source)], "make it blue", steps=1, seed=3)
    assert result.runs[0].sizes == [(96, 64)]  # aspect ratio of the source, multiples of 32
    assert Image.open(result.references[0]).size == (96, 64)
    assert png_settings(result.files[0])["reference_images"] == 1
    custom = studio.edit([str(source)], "make it blue", follow_source=False, width=64, height=64, steps=1)
    assert custom.runs[0].sizes == [(64, 64)]


def test_multi_image_edit(studio):
    examples = REPO / "assets" / "examples"
    result = studio.edit([str(examples / "red-circle.png"), str(examples / "green-scene.png")],
                         "put the circle on the ground", follow_source=False, width=64, height=64, steps=1)
    assert result.runs[0].references_used == 2 and len(result.references) == 2


# --- compare, seed sweep, prompt list ------------------------------------------------------------------------------


def test_compare_runs_each_contestant_and_reports_the_unavailable(studio):
    result = studio.compare(["tiny", "tiny-b", "sd35"], "a green triangle", seed=5, **FAST)
    tiny, tiny_b, sd35 = result.runs
    assert tiny.files and tiny_b.files and not sd35.files
    assert "offline" in sd35.error and tiny.error is None
    assert tiny.elapsed_s > 0 and tiny.peak_memory_bytes and tiny.peak_memory_kind == "process_rss"
    # same prompt, seed and settings for everyone
    settings = {(r.prompt, tuple(r.seeds), r.steps, r.guidance) for r in result.runs}
    assert settings == {("a green triangle", (5,), 1, 4.0)}
    assert result.grid_path.is_file() and "sd35" in result.record["models"]
    assert "unavailable" in result.summary() and len(result.gallery()) == 2


def test_compare_recommended_settings_and_edit_support(studio):
    source = REPO / "assets" / "examples" / "red-circle.png"
    result = studio.compare(["tiny-b", "sd35"], "make it blue", images=[str(source)], recommended_settings=True,
                            **FAST)
    assert (result.runs[0].steps, result.runs[0].guidance) == (2, 2.0)  # tiny-b's registry settings
    assert "does not edit images" in result.runs[1].error


@pytest.mark.parametrize("selection, message", [(["tiny"], "Select 2 to 4"), (["tiny", "nope"], "Unknown"),
                                                (["tiny", "tiny"], "once")])
def test_compare_needs_two_to_four_known_contestants(studio, selection, message):
    with pytest.raises(StudioInputError, match=message):
        studio.compare(selection, "a cat", **FAST)


def test_one_failing_contestant_does_not_stop_the_others(studio, monkeypatch):
    real_run = LoadedModel.run

    def run(self, *args, **kwargs):
        if self.contestant.id == "tiny-b":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(LoadedModel, "run", run)
    result = studio.compare(["tiny", "tiny-b"], "a cat", **FAST)
    assert result.runs[0].files and "ran out of memory" in result.runs[1].error


def test_seed_sweep_grid(studio):
    result = studio.seed_sweep(["tiny", "tiny-b"], "a star", seed=7, num_seeds=2, **FAST)
    assert [r.seeds for r in result.runs] == [[7, 8], [7, 8]]
    with Image.open(result.grid_path) as grid:
        assert grid.height > 2 * 200  # two rows of tiles
    with pytest.raises(StudioInputError, match="seed sweep takes"):
        studio.seed_sweep(["tiny", "tiny-b"], "a star", num_seeds=99, **FAST)


def test_prompt_batch_from_txt_and_jsonl(studio, tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_text("# a comment\na red circle\n\na blue square\n", encoding="utf-8")
    result = studio.prompt_batch(["tiny", "tiny-b"], str(txt), seed=4, **FAST)
    assert [r.prompt for r in result.runs] == ["a red circle"] * 2 + ["a blue square"] * 2
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "a ring", "seed": 9, "negative_prompt": "dark"}\n"a star"\n', encoding="utf-8")
    result = studio.prompt_batch(["tiny", "tiny-b"], str(jsonl), seed=4, **FAST)
    assert [(r.prompt, r.seeds, r.negative_prompt) for r in result.runs[::2]] == [("a ring", [9], "dark"),
                                                                                ("a star", [4], "")]
    assert result.grid_path.is_file()


# --- outputs and start-up ------------------------------------------------------------------------------------------


def test_old_outputs_are_pruned(studio):
    old = studio.generate("a ring", seed=1, **FAST).folder
    studio.output_ttl_s = -1
    try:
        fresh = studio.generate("a ring", seed=1, **FAST).folder
    finally:
        studio.output_ttl_s = OUTPUT_TTL_S
    assert not old.exists() and fresh.exists()


def test_model_comes_from_the_environment_or_a_folder(tmp_path, monkeypatch, tiny_pipe):
    registry = write_registry(tmp_path / "c.yaml")
    monkeypatch.setenv("DEEPGEN_MODEL", "tiny-b")
    by_env = Studio.create(registry=registry, device="cpu", output_root=tmp_path / "a")
    assert by_env.active.id == "tiny-b"
    folder = tmp_path / "my-checkpoint"
    tiny_pipe.save_pretrained(folder)
    by_folder = Studio.create(model=str(folder), registry=registry, device="cpu", output_root=tmp_path / "b")
    assert by_folder.active.id == "running" and "my-checkpoint" in by_folder.model_banner()
    assert by_folder.generate("a ring", seed=1, **FAST).record["models"]["running"]["revision"].startswith("sha256:")

"""DeepGen Studio logic (``deepgen/studio.py``) on the ``tiny`` preset: tiny sizes, 1-2 steps, offline."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from deepgen import studio as st

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
        studio = st.Studio.create(model="tiny", registry=registry, device="cpu",
                                  output_root=tmp_path_factory.mktemp("outputs"))
        yield studio
    studio.close()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def png_settings(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["deepgen"])


# --- registry -------------------------------------------------------------------------------------------------


def test_shipped_registry_lists_deepgen_and_the_baselines():
    contestants = {c.id: c for c in st.load_registry(REPO / "contestants.yaml")}
    classes = {c.pipeline_class for c in contestants.values() if c.kind == "diffusers"}
    assert {"StableDiffusion3Pipeline", "FluxKontextPipeline", "QwenImagePipeline", "QwenImageEditPipeline"} <= classes
    assert "tiny" in contestants and contestants["tiny"].kind == "deepgen"
    assert any(c.filename for c in contestants.values()), "native DeepGen checkpoints (Pretrain/SFT/RL)"
    assert contestants["qwen-image-edit"].tasks == ("edit",)
    assert contestants["qwen-image"].guidance_argument == "true_cfg_scale"


@pytest.mark.parametrize("entry, message", [
    ("- {id: x, label: X, kind: magic, source: tiny}", "kind must be one of"),
    ("- {id: x, label: X, kind: diffusers, source: a/b, pipeline_class: os}", "pipeline_class must name"),
    ("- {id: x, label: X, kind: deepgen, source: tiny, colour: red}", "unknown fields ['colour']"),
    ("- {id: ../x, label: X, kind: deepgen, source: tiny}", "ids are 1-64 letters"),
    ("- {id: x, label: X, kind: deepgen, source: tiny, tasks: [video]}", "tasks must be"),
    ("- {id: x, label: X, kind: deepgen, source: tiny}\n  - {id: x, label: Y, kind: deepgen, source: tiny}",
     "repeated: ['x']"),
])
def test_registry_errors_name_the_entry_and_field(tmp_path, entry, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"contestants:\n  {entry}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        st.load_registry(path)


def test_unavailable_contestants_are_reported_not_fatal(studio):
    available, reason = studio.manager.availability("sd35")
    assert not available and "offline" in reason
    assert ("SD3.5 Medium (unavailable)", "sd35") in studio.contestant_choices()
    assert "unavailable" in studio.contestants_table()
    with pytest.raises(st.StudioInputError, match="SD3.5 Medium is unavailable"):
        studio.manager.get("sd35")


def test_banner_names_the_running_model(studio):
    banner = studio.model_banner()
    assert "tiny A" in banner and "`tiny`" in banner and "cpu" in banner and "random-weight" in banner


def test_unknown_model_becomes_the_running_contestant(tmp_path):
    with pytest.raises(ValueError, match="Cannot start with model 'no/such-model'"):
        st.Studio.create(model="no/such-model", registry=write_registry(tmp_path / "c.yaml"), device="cpu",
                         output_root=tmp_path / "out")


# --- generate -------------------------------------------------------------------------------------------------


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
    (dict(prompt="x" * (st.MAX_PROMPT_CHARS + 1)), "limit is"),
    (dict(steps=0), "Steps must be"),
    (dict(steps=st.MAX_STEPS + 1), "Steps must be"),
    (dict(guidance=float("nan")), "Guidance must be"),
    (dict(width=70), "Width must be a multiple of 16"),
    (dict(height=4096), "Height must be"),
    (dict(seed=-1), "seed must be"),
    (dict(num_images=5), "1 to 4 images"),
])
def test_generate_refuses_bad_input_before_model_work(studio, monkeypatch, change, message):
    monkeypatch.setattr(st.LoadedModel, "run", lambda *a, **k: pytest.fail("the model ran on bad input"))
    request = dict(prompt="ok", **FAST, seed=0, num_images=1) | change
    with pytest.raises(st.StudioInputError, match=message):
        studio.generate(**request)


def test_edit_refuses_bad_uploads(studio, tmp_path, monkeypatch):
    monkeypatch.setattr(st.LoadedModel, "run", lambda *a, **k: pytest.fail("the model ran on bad input"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    image = tmp_path / "ok.png"
    Image.new("RGB", (32, 32), "red").save(image)
    with pytest.raises(st.StudioInputError, match="Upload at least one image"):
        studio.edit(None, "make it blue", steps=1)
    with pytest.raises(st.StudioInputError, match="not an image"):
        studio.edit([str(text)], "make it blue", steps=1)
    with pytest.raises(st.StudioInputError, match="at most 4"):
        studio.edit([str(image)] * 5, "make it blue", steps=1)
    bomb = tmp_path / "huge.png"
    Image.new("1", (5000, 5000)).save(bomb)  # tiny file, 25 megapixels once decoded
    with pytest.raises(st.StudioInputError, match="exceeds the limit"):
        studio.edit([str(bomb)], "make it blue", steps=1)
    monkeypatch.setattr(st, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(st.StudioInputError, match="the limit is"):
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
    with pytest.raises(st.StudioInputError, match=message):
        studio.compare(selection, "a cat", **FAST)


def test_one_failing_contestant_does_not_stop_the_others(studio, monkeypatch):
    real_run = st.LoadedModel.run

    def run(self, *args, **kwargs):
        if self.contestant.id == "tiny-b":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(st.LoadedModel, "run", run)
    result = studio.compare(["tiny", "tiny-b"], "a cat", **FAST)
    assert result.runs[0].files and "ran out of memory" in result.runs[1].error


def test_seed_sweep_grid(studio):
    result = studio.seed_sweep(["tiny", "tiny-b"], "a star", seed=7, num_seeds=2, **FAST)
    assert [r.seeds for r in result.runs] == [[7, 8], [7, 8]]
    with Image.open(result.grid_path) as grid:
        assert grid.height > 2 * 200  # two rows of tiles
    with pytest.raises(st.StudioInputError, match="seed sweep takes"):
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


@pytest.mark.parametrize("name, content, message", [
    ("p.csv", "a", "must be a .txt or .jsonl"),
    ("p.txt", "\n# only a comment\n", "no prompts"),
    ("p.jsonl", "{not json}\n", "Line 1 .* not valid JSON"),
    ("p.jsonl", '{"text": "a"}\n', "Line 1: expected"),
    ("p.txt", "a\n" * (st.MAX_BATCH_PROMPTS + 1), "the limit is"),
])
def test_prompt_file_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(st.StudioInputError, match=message):
        st.parse_prompt_file(str(path))


# --- helpers ------------------------------------------------------------------------------------------------------


class FakePipe:
    """Records the call a baseline pipeline would get."""

    def __init__(self):
        self.kwargs = None

    def __call__(self, **kwargs):
        self.kwargs = kwargs
        kwargs["callback_on_step_end"](self, 0, None, {})
        return type("Output", (), {"images": [Image.new("RGB", (32, 32))]})()


@pytest.mark.parametrize("entry, expected", [
    (dict(id="qwen", pipeline_class="QwenImageEditPipeline", guidance_argument="true_cfg_scale",
          max_reference_images=1), {"true_cfg_scale": 3.0, "negative_prompt": " "}),
    (dict(id="kontext", pipeline_class="FluxKontextPipeline", negative_prompt=False, max_reference_images=1),
     {"guidance_scale": 3.0}),
])
def test_baselines_get_their_own_argument_names(entry, expected):
    contestant = st.Contestant(label="baseline", kind="diffusers", source="org/model", **entry)
    pipe, steps = FakePipe(), []
    refs = [Image.new("RGB", (32, 32)), Image.new("RGB", (32, 32))]
    st.LoadedModel(contestant, pipe, "abc", torch.device("cpu")).run("make it blue", "", refs, None, None, 2, 3.0, 1,
                                                                     steps.append)
    assert {k: pipe.kwargs[k] for k in expected} == expected
    assert "negative_prompt" in pipe.kwargs or "negative_prompt" not in expected
    assert pipe.kwargs["image"] is refs[0] and pipe.kwargs["num_inference_steps"] == 2 and steps == [0]
    assert pipe.kwargs["height"] is None and pipe.kwargs["width"] is None  # the edit follows the source


def test_aspect_presets_keep_the_long_side_in_multiples_of_32():
    assert st.aspect_size("1:1 square", 512) == (512, 512)
    assert st.aspect_size("16:9 wide", 1024) == (1024, 576)
    assert st.aspect_size("3:4 portrait", 512) == (384, 512)
    with pytest.raises(st.StudioInputError):
        st.aspect_size("5:1", 512)


def test_gpu_duration_grows_with_the_work_and_is_clamped():
    c = st.Contestant(id="m", label="M", kind="deepgen", source="tiny", gpu_seconds_per_step=0.5,
                      gpu_load_seconds=30)
    base = st.estimate_gpu_seconds([c], 20, 1024, 1024, 1)
    assert st.MIN_GPU_SECONDS <= base < st.estimate_gpu_seconds([c], 40, 1024, 1024, 1)
    assert base < st.estimate_gpu_seconds([c], 20, 1024, 1024, 2) < st.estimate_gpu_seconds([c, c], 20, 1024, 1024, 2)
    assert base < st.estimate_gpu_seconds([c], 20, 1024, 1024, 1, reference_images=1)
    assert base < st.estimate_gpu_seconds([c], 20, 1024, 1024, 1, loaded=lambda cid: False)
    assert st.estimate_gpu_seconds([c] * 4, 100, 2048, 2048, 4) == st.MAX_GPU_SECONDS
    assert st.estimate_gpu_seconds([c], "bad", None, None) == st.MIN_GPU_SECONDS


def test_user_errors_show_clear_messages_and_hide_tracebacks():
    def fails(error):
        @st.user_errors
        def handler():
            raise error
        with pytest.raises(gr.Error) as caught:
            handler()
        return caught.value.message

    assert fails(st.StudioInputError("The prompt is empty.")) == "The prompt is empty."
    assert "out of memory" in fails(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    secret = fails(RuntimeError("/srv/secret/path.py line 3"))
    assert secret == st.GENERIC_ERROR and "secret" not in secret


def test_gpu_task_is_a_no_op_without_spaces():
    fn = lambda x: x  # noqa: E731
    assert st.spaces is not None or st.gpu_task(duration=lambda *a: 10)(fn) is fn


def test_shipped_examples_exist():
    prompts, edits = st.load_examples()
    assert prompts and edits and all(Path(p).is_file() for images, _ in edits for p in images)
    assert any(len(images) > 1 for images, _ in edits)  # a multi-image example


def test_old_outputs_are_pruned(studio):
    old = studio.generate("a ring", seed=1, **FAST).folder
    studio.output_ttl_s = -1
    try:
        fresh = studio.generate("a ring", seed=1, **FAST).folder
    finally:
        studio.output_ttl_s = st.OUTPUT_TTL_S
    assert not old.exists() and fresh.exists()


def test_model_comes_from_the_environment_or_a_folder(tmp_path, monkeypatch, tiny_pipe):
    registry = write_registry(tmp_path / "c.yaml")
    monkeypatch.setenv("DEEPGEN_MODEL", "tiny-b")
    by_env = st.Studio.create(registry=registry, device="cpu", output_root=tmp_path / "a")
    assert by_env.active.id == "tiny-b"
    folder = tmp_path / "my-checkpoint"
    tiny_pipe.save_pretrained(folder)
    by_folder = st.Studio.create(model=str(folder), registry=registry, device="cpu", output_root=tmp_path / "b")
    assert by_folder.active.id == "running" and "my-checkpoint" in by_folder.model_banner()
    assert by_folder.generate("a ring", seed=1, **FAST).record["models"]["running"]["revision"].startswith("sha256:")

"""The contestants registry (``deepgen/contestants.py``): the shipped file, errors that name the entry, and each
baseline called with its own argument names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from deepgen.contestants import Contestant, EditExample, Examples, LoadedModel, load_registry

REPO = Path(__file__).resolve().parents[1]


def test_shipped_registry_lists_deepgen_and_the_baselines():
    contestants = {c.id: c for c in load_registry(REPO / "contestants.yaml")}
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
        load_registry(path)


def test_examples_resolve_image_paths_against_the_registry_folder(tmp_path):
    (tmp_path / "pics").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "pics" / name)
    path = tmp_path / "c.yaml"
    path.write_text("""contestants:
  - id: x
    label: X
    kind: deepgen
    source: tiny
    examples:
      prompts: [a red square]
      edits:
        - {image: pics/a.png, instruction: make it blue}
        - {image: [pics/a.png, pics/b.png], instruction: put the first in the second}
  - {id: y, label: Y, kind: deepgen, source: tiny}
""", encoding="utf-8")
    x, y = load_registry(path)
    assert x.examples == Examples(("a red square",), (
        EditExample((str(tmp_path / "pics" / "a.png"),), "make it blue"),
        EditExample((str(tmp_path / "pics" / "a.png"), str(tmp_path / "pics" / "b.png")),
                    "put the first in the second")))
    assert y.examples is None


@pytest.mark.parametrize("examples, message", [
    ("[a, b]", "examples must be a mapping"),
    ("{prompts: [a], videos: [b]}", "unknown keys ['videos']"),
    ("{prompts: a red square}", "must be lists"),
    ("{prompts: ['']}", "prompts #1 must be a non-empty string"),
    ("{edits: [{image: a.png}]}", "edits #1 must be a mapping with exactly ['image', 'instruction']"),
    ("{edits: [{image: [], instruction: x}]}", "image must be one path or a list of 1-4 paths"),
    ("{edits: [{image: missing.png, instruction: x}]}", "do not exist; image paths are relative to the registry"),
])
def test_example_errors_name_the_entry(tmp_path, examples, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"contestants:\n  - {{id: x, label: X, kind: deepgen, source: tiny, examples: {examples}}}\n",
                    encoding="utf-8")
    pattern = message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
    with pytest.raises(ValueError, match=f"contestant #1 \\('x'\\).*{pattern}"):
        load_registry(path)


def test_shipped_examples_fit_each_model():
    sys.path.insert(0, str(REPO / "assets"))
    import make_examples

    from deepgen.nano import world

    contestants = {c.id: c for c in load_registry(REPO / "contestants.yaml")}
    # The default model draws one object for a bare prompt, so its examples start with one; the others do not.
    for cid, plain in (("deepgen-nano", True), ("deepgen-nano-stage1", False), ("deepgen-nano-v2-rl", False)):
        nano = make_examples.nano_examples(plain=plain)
        examples = contestants[cid].examples
        # Nano's examples are world samples (so only words it was trained on), as make_examples.py names them.
        assert list(examples.prompts) == nano["prompts"]
        assert [edit.instruction for edit in examples.edits] == [edit["instruction"] for edit in nano["edits"]]
        assert [edit.images for edit in examples.edits] == [(str(REPO / edit["image"]),) for edit in nano["edits"]]
    capabilities = {capability for capability, _ in make_examples.NANO_PROMPTS}
    assert {"generation", "reasoning_generation", "text_rendering"} <= capabilities
    for (capability, index, name), edit in zip(make_examples.NANO_EDITS, contestants["deepgen-nano"].examples.edits):
        sample = make_examples.nano_sample(capability, index)
        assert Image.open(edit.images[0]).tobytes() == sample.source_image(make_examples.NANO_SIZE).tobytes()
    vocabulary = {word for phrase in world.caption_corpus() for word in phrase.split()}
    for prompt in nano["prompts"] + [edit["instruction"] for edit in nano["edits"]]:
        assert set(prompt.split()) <= vocabulary, prompt
    for cid in ("deepgen-1.0", "deepgen-1.0-pretrain", "deepgen-1.0-sft", "deepgen-1.0-rl"):
        examples = contestants[cid].examples
        assert len(examples.prompts) >= 4 and all(len(p.split()) >= 8 for p in examples.prompts[:4])
        assert any(len(edit.images) > 1 for edit in examples.edits)
        assert all(Path(image).is_file() for edit in examples.edits for image in edit.images)


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
    contestant = Contestant(label="baseline", kind="diffusers", source="org/model", **entry)
    pipe, steps = FakePipe(), []
    refs = [Image.new("RGB", (32, 32)), Image.new("RGB", (32, 32))]
    LoadedModel(contestant, pipe, "abc", torch.device("cpu")).run("make it blue", "", refs, None, None, 2, 3.0, 1,
                                                                  steps.append)
    assert {k: pipe.kwargs[k] for k in expected} == expected
    assert "negative_prompt" in pipe.kwargs or "negative_prompt" not in expected
    assert pipe.kwargs["image"] is refs[0] and pipe.kwargs["num_inference_steps"] == 2 and steps == [0]
    assert pipe.kwargs["height"] is None and pipe.kwargs["width"] is None  # the edit follows the source

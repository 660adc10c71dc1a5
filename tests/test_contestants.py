"""The contestants registry (``deepgen/contestants.py``): the shipped file, errors that name the entry, and each
baseline called with its own argument names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from deepgen.contestants import Contestant, LoadedModel, load_registry

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

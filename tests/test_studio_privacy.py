"""What the page and exports say about the server (``studio/records.py``): a local model by its name only, the
operating system without its kernel build."""

from __future__ import annotations

import platform

import torch

from deepgen.contestants import Contestant
from studio.records import Run, environment_record, public_source


def test_local_model_paths_are_shown_by_name_only(tmp_path):
    folder = tmp_path / "secret-user" / "my-deepgen"
    folder.mkdir(parents=True)
    assert public_source(str(folder)) == "my-deepgen"
    assert public_source("/srv/models/gone.safetensors") == "gone.safetensors"  # absolute, even when missing
    assert public_source("deepgenteam/DeepGen-1.0") == "deepgenteam/DeepGen-1.0" and public_source("tiny") == "tiny"


def test_png_settings_name_the_model_without_its_path(tmp_path):
    folder = tmp_path / "secret-user" / "my-deepgen"
    folder.mkdir(parents=True)
    contestant = Contestant(id="running", label="mine", kind="deepgen", source=str(folder))
    model = type("Loaded", (), {"contestant": contestant, "revision": "abc"})()
    run = Run("running", "mine", "p", "", [0], 1, 4.0, 64, 64)
    settings = run.png_settings("generate", model, 0, type("Image", (), {"width": 64, "height": 64})())
    assert settings["model_source"] == "my-deepgen" and "secret-user" not in str(settings)


def test_exports_keep_versions_but_not_the_kernel_string():
    record = environment_record(torch.device("cpu"))
    assert record["platform"] == platform.system() and record["packages"]["torch"]
    assert platform.release() not in str(record)

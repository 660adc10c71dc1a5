"""The command line (deepgen/cli.py), run in-process on the random ``tiny`` model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deepgen.acceleration import DEFAULT_CACHE_THRESHOLD, AccelerationOptions
from deepgen.cli import acceleration_options, build_parser, main


def generate(tmp_path, *extra: str, out: str = "x.png", prompt: str = "a red circle") -> int:
    return main(["generate", "--model", "tiny", "--device", "cpu", "--steps", "1", "--prompt", prompt,
                 "--out", str(tmp_path / out), *extra])


def test_generate_writes_png_with_settings(tmp_path, capsys):
    assert generate(tmp_path, "--size", "32", "--seed", "3", "--guidance", "2.5") == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(tmp_path / "x.png") as image:
        assert image.format == "PNG" and image.size == (32, 32)
        text = dict(image.text)
    assert text["prompt"] == "a red circle"
    assert (text["seed"], text["model"], text["steps"], text["guidance"]) == ("3", "tiny", "1", "2.5")
    settings = json.loads(text["deepgen"])
    assert settings["prompt"] == "a red circle" and settings["seed"] == 3 and settings["guidance"] == 2.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"], "temporary files were left behind"
    assert (tmp_path / "x.png").stat().st_mode & 0o777 == 0o644  # readable like any other image, not owner-only


def test_same_seed_same_image(tmp_path):
    assert generate(tmp_path, "--size", "32", out="a.png") == 0
    assert generate(tmp_path, "--size", "32", out="b.png") == 0
    assert generate(tmp_path, "--size", "32", "--seed", "1", out="c.png") == 0
    a, b, c = (np.asarray(Image.open(tmp_path / name)) for name in ("a.png", "b.png", "c.png"))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_edit_with_image(tmp_path):
    source = np.random.default_rng(0).integers(0, 256, size=(32, 64, 3), dtype=np.uint8)
    Image.fromarray(source).save(tmp_path / "source.png")
    assert generate(tmp_path, "--image", str(tmp_path / "source.png"), prompt="make it green", out="edit.png") == 0
    with Image.open(tmp_path / "edit.png") as image:
        assert image.size == (64, 32)  # follows the source
        assert json.loads(image.text["deepgen"])["images"] == [str(tmp_path / "source.png")]


def test_bad_out_suffix(tmp_path, capsys):
    assert generate(tmp_path, "--size", "32", out="x.jpg") == 2
    assert "--out must end in .png" in capsys.readouterr().err
    assert not (tmp_path / "x.jpg").exists()


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(tmp_path, capsys, prompt):
    assert generate(tmp_path, "--size", "32", prompt=prompt) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "empty" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, message", [
    (("--size", "40"), "multiple of 16"),
    (("--steps", "0"), "num_inference_steps"),
    (("--image", "missing.png"), "not a readable image"),
])
def test_other_bad_arguments_exit_2(tmp_path, capsys, args, message):
    assert generate(tmp_path, *args) == 2
    assert message in capsys.readouterr().err


def test_missing_prompt_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", "tiny", "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2


def test_speed_flags_are_recorded(tmp_path):
    pytest.importorskip("torchao")
    assert generate(tmp_path, "--size", "32", "--quantize", "int8-weight-only") == 0
    with Image.open(tmp_path / "x.png") as image:
        record = json.loads(image.text["deepgen"])["acceleration"]
    assert record["quantize"] == "int8-weight-only" and not record["compile"] and record["cache_threshold"] is None


def test_plain_run_records_no_speed_option(tmp_path):
    assert generate(tmp_path, "--size", "32") == 0
    with Image.open(tmp_path / "x.png") as image:
        record = json.loads(image.text["deepgen"])["acceleration"]
    assert record == AccelerationOptions().to_record()


def test_fast_is_compile_plus_cache_and_explicit_flags_override_it():
    parse = lambda *flags: acceleration_options(  # noqa: E731
        build_parser().parse_args(["generate", "--prompt", "p", "--out", "x.png", *flags]))
    assert parse("--fast") == AccelerationOptions(compile=True, cache_threshold=DEFAULT_CACHE_THRESHOLD)
    assert parse("--fast", "--cache-threshold", "0.2").cache_threshold == 0.2
    assert parse("--compile") == AccelerationOptions(compile=True)


@pytest.mark.parametrize("flags, message", [
    (["--cache-threshold", "0.3"], "at least 3 layers"),
    (["--cache-threshold", "2"], "must be a number in (0, 1)"),
    (["--offload", "model"], "runs on the CPU already"),
])
def test_speed_flag_errors_exit_2(tmp_path, capsys, flags, message):
    assert generate(tmp_path, "--size", "32", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()

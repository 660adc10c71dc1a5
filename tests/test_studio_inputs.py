"""Uploads, prompt lists and the shipped examples (``studio/inputs.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepgen.contestants import Contestant
from studio.inputs import load_examples, parse_prompt_file
from studio.settings import MAX_BATCH_PROMPTS, StudioInputError


@pytest.mark.parametrize("name, content, message", [
    ("p.csv", "a", "must be a .txt or .jsonl"),
    ("p.txt", "\n# only a comment\n", "no prompts"),
    ("p.jsonl", "{not json}\n", "Line 1 .* not valid JSON"),
    ("p.jsonl", '{"text": "a"}\n', "Line 1: expected"),
    ("p.txt", "a\n" * (MAX_BATCH_PROMPTS + 1), "the limit is"),
])
def test_prompt_file_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(StudioInputError, match=message):
        parse_prompt_file(str(path))


def test_shipped_examples_exist():
    prompts, edits = load_examples()
    assert prompts and edits and all(Path(p).is_file() for images, _ in edits for p in images)
    assert any(len(images) > 1 for images, _ in edits)  # a multi-image example


def test_the_running_models_own_examples_replace_the_shipped_ones(tmp_path):
    source = tmp_path / "source.png"
    source.write_bytes((Path(__file__).resolve().parents[1] / "assets" / "examples" / "red-circle.png").read_bytes())
    own = Contestant(id="x", label="X", kind="deepgen", source="tiny", examples={
        "prompts": ["a large red square at the top"],
        "edits": [{"image": str(source), "instruction": "make the square blue"},
                  {"image": str(tmp_path / "gone.png"), "instruction": "erase the square"}]})
    assert load_examples(contestant=own) == (["a large red square at the top"],
                                             [([str(source)], "make the square blue")])
    plain = Contestant(id="y", label="Y", kind="deepgen", source="tiny")
    assert load_examples(contestant=plain) == load_examples()

"""Uploads, prompt lists and the shipped examples (``studio/inputs.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepgen.contestants import Contestant
from studio.inputs import file_payload_problem, load_examples, parse_prompt_file
from studio.settings import MAX_BATCH_PROMPTS, StudioInputError


@pytest.mark.parametrize("name, content, message", [
    ("p.csv", "a", "must be a .txt or .jsonl"),
    ("p.txt", "\n# only a comment\n", "no prompts"),
    ("p.jsonl", "{not json}\n", "Line 1 .* not valid JSON"),
    ("p.jsonl", '{"text": "a"}\n', r"Line 1: unknown keys \['text'\]"),
    ("p.jsonl", '[1, 2]\n', "Line 1: expected a JSON object"),
    ("p.jsonl", '{"prompt": ["a", "b"]}\n', "Line 1: the prompt must be text"),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": "b", "negative_prompt": 5}\n', "Line 2: negative_prompt must be text"),
    ("p.jsonl", '{"prompt": "a", "seed": 1.5}\n', "Line 1: seed must be a whole number"),
    ("p.jsonl", '{"prompt": "a", "seed": true}\n', "Line 1: seed must be a whole number"),
    ("p.jsonl", "[" * 30_000 + "]" * 30_000 + "\n", "Line 1 of the prompt list is too deeply nested"),
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


def _png(path: Path, size: tuple[int, int] = (64, 64), text: str = "") -> Path:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("comment", text, zip=True)
    Image.new("RGB", size, (200, 30, 30)).save(path, format="PNG", pnginfo=info)
    return path


def test_valid_images_are_accepted_by_content_not_name(tmp_path):
    """A PNG without an extension, and one with a text chunk over PIL's limit (the chunk is ignored)."""
    from studio.inputs import load_references, reference_problems

    files = [_png(tmp_path / "no-extension"), _png(tmp_path / "texty.png", text="x" * 3_000_000)]
    assert reference_problems(files, required=True) is None
    images = load_references(files)
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert images[1].getpixel((5, 5)) == (200, 30, 30)


def test_oversized_images_and_decompression_bombs_get_the_same_message(tmp_path, monkeypatch):
    from PIL import Image

    from studio.inputs import reference_problems

    big = _png(tmp_path / "big.png", (4112, 4096))
    message = reference_problems([big], required=True)
    assert message == "Image 1 is larger than 4096x4096 pixels; downscale it first."
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the same file is now a bomb to PIL
    assert reference_problems([big], required=True) == message


@pytest.mark.parametrize("selected, message", [
    ("tiny", "Contestants must be a list of contestant ids, got str"),
    (["tiny", 3], "Contestants must be a list of contestant ids"),
    (["tiny"], "Select 2 to 4 contestants"),
])
def test_contestant_selections_are_lists_of_ids(selected, message):
    from studio.inputs import contestant_problems

    assert message in contestant_problems(selected, {"tiny": None, "other": None})


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


FILE = {"_type": "gradio.FileData"}


@pytest.mark.parametrize("value, message", [
    (None, None),
    ([], None),
    ([{"path": "UPLOADED", "meta": FILE}], None),
    ([{"path": "https://93.184.215.14/x.png", "meta": FILE}], None),  # public: Gradio fetches it (never here)
    ([{"path": "https://example.org/x.png", "meta": FILE}], None),  # a name: Gradio resolves and checks it
    ("/etc/passwd", "Images must be a list of uploaded files (gradio_client: handle_file(path)), got '/etc/passwd'."),
    ([{"path": "/etc/passwd", "meta": FILE}], "Images: file 1 was not uploaded to this server"),
    ([{"path": "UPLOADED/../../secret", "meta": FILE}], "Images: file 1 was not uploaded to this server"),
    ([{"path": "UPLOADED", "meta": FILE}, {"path": None}], "Images: file 2 is not an uploaded file"),
    ([{"path": "ftp://127.0.0.1/x.png", "meta": FILE}], "file 1 was not uploaded to this server"),
    ([{"path": "http://10.0.0.8/x.png", "meta": FILE}], "is a link to a local or private address (10.0.0.8)"),
    ([{"path": "http://169.254.169.254/latest", "meta": FILE}], "local or private address (169.254.169.254)"),
    ([{"path": "http://[fd00::1]/x.png", "meta": FILE}], "local or private address (fd00::1)"),
    ([{"path": "http://0.0.0.0/x.png", "meta": FILE}], "local or private address (0.0.0.0)"),
    ([{"path": "http://printer.local/x.png", "meta": FILE}], "this machine or its network (printer.local)"),
    ([{"path": "http:///x.png", "meta": FILE}], "is a link without a host"),
])
def test_file_payload_problems(tmp_path, value, message):
    """What an API call may put in a file input: uploads under Gradio's folder and public links, nothing else."""
    (tmp_path / "upload").mkdir()
    (tmp_path / "upload" / "a.png").write_bytes(b"")

    def real(item):
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            return dict(item, path=item["path"].replace("UPLOADED", str(tmp_path / "upload" / "a.png")))
        return item

    value = [real(item) for item in value] if isinstance(value, list) else value
    problem = file_payload_problem("Images", value, tmp_path / "upload", multiple=True)
    assert problem == message if message is None else message in problem


def test_a_single_file_input_takes_one_payload(tmp_path):
    assert file_payload_problem("Prompt list", [], tmp_path, multiple=False) == (
        "Prompt list is not an uploaded file (gradio_client: handle_file(path)), got a list.")
    assert "was not uploaded" in file_payload_problem("Prompt list", {"path": "/etc/hosts"}, tmp_path, multiple=False)

"""What users upload or pick: reference images, prompt lists, contestant selections, and the shipped examples.

Everything here reads files Gradio has already saved; user text never becomes a path.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional
from urllib.parse import urlsplit

from PIL import Image

from deepgen.contestants import Contestant
from deepgen.image_processing import MIN_INPUT_SIDE, load_image
from deepgen.memory import format_bytes

from . import EXAMPLES_DIR
from .settings import (MAX_BATCH_PROMPTS, MAX_CONTESTANTS, MAX_PROMPT_CHARS, MAX_REFERENCE_IMAGES, MAX_SEED,
                       MIN_CONTESTANTS, StudioInputError, is_whole, kind_of)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # also given to Gradio as launch(max_file_size=...)
MAX_PROMPT_FILE_BYTES = 64 * 1024
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
PROMPT_FILE_SUFFIXES = (".txt", ".jsonl")
MAX_INPUT_SIDE = 4096  # deepgen.image_processing.MAX_INPUT_PIXELS is this squared
JSONL_KEYS = ("prompt", "negative_prompt", "seed")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def upload_path(item: Any) -> Optional[str]:
    """A file path from what Gradio hands over for an upload (a path, or a dict/object with one)."""
    if item is None:
        return None
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, dict):
        return item.get("path") or item.get("name")
    return getattr(item, "path", None) or getattr(item, "name", None)


def is_link(path: str) -> bool:
    """Whether a file payload's path is an http(s) link (which Gradio fetches) rather than a file on this server."""
    return path.lower().startswith(("http://", "https://"))


def _link_host_problem(url: str) -> Optional[str]:
    """Why the server must not fetch ``url`` (None: its host is a public name or address)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return "is not a valid link"
    if not host:
        return "is a link without a host"
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return f"is a link to this machine or its network ({host})"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: Gradio resolves it and refuses private addresses (studio.server.StudioBlocks)
    if not address.is_global or address.is_multicast:
        return f"is a link to a local or private address ({host})"
    return None


def file_payload_problem(label: str, value: Any, upload_root: Path, multiple: bool) -> Optional[str]:
    """Why a file input's raw API value cannot be used, checked before Gradio moves anything (None: it can).

    A file arrives as Gradio's file payload, ``{"path": ..., "meta": {"_type": "gradio.FileData"}}``, whose path is
    either a file uploaded to this server (under ``upload_root``) or a public http(s) link; ``multiple`` inputs take
    a list of them. Anything else (a path on the server, a link to a private address, text, numbers) is refused."""
    if value is None or (multiple and isinstance(value, (list, tuple)) and not value):
        return None
    how = "gradio_client: handle_file(path)"
    if multiple and not isinstance(value, (list, tuple)):
        return f"{label} must be a list of uploaded files ({how}), got {kind_of(value)}."
    items = list(value) if multiple else [value]
    for number, item in enumerate(items, 1):
        which = f"{label}: file {number}" if multiple else label
        path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(path, str) or not path:
            return f"{which} is not an uploaded file ({how}), got {kind_of(item)}."
        if is_link(path):
            problem = _link_host_problem(path)
            if problem:
                return f"{which} {problem}; this server fetches only public http(s) links."
            continue
        if "://" in path or not _is_within(Path(path), upload_root):
            return f"{which} was not uploaded to this server; send the file itself ({how})."
    return None


def _is_within(path: Path, root: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except (OSError, ValueError):
        return False


def upload_paths(files: Any) -> list[str]:
    """Normalise a File/Gallery value (None, one item or a list; gallery items are (path, caption)) to paths."""
    if files is None:
        return []
    items = files if isinstance(files, (list, tuple)) else [files]
    paths = []
    for item in items:
        if isinstance(item, (list, tuple)) and item:  # gallery (path, caption)
            item = item[0]
        path = upload_path(item)
        if path:
            paths.append(path)
    return paths


def open_upload(path: str) -> BinaryIO:
    """An uploaded image file to hand to PIL. A PNG's text chunks are dropped first: they are metadata this app
    never reads, and PIL refuses a PNG whose text is large (it guards against text bombs)."""
    with open(path, "rb") as file:
        data = file.read()
    if not data.startswith(PNG_SIGNATURE):
        return io.BytesIO(data)
    kept, offset = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,), kind = struct.unpack(">I", data[offset:offset + 4]), data[offset + 4:offset + 8]
        end = offset + 12 + length  # length, type, data, CRC
        if kind not in PNG_TEXT_CHUNKS:
            kept.append(data[offset:end])
        offset = end
    return io.BytesIO(b"".join(kept))


def _too_large(number: int) -> str:
    return f"Image {number} is larger than {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE} pixels; downscale it first."


def reference_problems(files: Any, required: bool) -> Optional[str]:
    """Why the uploaded reference images are not acceptable (count, size, not an image), or None.

    Reads only image headers; full decoding (with decompression-bomb checks) happens in :func:`load_references`.
    The file's content decides what it is, not its name (a PNG without an extension is a PNG).
    """
    if files is not None and not isinstance(files, (list, tuple, dict, str, Path)):
        return f"Images must be a list of uploaded files, got a {type(files).__name__}."
    paths = upload_paths(files)
    if not paths:
        return "Upload at least one image to edit." if required else None
    if len(paths) > MAX_REFERENCE_IMAGES:
        return f"{len(paths)} images were uploaded; an edit takes at most {MAX_REFERENCE_IMAGES}."
    for number, path in enumerate(paths, start=1):
        try:
            size = os.path.getsize(path)
            if size > MAX_UPLOAD_BYTES:
                return f"Image {number} is {format_bytes(size)}; the limit is {format_bytes(MAX_UPLOAD_BYTES)}."
            with Image.open(open_upload(path)) as image:
                if image.format not in IMAGE_FORMATS:
                    return f"Image {number} is a {image.format} file; upload one of {', '.join(IMAGE_FORMATS)}."
                width, height = image.size
        except Image.DecompressionBombError:  # over PIL's own limit, far over ours
            return _too_large(number)
        except (OSError, SyntaxError, ValueError):
            return f"File {number} is not an image this app can read (use PNG, JPEG or WebP)."
        if width * height > MAX_INPUT_SIDE**2:
            return _too_large(number)
        if min(width, height) < MIN_INPUT_SIDE:
            return f"Image {number} is {width}x{height} pixels; both sides must be at least {MIN_INPUT_SIDE}."
    return None


def load_references(files: Any) -> list[Image.Image]:
    """The uploaded reference images as RGB, after :func:`reference_problems` (raises with its message)."""
    problem = reference_problems(files, required=False)
    if problem:
        raise StudioInputError(problem)
    images = []
    for number, path in enumerate(upload_paths(files), start=1):
        try:
            images.append(load_image(open_upload(path)))
        except ValueError as error:
            raise StudioInputError(f"Image {number} cannot be used: it is unreadable or too large.") from error
    return images


def contestant_problems(selected: Any, registry: dict[str, Contestant],
                        minimum: int = MIN_CONTESTANTS) -> Optional[str]:
    """Why a contestant selection is not acceptable (count, unknown ids, repeats), or None."""
    if selected is not None and not (isinstance(selected, (list, tuple))
                                     and all(isinstance(i, str) for i in selected)):
        return f"Contestants must be a list of contestant ids, got {type(selected).__name__} {selected!r:.60}."
    ids = list(selected or [])
    if not minimum <= len(ids) <= MAX_CONTESTANTS:
        return f"Select {minimum} to {MAX_CONTESTANTS} contestants (got {len(ids)})."
    unknown = [i for i in ids if i not in registry]
    if unknown:
        return f"Unknown contestants {unknown}; choose from {sorted(registry)}."
    if len(set(ids)) != len(ids):
        return "Each contestant may be selected once."
    return None


@dataclass
class PromptItem:
    """One line of a prompt list; its own negative prompt and seed override the shared ones."""

    prompt: str
    negative_prompt: Optional[str] = None
    seed: Optional[int] = None


def _prompt_lines(path: Any) -> tuple[str, list[str]]:
    """(suffix, lines) of an uploaded prompt list, after checking its type, size and encoding."""
    path = upload_path(path)
    if not path:
        raise StudioInputError("Upload a prompt list (.txt with one prompt a line, or .jsonl).")
    suffix = Path(path).suffix.lower()
    if suffix not in PROMPT_FILE_SUFFIXES:
        raise StudioInputError(f"The prompt list must be a .txt or .jsonl file, got a {suffix or 'suffix-less'} file.")
    if os.path.getsize(path) > MAX_PROMPT_FILE_BYTES:
        raise StudioInputError(f"The prompt list is larger than {MAX_PROMPT_FILE_BYTES // 1024} KiB.")
    try:
        return suffix, Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise StudioInputError("The prompt list is not UTF-8 text.") from error


def _jsonl_item(number: int, line: str) -> PromptItem:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise StudioInputError(f"Line {number} of the prompt list is not valid JSON ({error.msg}).") from error
    except RecursionError as error:
        raise StudioInputError(f"Line {number} of the prompt list is too deeply nested.") from error
    if isinstance(value, str):
        value = {"prompt": value}
    expected = '{"prompt": "...", "negative_prompt": "...", "seed": 0}'
    if not isinstance(value, dict):
        raise StudioInputError(f"Line {number}: expected a JSON object like {expected}, got a {type(value).__name__}.")
    unknown = sorted(set(value) - set(JSONL_KEYS))
    if unknown:
        raise StudioInputError(f"Line {number}: unknown keys {unknown}; a line may have {list(JSONL_KEYS)}.")
    if not isinstance(value.get("prompt"), str):
        raise StudioInputError(f"Line {number}: the prompt must be text, as in {expected}.")
    negative = value.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise StudioInputError(f"Line {number}: negative_prompt must be text, got {negative!r:.40}.")
    seed = value.get("seed")
    if seed is not None and (not is_whole(seed) or not 0 <= int(seed) <= MAX_SEED):
        raise StudioInputError(f"Line {number}: seed must be a whole number from 0 to {MAX_SEED}, got {seed!r:.40}.")
    return PromptItem(value["prompt"], negative, None if seed is None else int(seed))


def parse_prompt_file(path: Any) -> list[PromptItem]:
    """Read an uploaded prompt list: ``.txt`` (one prompt a line; blank and ``#`` lines skipped) or ``.jsonl``
    (one JSON object a line with ``prompt`` and optional ``negative_prompt`` and ``seed``, or a JSON string)."""
    suffix, lines = _prompt_lines(path)
    items: list[PromptItem] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or (suffix == ".txt" and line.startswith("#")):
            continue
        items.append(PromptItem(line) if suffix == ".txt" else _jsonl_item(number, line))
    if not items:
        raise StudioInputError("The prompt list has no prompts.")
    if len(items) > MAX_BATCH_PROMPTS:
        raise StudioInputError(f"The prompt list has {len(items)} prompts; the limit is {MAX_BATCH_PROMPTS}.")
    for number, item in enumerate(items, start=1):
        if not item.prompt.strip() or len(item.prompt) > MAX_PROMPT_CHARS:
            raise StudioInputError(f"Prompt {number} is empty or longer than {MAX_PROMPT_CHARS} characters.")
    return items


def load_examples(folder: Path = EXAMPLES_DIR, contestant: Optional[Contestant] = None
                  ) -> tuple[list[str], list[tuple[list[str], str]]]:
    """Generate prompts and Edit examples ((image paths, instruction) pairs) for the page.

    The running ``contestant``'s own ``examples`` (``contestants.yaml``) when it has them, else the shipped ones
    from ``folder``'s ``examples.json`` written by ``assets/make_examples.py``; empty lists when that is absent.
    """
    if contestant is not None and contestant.examples is not None:
        examples = contestant.examples
        return list(examples.prompts), [(list(edit.images), edit.instruction) for edit in examples.edits
                                        if all(Path(image).is_file() for image in edit.images)]
    index = Path(folder) / "examples.json"
    if not index.is_file():
        return [], []
    data = json.loads(index.read_text(encoding="utf-8"))
    folder = Path(folder)
    edits = [([str(folder / name) for name in item["images"]], item["instruction"]) for item in data.get("edit", [])
             if all((folder / name).is_file() for name in item["images"])]
    return list(data.get("generate", [])), edits

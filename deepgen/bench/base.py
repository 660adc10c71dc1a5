"""What every benchmark shares: the item, the defaults, the reader/writer interface, and record locations.

A benchmark is one :class:`Benchmark` subclass that (1) reads its data into :class:`Item` s, each naming the file
and line it came from, and (2) writes an item's images in the exact layout its official scorer reads
(``../shared/BENCHMARKS.md``). Sharding, seeding, resuming and the run record live in :mod:`deepgen.bench.runner`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from PIL import Image

from ..files import atomic_write
from ..pipeline import EDIT_NEGATIVE_PROMPT  # noqa: F401  (the edit benchmarks' default; re-exported)

PARTIAL_SUFFIX = ".deepgen-partial"  # temp files; a rerun deletes leftovers of a killed job


class RecordError(ValueError):
    """A malformed benchmark record; the message starts with ``file:line``."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where


@dataclass
class Item:
    """One benchmark prompt (or edit) and the files it produces.

    Attributes:
        id: unique within the benchmark; with the seed it fixes the item's noise, so it never depends on order.
        prompt: the text given to the model (already ``.strip()``-ed, as the authors do).
        outputs: paths relative to the run folder that the item writes; the item is finished when all exist.
        where: ``file:line`` (or ``dataset row``) the record came from, for errors.
        record: the original record (written where a layout keeps metadata, e.g. GenEval).
        source: for edits, a function that loads the source image (PIL, any mode).
    """

    id: str
    prompt: str
    outputs: tuple[str, ...]
    where: str
    record: dict[str, Any] = field(default_factory=dict)
    source: Optional[Callable[[], Image.Image]] = None


@dataclass(frozen=True)
class Defaults:
    """A benchmark's own generation settings (BENCHMARKS.md, EVAL.md sizes); every one can be overridden."""

    size: int = 512
    guidance: float = 4.0
    negative_prompt: str = ""
    images_per_prompt: int = 1
    batch_size: int = 16
    steps: int = 50


class Benchmark:
    """Reads one benchmark's data and writes its official layout. Subclasses set the class attributes."""

    name: str = ""
    title: str = ""
    edit: bool = False
    defaults: Defaults = Defaults()

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        """Yield the items of ``data`` in the benchmark's own order, and a :class:`RecordError` (file and line) in
        place of each malformed record; the runner stops at it or skips it. Unreadable files raise."""
        raise NotImplementedError

    def outputs(self, item_id: str, record: dict[str, Any], images_per_prompt: int) -> tuple[str, ...]:
        """The files of one item, relative to the run folder. Default: ``<id>.png``, or ``<id>_<k>.png`` for
        several images per prompt."""
        if images_per_prompt == 1:
            return (f"{item_id}.png",)
        return tuple(f"{item_id}_{k}.png" for k in range(images_per_prompt))

    def write(self, item: Item, images: Sequence[Image.Image], out: Path, pnginfo: Any) -> None:
        """Write ``images`` (sample k at index k) of ``item`` under ``out``. Default: one PNG per output path."""
        for relative, image in zip(item.outputs, images, strict=True):
            save_png(image, out / relative, pnginfo)

    def source_file(self, item: Item) -> Optional[str]:
        """The item's source image for browsing: a path relative to the run folder when the layout keeps a copy,
        else the absolute path it was read from (None for text-to-image)."""
        return str(item.source.path) if isinstance(item.source, SourceFile) else None

    def finish(self, out: Path, items: Sequence[Item]) -> Optional[str]:
        """Called on the main process once a run's items are written; offline scoring goes here."""
        return None

    def record_path(self, out: Path) -> Path:
        """Where the run record goes: ``out/record.json`` unless the scorer reads every file of ``out``."""
        return out / "record.json"

    def scorer_command(self, out: Path, data: Path) -> str:
        """The official scorer's command for this run folder."""
        raise NotImplementedError

    def check_images_per_prompt(self, images_per_prompt: int) -> None:
        """Raise ``ValueError`` when the layout cannot hold ``images_per_prompt`` images (edits: one per item)."""
        if self.edit and images_per_prompt != 1:
            raise ValueError(f"{self.title} scores one edit per source; --images-per-prompt must be 1, "
                             f"got {images_per_prompt}.")


# --- reading helpers ------------------------------------------------------------------------------------------


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def read_json_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as error:
        raise RecordError(str(path), "file not found") from error
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(str(path), f"cannot read it ({error})") from error


def json_entries(path: Path) -> Iterator[tuple[Any, Any, int]]:
    """The top-level entries of a JSON list or object with the line each starts on: ``(key, value, line)``
    (key is the list index for a list). Syntax errors raise :class:`RecordError` at their line."""
    text = read_json_text(path)
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    if pos >= len(text) or text[pos] not in "[{":
        raise RecordError(f"{path}:{line_of(text, pos)}", "expected a JSON list or object at the top level")
    is_list, closing = text[pos] == "[", "]" if text[pos] == "[" else "}"
    pos, index = _skip_space(text, pos + 1), 0
    try:
        while pos < len(text) and text[pos] != closing:
            line = line_of(text, pos)
            if is_list:
                key = index
            else:
                key, pos = decoder.raw_decode(text, pos)
                pos = _skip_space(text, pos)
                if not isinstance(key, str) or text[pos:pos + 1] != ":":
                    raise RecordError(f"{path}:{line_of(text, pos)}", "expected a quoted key followed by ':'")
                pos = _skip_space(text, pos + 1)
            value, pos = decoder.raw_decode(text, pos)
            yield key, value, line
            index += 1
            pos = _skip_space(text, pos)
            if pos >= len(text):
                break
            if text[pos] == ",":
                pos = _skip_space(text, pos + 1)
            elif text[pos] != closing:
                raise RecordError(f"{path}:{line_of(text, pos)}", f"expected ',' or '{closing}'")
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}:{error.lineno}", f"invalid JSON ({error.msg}); the file cannot be read past it, "
                          "so the run stops") from error
    if pos >= len(text):
        raise RecordError(f"{path}:{line_of(text, pos)}", f"the JSON ends before its closing '{closing}'")


def jsonl_entries(path: Path) -> Iterator[tuple[Any, int]]:
    """``(record, line)`` of each non-blank line of a JSON-lines file; a line that is not JSON comes as a
    :class:`RecordError` in place of the record (the other lines can still be read)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as error:
        raise RecordError(str(path), "file not found") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            record = RecordError(f"{path}:{number}", f"invalid JSON ({error.msg})")
        yield record, number


def attempt(build: Callable[[], "Item"]) -> Union["Item", RecordError]:
    """``build()``, or the :class:`RecordError` it raised: readers yield bad records instead of stopping, so the
    runner can skip them (``--skip-bad-records``) or stop at the first one."""
    try:
        return build()
    except RecordError as error:
        return error


def as_record(record: Any, where: str) -> dict:
    """``record`` if it is a JSON object; re-raises a line's parse error; else a :class:`RecordError`."""
    if isinstance(record, RecordError):
        raise record
    if not isinstance(record, dict):
        raise RecordError(where, f"expected a JSON object, got {type(record).__name__}")
    return record


def require_text(record: Any, key: str, where: str) -> str:
    """``record[key]`` as a non-empty stripped string, or a :class:`RecordError` saying what was found."""
    value = as_record(record, where).get(key)
    if not isinstance(value, str) or not value.strip():
        found = "missing" if key not in record else f"{value!r}"
        raise RecordError(where, f"'{key}' must be a non-empty string (found {found})")
    return value.strip()


def require_id(record: dict, key: str, where: str) -> str:
    """An id field (string or integer) that is safe as a file name."""
    value = as_record(record, where).get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise RecordError(where, f"'{key}' must be a string or integer id (found {value!r})")
    return safe_name(str(value).strip(), key, where)


def safe_name(value: str, what: str, where: str) -> str:
    """``value`` unchanged if it can be one path component; else a :class:`RecordError`."""
    if value in (".", "..") or any(ch in value for ch in "/\\\0") or value.startswith("."):
        raise RecordError(where, f"{what} {value!r} cannot be used as a file or folder name")
    return value


@dataclass(frozen=True)
class SourceFile:
    """A source image on disk, loaded when the item is generated; ``where`` names the record for errors."""

    path: Path
    where: str

    def __call__(self) -> Image.Image:
        try:
            with Image.open(self.path) as image:
                image.load()
                return image
        except (OSError, ValueError) as error:
            raise RecordError(self.where, f"cannot read the source image {self.path}: {error}") from error


def image_loader(root: Path, relative: Any, key: str, where: str) -> SourceFile:
    """The source image ``root/relative`` (paths are relative to ``--data``, not the working directory); checks
    now that the file exists, so a bad record is reported before anything is generated."""
    if not isinstance(relative, str) or not relative.strip():
        raise RecordError(where, f"'{key}' must be an image path relative to {root} (found {relative!r})")
    path = (root / relative.strip()).resolve()
    if not path.is_file():
        raise RecordError(where, f"source image {path} ('{key}': {relative!r}) not found; paths are relative to "
                                 f"{root}")
    return SourceFile(path, where)


# --- writing helpers ------------------------------------------------------------------------------------------


def save_png(image: Image.Image, path: Path, pnginfo: Any = None) -> None:
    atomic_write(path, lambda handle: image.save(handle, format="PNG", pnginfo=pnginfo),
                 temp_suffix=PARTIAL_SUFFIX)


def save_text(text: str, path: Path) -> None:
    atomic_write(path, lambda handle: handle.write(text), binary=False, temp_suffix=PARTIAL_SUFFIX)


def remove_partial_files(out: Path) -> int:
    """Delete temp files a killed run left under ``out``; returns how many."""
    removed = 0
    for path in out.rglob(f"*{PARTIAL_SUFFIX}") if out.is_dir() else ():
        path.unlink(missing_ok=True)
        removed += 1
    return removed

"""DeepGen Studio: everything ``app.py`` does besides layout.

``app.py`` holds the Gradio layout and one-line callbacks; this module holds the logic behind them, so it can be
tested without a browser:

* the **contestants registry** (``contestants.yaml``): DeepGen checkpoints, diffusers baselines and the built-in
  offline models, with what each supports and its recommended settings;
* the **model manager**: loads contestants on demand (the running model at start-up), keeps a few loaded, and
  reports the ones that cannot load (e.g. hub baselines offline) as unavailable instead of failing;
* the **tasks**: generate, edit, compare, seed sweep and prompt-list batch, all built on one "matrix" of runs
  (contestants x prompts x seeds). Each returns lossless PNGs with their settings embedded, a JSON record (model
  ids and revisions, settings, seeds, versions, device, timings) and a zip of both;
* **validation** done before any model work, with messages meant for people;
* **ZeroGPU glue**: :func:`gpu_task` is ``spaces.GPU(duration=...)`` on a ZeroGPU Space and a no-op elsewhere,
  with durations from :func:`estimate_gpu_seconds`; :func:`user_errors` turns failures into ``gr.Error`` so no
  traceback reaches the page.
"""

from __future__ import annotations

# ZeroGPU patches CUDA when `spaces` is imported, which must happen before torch is imported.
try:
    import spaces
except ImportError:  # not on a Space: @gpu_task is a no-op
    spaces = None

import functools
import gc
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import gradio as gr
import torch
from PIL import Image, ImageDraw, ImageOps

from .builtin import OFFICIAL_DIT, OFFICIAL_VLM, RANDOM_PRESETS, available_builtin_models, default_model_name
from .contestants import (MAX_GUIDANCE, MAX_REFERENCE_IMAGES, MAX_SIDE, MAX_STEPS, Contestant, LoadedModel,
                          explain_load_error, hub_cache_path, hub_offline, is_builtin, load_contestant, load_registry)
from .cli import save_png
from .image_processing import check_image_size, load_image
from .memory import PeakMemory, format_bytes
from .pipeline import DEFAULT_SIZE

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REGISTRY = REPO_ROOT / "contestants.yaml"
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"

# --- limits (the UI's sliders use the same numbers, so API callers and the page see one set of rules) ---------
MAX_PROMPT_CHARS = 2000
MAX_IMAGES = 4  # images per Generate/Edit request
MIN_CONTESTANTS, MAX_CONTESTANTS = 2, 4
MAX_SWEEP_SEEDS = 8
MAX_BATCH_PROMPTS = 16
MAX_MATRIX_RUNS = 32  # contestants x prompts x seeds in one request
MIN_SIDE = 64
SIZE_STEP = 32
MAX_SEED = 2**32 - 1
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # also given to Gradio as launch(max_file_size=...)
MAX_PROMPT_FILE_BYTES = 64 * 1024
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
PROMPT_FILE_SUFFIXES = (".txt", ".jsonl")
OUTPUT_TTL_S = 3600  # task folders older than this are deleted (Gradio's own cache has delete_cache)

# Aspect-ratio presets: (width, height) ratios. Sizes are derived with the long side kept.
ASPECT_PRESETS = {
    "1:1 square": (1, 1),
    "4:3 landscape": (4, 3),
    "3:4 portrait": (3, 4),
    "3:2 landscape": (3, 2),
    "2:3 portrait": (2, 3),
    "16:9 wide": (16, 9),
    "9:16 tall": (9, 16),
}

# ZeroGPU duration model: seconds = overhead + sum over contestants of load + steps x images x per-step cost,
# scaled by megapixels and reference tokens, times a safety margin, clamped to what a Space may ask for.
GPU_OVERHEAD_S = 5.0
GPU_SAFETY = 1.25
MIN_GPU_SECONDS, MAX_GPU_SECONDS = 10, 300


ProgressFn = Callable[[int, int, str], None]  # (steps done, steps in total, description)


class StudioInputError(ValueError):
    """A request the Studio refuses before doing any model work; the message is shown to the user as is."""


class ModelManager:
    """Loads contestants on demand and keeps at most ``max_loaded`` of them (the running model is never evicted).

    A contestant that fails to load is remembered as unavailable with a one-line reason; the app keeps serving.
    Model calls are serialised by a lock (the pipelines' schedulers are stateful).
    """

    def __init__(self, contestants: Sequence[Contestant], active_id: str, device: torch.device, max_loaded: int = 2):
        self.contestants = {c.id: c for c in contestants}
        if active_id not in self.contestants:
            raise ValueError(f"The running model {active_id!r} is not among the contestants.")
        self.active_id = active_id
        self.device = device
        self.max_loaded = max(1, max_loaded)
        self.lock = threading.RLock()
        self._loaded: dict[str, LoadedModel] = {}  # insertion order = least recently used first
        self._failed: dict[str, str] = {}

    @property
    def active(self) -> Contestant:
        return self.contestants[self.active_id]

    def is_loaded(self, contestant_id: str) -> bool:
        return contestant_id in self._loaded

    def availability(self, contestant_id: str) -> tuple[bool, str]:
        """(available, reason) without loading anything or touching the network."""
        c = self.contestants[contestant_id]
        if contestant_id in self._loaded:
            return True, "loaded"
        if contestant_id in self._failed:
            return False, self._failed[contestant_id]
        if is_builtin(c.source):
            if c.source in available_builtin_models():
                return True, "built in"
            return False, "not shipped in this install (its checkpoint is not in deepgen/assets/)."
        if Path(c.source).exists():
            return True, "local files"
        cache_file = c.filename or "model_index.json"
        if hub_cache_path(c.source, cache_file, c.revision) is not None:
            return True, "in the local hub cache"
        if hub_offline():
            return False, "not in the local cache, and the hub is offline (HF_HUB_OFFLINE=1)."
        return True, "downloads from the Hugging Face Hub on first use"

    def get(self, contestant_id: str) -> LoadedModel:
        """The loaded model; loads it (evicting the least recently used) if needed.

        Raises:
            StudioInputError: it cannot be loaded; the message says why.
        """
        with self.lock:
            if contestant_id in self._loaded:
                self._loaded[contestant_id] = self._loaded.pop(contestant_id)  # most recently used
                return self._loaded[contestant_id]
            available, reason = self.availability(contestant_id)
            if not available:
                raise StudioInputError(f"{self.contestants[contestant_id].label} is unavailable: {reason}")
            while len(self._loaded) >= self.max_loaded:
                victim = next((i for i in self._loaded if i != self.active_id), None)
                if victim is None:
                    break
                logger.info("unloading %s to make room", victim)
                del self._loaded[victim]
                free_memory()
            contestant = self.contestants[contestant_id]
            logger.info("loading %s (%s) on %s", contestant.id, contestant.source, self.device)
            try:
                model = load_contestant(contestant, self.device)
            except Exception as error:  # any failure: mark unavailable, keep serving
                logger.exception("could not load contestant %s", contestant_id)
                free_memory()
                self._failed[contestant_id] = explain_load_error(error)
                raise StudioInputError(f"{contestant.label} is unavailable: {self._failed[contestant_id]}") from error
            self._loaded[contestant_id] = model
            return model


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- validation -----------------------------------------------------------------------------------------------


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)


def aspect_size(preset: str, long_side: int) -> tuple[int, int]:
    """(width, height) for an aspect preset with the given long side, both multiples of 32 within limits."""
    if preset not in ASPECT_PRESETS:
        raise StudioInputError(f"Unknown aspect ratio {preset!r}; choose one of {list(ASPECT_PRESETS)}.")
    ratio_w, ratio_h = ASPECT_PRESETS[preset]
    long_side = min(MAX_SIDE, max(MIN_SIDE, int(long_side)))
    scale = long_side / max(ratio_w, ratio_h)
    snap = lambda v: max(MIN_SIDE, int(round(v * scale / SIZE_STEP)) * SIZE_STEP)  # noqa: E731
    return snap(ratio_w), snap(ratio_h)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, float) and value.is_integer())


def settings_problems(prompt: Any, negative_prompt: Any, width: Any, height: Any, steps: Any, guidance: Any,
                      seed: Any, num_images: Any = 1, max_side: int = MAX_SIDE, prompt_required: bool = True,
                      size_required: bool = True) -> dict[str, str]:
    """Problems with a request's settings, keyed by argument name (empty when all is well)."""
    problems: dict[str, str] = {}
    if prompt_required:
        if not isinstance(prompt, str) or not prompt.strip():
            problems["prompt"] = "The prompt is empty: describe the image (or the edit) you want."
        elif len(prompt) > MAX_PROMPT_CHARS:
            problems["prompt"] = f"The prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}."
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        problems["negative_prompt"] = "The negative prompt must be text."
    elif negative_prompt and len(negative_prompt) > MAX_PROMPT_CHARS:
        problems["negative_prompt"] = f"The negative prompt is longer than {MAX_PROMPT_CHARS} characters."
    for name, value in (("width", width), ("height", height)):
        if value is None and not size_required:
            continue
        if not _is_int(value) or not MIN_SIDE <= int(value) <= max_side or int(value) % 16:
            problems[name] = (f"{name.capitalize()} must be a multiple of 16 between {MIN_SIDE} and {max_side} "
                              f"pixels, got {value!r}.")
    if not _is_int(steps) or not 1 <= int(steps) <= MAX_STEPS:
        problems["steps"] = f"Steps must be a whole number from 1 to {MAX_STEPS}, got {steps!r}."
    if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not math.isfinite(guidance) \
            or not 0 <= guidance <= MAX_GUIDANCE:
        problems["guidance"] = f"Guidance must be a number from 0 to {MAX_GUIDANCE:g}, got {guidance!r}."
    if seed is not None and (not _is_int(seed) or not 0 <= int(seed) <= MAX_SEED):
        problems["seed"] = f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}."
    if not _is_int(num_images) or not 1 <= int(num_images) <= MAX_IMAGES:
        problems["num_images"] = f"Ask for 1 to {MAX_IMAGES} images, got {num_images!r}."
    return problems


def _upload_path(item: Any) -> Optional[str]:
    """A file path from what Gradio hands over for an upload (a path, or a dict/object with one)."""
    if item is None:
        return None
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, dict):
        return item.get("path") or item.get("name")
    return getattr(item, "path", None) or getattr(item, "name", None)


def upload_paths(files: Any) -> list[str]:
    """Normalise a File/Gallery value (None, one item or a list; gallery items are (path, caption)) to paths."""
    if files is None:
        return []
    items = files if isinstance(files, (list, tuple)) else [files]
    paths = []
    for item in items:
        if isinstance(item, (list, tuple)) and item:  # gallery (path, caption)
            item = item[0]
        path = _upload_path(item)
        if path:
            paths.append(path)
    return paths


def reference_problems(files: Any, required: bool) -> Optional[str]:
    """Why the uploaded reference images are not acceptable (count, size, not an image), or None.

    Reads only image headers; full decoding (with decompression-bomb checks) happens in :func:`load_references`.
    """
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
            with Image.open(path) as image:
                if image.format not in IMAGE_FORMATS:
                    return f"Image {number} is a {image.format} file; upload one of {', '.join(IMAGE_FORMATS)}."
                check_image_size(image.size)
        except ValueError as error:
            return f"Image {number}: {error}"
        except (OSError, SyntaxError):
            return f"File {number} is not an image this app can read (use PNG, JPEG or WebP)."
    return None


def load_references(files: Any) -> list[Image.Image]:
    problem = reference_problems(files, required=False)
    if problem:
        raise StudioInputError(problem)
    images = []
    for number, path in enumerate(upload_paths(files), start=1):
        try:
            images.append(load_image(path))
        except ValueError as error:
            raise StudioInputError(f"Image {number} cannot be used: it is unreadable or too large.") from error
    return images


def contestant_problems(selected: Any, registry: dict[str, Contestant],
                        minimum: int = MIN_CONTESTANTS) -> Optional[str]:
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
    prompt: str
    negative_prompt: Optional[str] = None
    seed: Optional[int] = None


def parse_prompt_file(path: Any) -> list[PromptItem]:
    """Read an uploaded prompt list: ``.txt`` (one prompt a line; blank and ``#`` lines skipped) or ``.jsonl``
    (one JSON object a line with ``prompt`` and optional ``negative_prompt`` and ``seed``, or a JSON string)."""
    path = _upload_path(path)
    if not path:
        raise StudioInputError("Upload a prompt list (.txt with one prompt a line, or .jsonl).")
    suffix = Path(path).suffix.lower()
    if suffix not in PROMPT_FILE_SUFFIXES:
        raise StudioInputError(f"The prompt list must be a .txt or .jsonl file, got a {suffix or 'suffix-less'} file.")
    if os.path.getsize(path) > MAX_PROMPT_FILE_BYTES:
        raise StudioInputError(f"The prompt list is larger than {MAX_PROMPT_FILE_BYTES // 1024} KiB.")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise StudioInputError("The prompt list is not UTF-8 text.") from error
    items: list[PromptItem] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or (suffix == ".txt" and line.startswith("#")):
            continue
        if suffix == ".txt":
            items.append(PromptItem(line))
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise StudioInputError(f"Line {number} of the prompt list is not valid JSON ({error.msg}).") from error
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, dict) or not isinstance(value.get("prompt"), str):
            raise StudioInputError(f'Line {number}: expected {{"prompt": "...", "negative_prompt": "...", "seed": 0}}.')
        seed = value.get("seed")
        if seed is not None and (not _is_int(seed) or not 0 <= int(seed) <= MAX_SEED):
            raise StudioInputError(f"Line {number}: seed must be a whole number from 0 to {MAX_SEED}.")
        negative = value.get("negative_prompt")
        items.append(PromptItem(value["prompt"], negative if isinstance(negative, str) else None,
                                None if seed is None else int(seed)))
    if not items:
        raise StudioInputError("The prompt list has no prompts.")
    if len(items) > MAX_BATCH_PROMPTS:
        raise StudioInputError(f"The prompt list has {len(items)} prompts; the limit is {MAX_BATCH_PROMPTS}.")
    for number, item in enumerate(items, start=1):
        if not item.prompt.strip() or len(item.prompt) > MAX_PROMPT_CHARS:
            raise StudioInputError(f"Prompt {number} is empty or longer than {MAX_PROMPT_CHARS} characters.")
    return items


def raise_for_problems(problems: Union[dict[str, str], Optional[str]]) -> None:
    if isinstance(problems, dict):
        problems = " ".join(problems.values()) or None
    if problems:
        raise StudioInputError(problems)


# --- records, files and grids ---------------------------------------------------------------------------------


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_record(device: torch.device) -> dict:
    """Versions and device, for reproducibility records."""
    record = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": {name: _version(name) for name in ("deepgen-studio", "torch", "diffusers", "transformers",
                                                         "gradio", "huggingface_hub", "peft")},
        "device": str(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    else:
        record["cpu"] = platform.processor() or platform.machine()
        record["torch_threads"] = torch.get_num_threads()
    return record


@dataclass
class Run:
    """One contestant on one prompt: its images (one per seed), time and peak memory, or the reason it failed."""

    contestant_id: str
    label: str
    prompt: str
    negative_prompt: str
    seeds: list[int]
    steps: int
    guidance: float
    width: Optional[int]  # requested; None = follow the source
    height: Optional[int]
    references_used: int = 0
    files: list[Path] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    elapsed_s: float = 0.0
    peak_memory_bytes: Optional[int] = None
    peak_memory_kind: Optional[str] = None
    error: Optional[str] = None

    def caption(self) -> str:
        if self.error:
            return f"{self.label}: {self.error}"
        return f"{self.label} · {self.elapsed_s:.1f} s · {format_bytes(self.peak_memory_bytes)} peak"

    def to_record(self, root: Path) -> dict:
        record = asdict(self)
        record["files"] = [str(p.relative_to(root)) for p in self.files]
        record["sizes"] = [list(s) for s in self.sizes]
        record["elapsed_s"] = round(self.elapsed_s, 3)
        return record


@dataclass
class TaskResult:
    """What a Studio task returns: the runs, where their files are, and the export."""

    task: str
    runs: list[Run]
    folder: Path
    record: dict
    zip_path: Path
    references: list[Path] = field(default_factory=list)
    grid_path: Optional[Path] = None

    @property
    def files(self) -> list[Path]:
        return [path for run in self.runs for path in run.files]

    def gallery(self) -> list[tuple[str, str]]:
        """(path, caption) pairs for a ``gr.Gallery``."""
        items = []
        for run in self.runs:
            for path, seed in zip(run.files, run.seeds, strict=False):
                items.append((str(path), f"{run.caption()} · seed {seed}"))
        return items

    def summary(self) -> str:
        """A Markdown table: one row per run."""
        rows = ["| model | prompt | seeds | size | time | peak memory | status |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for run in self.runs:
            size = ", ".join(f"{w}x{h}" for w, h in dict.fromkeys(run.sizes)) or "-"
            prompt = run.prompt if len(run.prompt) <= 60 else run.prompt[:57] + "..."
            prompt = prompt.replace("|", "\\|").replace("\n", " ")
            rows.append(f"| {run.label} | {prompt} | {', '.join(map(str, run.seeds))} | {size} | "
                        f"{run.elapsed_s:.2f} s | {format_bytes(run.peak_memory_bytes)} | {run.error or 'ok'} |")
        return "\n".join(rows)


def make_grid(cells: list[list[Optional[Path]]], row_labels: list[str], column_labels: list[str],
              cell_size: int = 256) -> Image.Image:
    """Compose a labelled grid: ``cells[row][column]`` are image paths (None = a grey "unavailable" tile)."""
    label_h, label_w = 24, 160 if any(row_labels) else 0
    columns = max(len(row) for row in cells)
    grid = Image.new("RGB", (label_w + columns * cell_size, label_h + len(cells) * cell_size), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(column_labels):
        draw.text((label_w + c * cell_size + 4, 6), text[:36], fill="black")
    for r, row in enumerate(cells):
        if label_w:
            draw.text((4, label_h + r * cell_size + 4), row_labels[r][:24], fill="black")
        for c, path in enumerate(row):
            x, y = label_w + c * cell_size, label_h + r * cell_size
            if path is None:
                draw.rectangle((x + 2, y + 2, x + cell_size - 3, y + cell_size - 3), fill=(220, 220, 220))
                draw.text((x + 8, y + cell_size // 2), "unavailable", fill="black")
                continue
            with Image.open(path) as image:
                small = max(image.size) < cell_size  # enlarge small images with crisp pixels
                tile = ImageOps.contain(image.convert("RGB"), (cell_size, cell_size),
                                        Image.NEAREST if small else Image.LANCZOS)
            grid.paste(tile, (x + (cell_size - tile.width) // 2, y + (cell_size - tile.height) // 2))
    return grid


# --- the Studio -----------------------------------------------------------------------------------------------


class StepCounter:
    """Counts denoising steps across all runs of a task and reports them to a :data:`ProgressFn`."""

    def __init__(self, total: int, progress: Optional[ProgressFn]):
        self.total, self.done, self.progress = total, 0, progress

    def advance_to(self, done: int, description: str) -> None:
        self.done = done
        if self.progress is not None:
            self.progress(done, self.total, description)


@dataclass
class Job:
    """One cell group of a task matrix: a contestant, a prompt and its seeds."""

    contestant_id: str
    prompt: str
    negative_prompt: str
    seeds: list[int]
    steps: int
    guidance: float


class Studio:
    """The app's state and tasks: a :class:`ModelManager`, an output folder and the five tasks.

    Every task validates its inputs first (raising :class:`StudioInputError`), then runs, writing lossless PNGs
    with the settings embedded, a ``record.json`` and a zip of both into a fresh folder named by a random id
    (user text never becomes a path).
    """

    def __init__(self, manager: ModelManager, output_root: Optional[Path] = None, output_ttl_s: float = OUTPUT_TTL_S):
        self.manager = manager
        # The running model is never evicted; its size limit is read once so validators never wait on the lock.
        active = manager.get(manager.active_id)
        self.max_side, self.default_side = active.max_side, active.default_side
        # One private folder per process (deleted by close()); Gradio copies what it serves into its own cache.
        self.output_root = Path(output_root) if output_root else Path(tempfile.mkdtemp(prefix="deepgen-studio-"))
        self.output_ttl_s = output_ttl_s

    @classmethod
    def create(cls, model: Optional[str] = None, registry: Optional[Union[str, Path]] = None,
               vlm: str = OFFICIAL_VLM, dit: str = OFFICIAL_DIT, device: Optional[str] = None,
               max_loaded: Optional[int] = None, output_root: Optional[Path] = None) -> "Studio":
        """Read the registry, choose the running model and load it (and any ``preload`` contestants).

        Args:
            model: a contestant id, a built-in name, a folder, a native checkpoint or a hub id; default
                ``DEEPGEN_MODEL`` from the environment, else the best built-in model.
            registry: the contestants file (default ``contestants.yaml`` beside ``app.py``).
            vlm, dit: base models when ``model`` is a native checkpoint.
            device: ``cuda`` or ``cpu`` (default: cuda when available).
            max_loaded: how many contestants stay loaded (default ``DEEPGEN_STUDIO_MAX_LOADED`` or 2).
        """
        contestants = load_registry(registry or DEFAULT_REGISTRY)
        model = model or os.environ.get("DEEPGEN_MODEL") or default_model_name()
        match = next((c for c in contestants if model in (c.id, c.source) and not c.filename), None)
        if match is None:
            label = Path(model).name if Path(model).exists() else model
            match = Contestant(id="running", label=f"{label} (running)", kind="deepgen", source=model, vlm=vlm,
                               dit=dit)
            contestants.insert(0, match)
        device_ = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        max_loaded = max_loaded or int(os.environ.get("DEEPGEN_STUDIO_MAX_LOADED", "2"))
        manager = ModelManager(contestants, match.id, device_, max_loaded=max_loaded)
        try:
            manager.get(match.id)  # loaded at start-up; a failure here is fatal, with the reason
        except StudioInputError as error:
            raise ValueError(f"Cannot start with model {model!r}: {error}") from error
        for contestant in contestants:
            if contestant.preload and contestant.id != match.id:
                try:
                    manager.get(contestant.id)
                except StudioInputError as error:
                    logger.warning("preload skipped: %s", error)
        return cls(manager, output_root=output_root)

    # --- what the page shows --------------------------------------------------------------------------------

    @property
    def active(self) -> Contestant:
        return self.manager.active

    def model_banner(self) -> str:
        """One Markdown line saying plainly which model runs, on what."""
        c, model = self.active, self.manager.get(self.manager.active_id)
        dtype = str(c.torch_dtype(self.manager.device)).replace("torch.", "")
        text = (f"**Running model:** {c.label} — `{c.source}` (revision `{model.revision}`) on "
                f"**{self.manager.device.type}**, {dtype}.")
        if c.source in RANDOM_PRESETS:
            text += (" ⚠️ This is the random-weight test preset: its images are noise. Start the app with "
                     "`--model` or `DEEPGEN_MODEL` to serve a trained DeepGen model.")
        return text

    def contestant_choices(self) -> list[tuple[str, str]]:
        """(label, id) pairs for the Compare checkboxes; unavailable ones are marked."""
        choices = []
        for cid, c in self.manager.contestants.items():
            available, _ = self.manager.availability(cid)
            choices.append((c.label if available else f"{c.label} (unavailable)", cid))
        return choices

    def default_contestants(self) -> list[str]:
        """The running model plus the next available contestant, when there is one."""
        chosen = [self.manager.active_id]
        for cid in self.manager.contestants:
            if cid not in chosen and self.manager.availability(cid)[0] and len(chosen) < MIN_CONTESTANTS:
                chosen.append(cid)
        return chosen

    def contestants_table(self) -> str:
        rows = ["| id | model | kind | does | status |", "| --- | --- | --- | --- | --- |"]
        for cid, c in self.manager.contestants.items():
            available, reason = self.manager.availability(cid)
            status = ("✅ " if available else "⛔ unavailable: ") + reason
            note = f" — {c.note}" if c.note else ""
            rows.append(f"| `{cid}` | {c.label}{note} | {c.kind} | {', '.join(c.tasks)} | {status} |")
        return "\n".join(rows)

    # --- validation entry points (cheap; called by Gradio validators before queueing) --------------------------

    def generate_problems(self, prompt: Any, negative_prompt: Any, width: Any, height: Any, steps: Any,
                          guidance: Any, seed: Any, num_images: Any) -> dict[str, str]:
        return settings_problems(prompt, negative_prompt, width, height, steps, guidance, seed, num_images,
                                 max_side=self.max_side)

    def edit_problems(self, images: Any, instruction: Any, negative_prompt: Any, follow_source: Any, width: Any,
                      height: Any, steps: Any, guidance: Any, seed: Any, num_images: Any) -> dict[str, str]:
        problems = settings_problems(instruction, negative_prompt, width, height, steps, guidance, seed,
                                     num_images, max_side=self.max_side, size_required=not follow_source)
        problems = {("instruction" if k == "prompt" else k): v for k, v in problems.items()}
        if follow_source:
            problems.pop("width", None)
            problems.pop("height", None)
        image_problem = reference_problems(images, required=True)
        if image_problem:
            problems["images"] = image_problem
        return problems

    def matrix_problems(self, contestants: Any, prompt: Any, negative_prompt: Any, images: Any, width: Any,
                        height: Any, steps: Any, guidance: Any, seed: Any, prompt_required: bool = True,
                        runs: int = 1) -> dict[str, str]:
        problems = settings_problems(prompt, negative_prompt, width, height, steps, guidance, seed,
                                     prompt_required=prompt_required)
        selection = contestant_problems(contestants, self.manager.contestants)
        if selection:
            problems["contestants"] = selection
        elif len(contestants) * runs > MAX_MATRIX_RUNS:
            problems["contestants"] = (f"{len(contestants)} contestants x {runs} runs is more than "
                                       f"{MAX_MATRIX_RUNS} images per request.")
        image_problem = reference_problems(images, required=False)
        if image_problem:
            problems["images"] = image_problem
        return problems

    # --- tasks ----------------------------------------------------------------------------------------------

    def generate(self, prompt: str, negative_prompt: str = "", width: int = DEFAULT_SIZE,
                 height: int = DEFAULT_SIZE, steps: int = 30, guidance: float = 4.0, seed: Optional[int] = 0,
                 num_images: int = 1, progress: Optional[ProgressFn] = None) -> TaskResult:
        """Text to image with the running model: ``num_images`` images with seeds ``seed, seed+1, …``
        (``seed=None`` draws one)."""
        raise_for_problems(self.generate_problems(prompt, negative_prompt, width, height, steps, guidance, seed,
                                                  num_images))
        seed = random_seed() if seed is None else int(seed)
        job = Job(self.manager.active_id, prompt, negative_prompt or "",
                  [(seed + i) % (MAX_SEED + 1) for i in range(int(num_images))], int(steps), float(guidance))
        return self._run_matrix("generate", [job], [], int(width), int(height), progress, raise_errors=True)

    def edit(self, images: Any, instruction: str, negative_prompt: str = "", follow_source: bool = True,
             width: Optional[int] = None, height: Optional[int] = None, steps: int = 30, guidance: float = 4.0,
             seed: Optional[int] = 0, num_images: int = 1, progress: Optional[ProgressFn] = None) -> TaskResult:
        """Edit one or more uploaded reference images with the running model; by default the output follows
        the (first) source's aspect ratio with its long side at most 512."""
        raise_for_problems(self.edit_problems(images, instruction, negative_prompt, follow_source, width, height,
                                              steps, guidance, seed, num_images))
        references = load_references(images)
        seed = random_seed() if seed is None else int(seed)
        job = Job(self.manager.active_id, instruction, negative_prompt or "",
                  [(seed + i) % (MAX_SEED + 1) for i in range(int(num_images))], int(steps), float(guidance))
        size = (None, None) if follow_source else (int(width), int(height))
        return self._run_matrix("edit", [job], references, *size, progress, raise_errors=True)

    def compare(self, contestants: Sequence[str], prompt: str, negative_prompt: str = "", images: Any = None,
                width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE, steps: int = 30, guidance: float = 4.0,
                seed: Optional[int] = 0, recommended_settings: bool = False,
                progress: Optional[ProgressFn] = None) -> TaskResult:
        """One prompt (and optional source images), one seed and one set of settings across 2-4 contestants.

        With ``recommended_settings`` each contestant uses its own registry steps and guidance instead. A
        contestant that cannot run (unavailable, no editing, out of memory) gets an error cell; the rest run.
        """
        raise_for_problems(self.matrix_problems(contestants, prompt, negative_prompt, images, width, height,
                                                steps, guidance, seed))
        references = load_references(images)
        seed = random_seed() if seed is None else int(seed)
        jobs = [self._job(cid, prompt, negative_prompt, [seed], steps, guidance, recommended_settings)
                for cid in contestants]
        result = self._run_matrix("compare", jobs, references, int(width), int(height), progress)
        self._write_grid(result, [[run.files[0] if run.files else None for run in result.runs]], [""],
                         [run.label for run in result.runs])
        return result

    def seed_sweep(self, contestants: Sequence[str], prompt: str, negative_prompt: str = "", images: Any = None,
                   width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE, steps: int = 30, guidance: float = 4.0,
                   seed: Optional[int] = 0, num_seeds: int = 4, recommended_settings: bool = False,
                   progress: Optional[ProgressFn] = None) -> TaskResult:
        """Seeds ``seed … seed+num_seeds-1`` for each contestant: a grid with one row per seed."""
        if not _is_int(num_seeds) or not 1 <= int(num_seeds) <= MAX_SWEEP_SEEDS:
            raise StudioInputError(f"A seed sweep takes 1 to {MAX_SWEEP_SEEDS} seeds, got {num_seeds!r}.")
        raise_for_problems(self.matrix_problems(contestants, prompt, negative_prompt, images, width, height,
                                                steps, guidance, seed, runs=int(num_seeds)))
        references = load_references(images)
        seed = random_seed() if seed is None else int(seed)
        seeds = [(seed + i) % (MAX_SEED + 1) for i in range(int(num_seeds))]
        jobs = [self._job(cid, prompt, negative_prompt, seeds, steps, guidance, recommended_settings)
                for cid in contestants]
        result = self._run_matrix("seed_sweep", jobs, references, int(width), int(height), progress)
        cells = [[run.files[k] if k < len(run.files) else None for run in result.runs] for k in range(len(seeds))]
        self._write_grid(result, cells, [f"seed {s}" for s in seeds], [run.label for run in result.runs])
        return result

    def prompt_batch(self, contestants: Sequence[str], prompt_file: Any, negative_prompt: str = "",
                     width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE, steps: int = 30, guidance: float = 4.0,
                     seed: Optional[int] = 0, recommended_settings: bool = False,
                     progress: Optional[ProgressFn] = None) -> TaskResult:
        """Every prompt of an uploaded .txt/.jsonl list on every contestant: a grid with one row per prompt.

        A line's own ``seed``/``negative_prompt`` (jsonl) override the shared ones.
        """
        items = parse_prompt_file(prompt_file)
        raise_for_problems(self.matrix_problems(contestants, None, negative_prompt, None, width, height, steps,
                                                guidance, seed, prompt_required=False, runs=len(items)))
        seed = random_seed() if seed is None else int(seed)
        jobs = [self._job(cid, item.prompt, item.negative_prompt if item.negative_prompt is not None
                          else negative_prompt, [seed if item.seed is None else item.seed], steps, guidance,
                          recommended_settings)
                for item in items for cid in contestants]
        result = self._run_matrix("prompt_batch", jobs, [], int(width), int(height), progress)
        columns = len(contestants)
        cells = [[run.files[0] if run.files else None for run in result.runs[r * columns:(r + 1) * columns]]
                 for r in range(len(items))]
        self._write_grid(result, cells, [item.prompt for item in items], [run.label for run in result.runs[:columns]])
        return result

    # --- machinery ------------------------------------------------------------------------------------------

    def _job(self, contestant_id: str, prompt: str, negative_prompt: Optional[str], seeds: list[int], steps: int,
             guidance: float, recommended: bool) -> Job:
        c = self.manager.contestants[contestant_id]
        steps, guidance = (c.steps, c.guidance) if recommended else (int(steps), float(guidance))
        return Job(contestant_id, prompt, negative_prompt or "", seeds, steps, guidance)

    def _new_folder(self) -> Path:
        self._prune_outputs()
        folder = self.output_root / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def _prune_outputs(self) -> None:
        """Delete task folders older than ``output_ttl_s`` (outputs are temporary; exports are downloads)."""
        if not self.output_root.is_dir():
            return
        cutoff = time.time() - self.output_ttl_s
        for folder in self.output_root.iterdir():
            try:
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue

    def _run_matrix(self, task: str, jobs: list[Job], references: list[Image.Image], width: Optional[int],
                    height: Optional[int], progress: Optional[ProgressFn], raise_errors: bool = False) -> TaskResult:
        """Run each job (a contestant on a prompt with its seeds) and write PNGs, record and zip.

        With ``raise_errors`` (Generate/Edit: one model) a failure raises; otherwise (Compare and friends) it is
        recorded in that run and the other runs go on.
        """
        folder = self._new_folder()
        started = time.perf_counter()
        reference_files = []
        for number, reference in enumerate(references, start=1):
            path = folder / f"reference-{number:02d}.png"
            reference.save(path, format="PNG")
            reference_files.append(path)
        steps = StepCounter(sum(job.steps * len(job.seeds) for job in jobs), progress)
        runs: list[Run] = []
        models: dict[str, dict] = {}
        for number, job in enumerate(jobs, start=1):
            c = self.manager.contestants[job.contestant_id]
            run = Run(c.id, c.label, job.prompt, job.negative_prompt, list(job.seeds), job.steps, job.guidance,
                      width, height, references_used=min(len(references), c.max_reference_images))
            runs.append(run)
            models.setdefault(c.id, c.describe())
            start = steps.done
            try:
                self._run_job(task, number, run, references, folder, steps, models[c.id])
            except StudioInputError as error:
                if raise_errors:
                    raise
                run.error = str(error).removeprefix(f"{c.label} is ")
            except torch.cuda.OutOfMemoryError as error:
                free_memory()
                logger.warning("out of memory running %s: %s", c.id, error)
                message = "ran out of memory; try a smaller size, fewer images or fewer contestants."
                if raise_errors:
                    raise StudioInputError(f"The model {message}") from error
                run.error = message
            except Exception:
                if raise_errors:
                    raise
                logger.exception("contestant %s failed", c.id)
                run.error = "failed; see the server log."
            steps.advance_to(start + job.steps * len(job.seeds), f"{c.label}: done")
        record = {
            "deepgen_studio_record": 1,
            "task": task,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "models": models,
            "settings": {"width": width, "height": height, "follow_source": width is None,
                         "reference_images": [p.name for p in reference_files]},
            "runs": [run.to_record(folder) for run in runs],
            "total_elapsed_s": round(time.perf_counter() - started, 3),
            "environment": environment_record(self.manager.device),
        }
        result = TaskResult(task, runs, folder, record, folder / f"deepgen-{task}.zip", reference_files)
        self._write_export(result)
        return result

    def _run_job(self, task: str, number: int, run: Run, references: list[Image.Image], folder: Path,
                 steps: "StepCounter", model_record: dict) -> None:
        """Fill ``run`` with one contestant's images (one per seed), its time and peak memory."""
        c = self.manager.contestants[run.contestant_id]
        if references and "edit" not in c.tasks:
            raise StudioInputError("does not edit images (text-to-image only).")
        if not references and "t2i" not in c.tasks:
            raise StudioInputError("needs a source image (it only edits).")
        with self.manager.lock:
            model = self.manager.get(c.id)
            model_record["revision"] = model.revision
            self._check_size(model, run.width, run.height)
            with PeakMemory(self.manager.device) as memory:
                tick = time.perf_counter()
                for k, seed in enumerate(run.seeds):
                    base = steps.done
                    image = model.run(run.prompt, run.negative_prompt, references, run.width, run.height, run.steps,
                                      run.guidance, seed,
                                      lambda i, base=base: steps.advance_to(
                                          base + i + 1, f"{c.label}: step {i + 1}/{run.steps}"))
                    path = folder / f"{task}-{number:02d}-{k + 1}-{c.id}-seed{seed}.png"
                    save_png(image, path, self._png_settings(task, run, model, seed, image))
                    run.files.append(path)
                    run.sizes.append(image.size)
                    steps.advance_to(base + run.steps, f"{c.label}: image {k + 1}/{len(run.seeds)}")
                run.elapsed_s = time.perf_counter() - tick
        run.peak_memory_bytes, run.peak_memory_kind = memory.peak_bytes, memory.kind

    def _check_size(self, model: LoadedModel, width: Optional[int], height: Optional[int]) -> None:
        limit = model.max_side
        for name, value in (("width", width), ("height", height)):
            if value is not None and value > limit:
                raise StudioInputError(f"{model.contestant.label} is limited to {limit} pixels a side; "
                                       f"the {name} is {value}.")

    @staticmethod
    def _png_settings(task: str, run: Run, model: LoadedModel, seed: int, image: Image.Image) -> dict:
        c = model.contestant
        return {"task": task, "prompt": run.prompt, "negative_prompt": run.negative_prompt, "model": c.id,
                "model_source": c.source + (f"/{c.filename}" if c.filename else ""), "revision": model.revision,
                "seed": seed, "steps": run.steps, "guidance": run.guidance, "width": image.width,
                "height": image.height, "reference_images": run.references_used, "app": "DeepGen Studio"}

    def _write_grid(self, result: TaskResult, cells: list[list[Optional[Path]]], row_labels: list[str],
                    column_labels: list[str]) -> None:
        result.grid_path = result.folder / f"{result.task}-grid.png"
        make_grid(cells, row_labels, column_labels).save(result.grid_path, format="PNG")
        result.record["grid"] = result.grid_path.name
        self._write_export(result)

    @staticmethod
    def _write_export(result: TaskResult) -> None:
        """``record.json`` and a zip of it with every PNG (stored: PNGs are already compressed)."""
        record_path = result.folder / "record.json"
        record_path.write_text(json.dumps(result.record, indent=2, sort_keys=True), encoding="utf-8")
        extra = [result.grid_path] if result.grid_path else []
        with zipfile.ZipFile(result.zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in [record_path, *result.references, *result.files, *extra]:
                archive.write(path, arcname=path.name)

    def close(self) -> None:
        shutil.rmtree(self.output_root, ignore_errors=True)


# --- ZeroGPU and Gradio glue ----------------------------------------------------------------------------------


def estimate_gpu_seconds(contestants: Sequence[Contestant], steps: Any, width: Any, height: Any,
                         images_per_contestant: Any = 1, reference_images: int = 0,
                         loaded: Callable[[str], bool] = lambda cid: True) -> int:
    """Seconds of GPU to ask ZeroGPU for: per contestant, its per-step cost (at 1024x1024) x steps x images,
    scaled by megapixels and by the reference-image tokens an edit adds, plus loading time when not loaded.

    Bad inputs (caught later by validation) fall back to the minimum.
    """
    try:
        steps, images = int(steps), int(images_per_contestant)
        megapixels = max(int(width or DEFAULT_SIZE) * int(height or DEFAULT_SIZE) / 1024**2, 0.25)
    except (TypeError, ValueError):
        return MIN_GPU_SECONDS
    token_factor = 1 + min(int(reference_images), MAX_REFERENCE_IMAGES)
    seconds = GPU_OVERHEAD_S
    for c in contestants:
        seconds += c.gpu_seconds_per_step * steps * images * megapixels * token_factor
        seconds += 0 if loaded(c.id) else c.gpu_load_seconds
    return int(min(MAX_GPU_SECONDS, max(MIN_GPU_SECONDS, math.ceil(seconds * GPU_SAFETY))))


def gpu_task(duration: Callable[..., int]) -> Callable[[Callable], Callable]:
    """``@spaces.GPU(duration=duration)`` on a ZeroGPU Space; returns the function unchanged elsewhere.

    ``duration`` is called with the decorated function's arguments and returns seconds.
    """
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


GENERIC_ERROR = ("Something went wrong while running this request. It has been logged on the server; "
                 "try again, or change the settings.")


def user_errors(fn: Callable) -> Callable:
    """Turn a handler's failures into ``gr.Error``s with a clear message and no traceback on the page:
    input problems as they are, out-of-memory with advice, anything else generic (logged with its traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (StudioInputError, ValueError) as error:
            logger.info("refused request: %s", error)
            raise gr.Error(str(error).splitlines()[0][:500], print_exception=False) from None
        except torch.cuda.OutOfMemoryError:
            free_memory()
            logger.exception("out of memory")
            raise gr.Error("The server ran out of memory for this request; try a smaller size or fewer images.",
                           print_exception=False) from None
        except Exception:
            logger.exception("request failed")
            raise gr.Error(GENERIC_ERROR, print_exception=False) from None

    return wrapper


def gradio_validation(problems: dict[str, str], names: Sequence[str]) -> list[dict]:
    """``gr.validate`` results in input order for a Gradio ``validator`` (``problems`` keyed by input name)."""
    return [gr.validate(name not in problems, problems.get(name, "")) for name in names]


def gradio_progress(progress: Any) -> ProgressFn:
    """Adapt a ``gr.Progress`` to :data:`ProgressFn` (denoising steps done / total)."""

    def report(done: int, total: int, description: str) -> None:
        progress((done, total), desc=description, unit="steps")

    return report


def load_examples(folder: Path = EXAMPLES_DIR) -> tuple[list[str], list[tuple[list[str], str]]]:
    """Generate prompts and Edit examples ((image paths, instruction) pairs) from ``examples.json`` written by
    ``assets/make_examples.py``; empty lists when the folder is absent."""
    index = folder / "examples.json"
    if not index.is_file():
        return [], []
    data = json.loads(index.read_text(encoding="utf-8"))
    edits = [([str(folder / name) for name in item["images"]], item["instruction"]) for item in data.get("edit", [])
             if all((folder / name).is_file() for name in item["images"])]
    return list(data.get("generate", [])), edits


def on_spaces() -> bool:
    """Running on a Hugging Face Space (``SPACE_ID`` is set there)."""
    return bool(os.environ.get("SPACE_ID"))


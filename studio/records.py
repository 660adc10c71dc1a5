"""What a task leaves behind: runs, lossless PNGs with their settings, grids, the JSON record and the zip export.

Each task writes into a fresh folder named by a random id under one private output root (user text never becomes
a path); folders older than ``OUTPUT_TTL_S`` are pruned.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image, ImageDraw

from deepgen.contestants import LoadedModel
from deepgen.environment import PACKAGES
from deepgen.environment import environment_record as deepgen_environment_record
from deepgen.image_processing import paste_tile
from deepgen.memory import format_bytes

OUTPUT_TTL_S = 3600  # task folders older than this are deleted (Gradio's own cache has delete_cache)

ProgressFn = Callable[[int, int, str], None]  # (steps done, steps in total, description)


def public_source(source: str) -> str:
    """A model source as the page and exports show it: a local file or folder by its name only (its absolute
    path says who runs the server and where), a built-in name or hub id as it is."""
    path = Path(source).expanduser()
    return path.name if path.is_absolute() or path.exists() else source


def environment_record(device: torch.device) -> dict:
    """Versions (the app's libraries included) and device, for the exports' reproducibility records."""
    return deepgen_environment_record(device, (*PACKAGES, "gradio"))


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

    def png_settings(self, task: str, model: LoadedModel, seed: int, image: Image.Image) -> dict:
        """What goes into one PNG's text chunks: enough to reproduce it."""
        c = model.contestant
        return {"task": task, "prompt": self.prompt, "negative_prompt": self.negative_prompt, "model": c.id,
                "model_source": public_source(c.source) + (f"/{c.filename}" if c.filename else ""), "revision": model.revision,
                "seed": seed, "steps": self.steps, "guidance": self.guidance, "width": image.width,
                "height": image.height, "reference_images": self.references_used, "app": "DeepGen Studio"}


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

    def write_grid(self, cells: list[list[Optional[Path]]], row_labels: list[str],
                   column_labels: list[str]) -> None:
        """Add a labelled grid of the runs' images to the folder, the record and the export."""
        self.grid_path = self.folder / f"{self.task}-grid.png"
        make_grid(cells, row_labels, column_labels).save(self.grid_path, format="PNG")
        self.record["grid"] = self.grid_path.name
        self.write_export()

    def write_export(self) -> None:
        """``record.json`` and a zip of it with every PNG (stored: PNGs are already compressed)."""
        record_path = self.folder / "record.json"
        record_path.write_text(json.dumps(self.record, indent=2, sort_keys=True), encoding="utf-8")
        extra = [self.grid_path] if self.grid_path else []
        with zipfile.ZipFile(self.zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in [record_path, *self.references, *self.files, *extra]:
                archive.write(path, arcname=path.name)


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
            paste_tile(grid, path, label_w + c * cell_size, label_h + r * cell_size, cell_size, "unavailable")
    return grid


def new_task_folder(root: Path, ttl_s: float) -> Path:
    """A fresh folder named by a random id under ``root``, after deleting task folders older than ``ttl_s``
    (outputs are temporary; exports are downloads)."""
    if root.is_dir():
        cutoff = time.time() - ttl_s
        for folder in root.iterdir():
            try:
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue
    folder = root / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


class StepCounter:
    """Counts denoising steps across all runs of a task and reports them to a :data:`ProgressFn`."""

    def __init__(self, total: int, progress: Optional[ProgressFn]):
        self.total, self.done, self.progress = total, 0, progress

    def advance_to(self, done: int, description: str) -> None:
        self.done = done
        if self.progress is not None:
            self.progress(done, self.total, description)

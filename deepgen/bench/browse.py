"""Browsing benchmark runs side by side (the Compare tab's "Benchmark runs" view), without Gradio.

Run folders are only ever found under a configured root (env :data:`ROOT_ENV`), never taken as a path from the
browser: :func:`discover_runs` lists them, the page offers their keys, and :func:`select_runs` accepts only keys
from that list. :func:`build_rows` aligns the runs item by item (prompt, source image, each run's images) and
:func:`export_view` writes the view as a labelled grid PNG, a ``view.json`` and a zip of both, like the other
tabs' exports.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from PIL import Image, ImageDraw

from ..image_processing import paste_tile

ROOT_ENV = "DEEPGEN_BENCH_ROOT"
MIN_RUNS, MAX_RUNS = 2, 4
MAX_DEPTH = 6  # how deep under the root run folders are looked for
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class RunFolder:
    """A run found under the root. ``key`` (its path relative to the root) is what the page shows and sends."""

    key: str
    folder: Path
    record: Mapping[str, Any]

    @property
    def benchmark(self) -> str:
        return str(self.record.get("benchmark"))

    @property
    def model(self) -> str:
        return str(self.record.get("model", {}).get("id", "?"))

    @property
    def label(self) -> str:
        counts = self.record.get("counts", {})
        done = f"{counts.get('finished', '?')}/{counts.get('items', len(self.record.get('items', [])))}"
        return f"{self.key} -- {self.model} on {self.record.get('title', self.benchmark)} ({done} items)"


@dataclass
class ComparisonRow:
    """One item across the selected runs: ``outputs[r]`` are run ``r``'s images of the item (None: missing)."""

    item_id: str
    prompt: str
    source: Optional[Path]
    outputs: list[list[Optional[Path]]]


def bench_root(environ: Mapping[str, str] = os.environ) -> Optional[Path]:
    """The configured root (``DEEPGEN_BENCH_ROOT``), or None when unset or not a folder."""
    value = environ.get(ROOT_ENV, "").strip()
    return Path(value).resolve() if value and Path(value).is_dir() else None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _read_record(path: Path) -> Optional[dict]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("items"), list) and "benchmark" in record
    return record if ok else None


def discover_runs(root: Path) -> list[RunFolder]:
    """Every run folder under ``root`` (``record.json`` inside, or ``<folder>.record.json`` beside it for
    DPG-Bench), sorted by key; symbolic links are not followed out of the root."""
    root = root.resolve()
    runs = []
    for current, folders, names in os.walk(root):
        here = Path(current)
        depth = len(here.relative_to(root).parts)
        folders[:] = sorted(f for f in folders if not f.startswith(".") and depth < MAX_DEPTH
                            and not (here / f).is_symlink())
        for name in names:
            if name == "record.json":
                folder = here
            elif name.endswith(".record.json") and (here / name[: -len(".record.json")]).is_dir():
                folder = here / name[: -len(".record.json")]
            else:
                continue
            record = _read_record(here / name)
            if record is not None and _inside(folder, root) and folder != root:
                runs.append(RunFolder(folder.relative_to(root).as_posix(), folder, record))
    return sorted(runs, key=lambda run: run.key)


def select_runs(root: Path, keys: Sequence[str]) -> list[RunFolder]:
    """The runs named by ``keys`` (2-4 distinct keys from :func:`discover_runs`), all of one benchmark."""
    keys = list(keys or [])
    if not MIN_RUNS <= len(keys) <= MAX_RUNS or len(set(keys)) != len(keys):
        raise ValueError(f"Pick {MIN_RUNS} to {MAX_RUNS} different runs to compare, got {len(keys)}.")
    found = {run.key: run for run in discover_runs(root)}
    unknown = [key for key in keys if key not in found]
    if unknown:
        raise ValueError(f"Unknown run(s) {unknown}: pick runs from the list (folders under the benchmark root).")
    runs = [found[key] for key in keys]
    benchmarks = sorted({run.benchmark for run in runs})
    if len(benchmarks) > 1:
        raise ValueError(f"The runs are of different benchmarks ({', '.join(benchmarks)}); compare runs of one.")
    return runs


def _images(run: RunFolder, outputs: Sequence[str]) -> list[Optional[Path]]:
    paths = []
    for relative in outputs:
        path = run.folder / relative
        if Path(relative).suffix.lower() not in IMAGE_SUFFIXES or relative.endswith("_SRCIMG.png") \
                or relative.endswith("_source.png"):
            continue
        paths.append(path if path.is_file() and _inside(path, run.folder) else None)
    return paths


def _source(run: RunFolder, root: Path, source: Any) -> Optional[Path]:
    """The item's source image if it lies inside the run folder, the root or the run's data folder."""
    if not isinstance(source, str) or not source:
        return None
    path = (run.folder / source).resolve()
    data = Path(str(run.record.get("data", "")))
    allowed = [run.folder, root] + ([data if data.is_dir() else data.parent] if data.is_absolute() else [])
    return path if path.is_file() and any(_inside(path, folder) for folder in allowed) else None


def build_rows(root: Path, runs: Sequence[RunFolder], query: str = "", start: int = 0,
               count: int = 20) -> tuple[list[ComparisonRow], int]:
    """Rows ``start .. start+count`` of the items of ``runs`` (the first run's order, then items only others
    have) whose id or prompt contains ``query`` (case-insensitive); returns ``(rows, total matching)``."""
    indexes = [{entry["id"]: entry for entry in run.record["items"] if isinstance(entry, dict) and "id" in entry}
               for run in runs]
    order = list(dict.fromkeys(item_id for index in indexes for item_id in index))
    needle = query.strip().lower()
    matching = []
    for item_id in order:
        entry = next(index[item_id] for index in indexes if item_id in index)
        if needle and needle not in item_id.lower() and needle not in str(entry.get("prompt", "")).lower():
            continue
        matching.append((item_id, entry))
    rows = []
    for item_id, entry in matching[max(0, start):max(0, start) + max(0, count)]:
        first = next(r for r, index in enumerate(indexes) if item_id in index)
        outputs = [_images(run, index[item_id]["outputs"]) if item_id in index else [None]
                   for run, index in zip(runs, indexes)]
        rows.append(ComparisonRow(item_id, str(entry.get("prompt", "")),
                                  _source(runs[first], root, entry.get("source")), outputs))
    return rows, len(matching)


def make_view_grid(runs: Sequence[RunFolder], rows: Sequence[ComparisonRow], cell: int = 192) -> Image.Image:
    """One line per item: the source (when the benchmark edits) then each run's images, labelled."""
    has_source = any(row.source for row in rows)
    widths = [max((len(row.outputs[r]) for row in rows), default=1) for r in range(len(runs))]
    columns = int(has_source) + sum(widths)
    label_h, text_h = 24, 36
    grid = Image.new("RGB", (max(1, columns) * cell, label_h + len(rows) * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    x = cell if has_source else 0
    if has_source:
        draw.text((4, 6), "source", fill="black")
    for run, width in zip(runs, widths):
        draw.text((x + 4, 6), f"{run.model} ({run.key})"[: 6 * width * cell // 40], fill="black")
        x += width * cell
    for r, row in enumerate(rows):
        y = label_h + r * (cell + text_h)
        draw.text((4, y + 4), f"{row.item_id}: {row.prompt}"[: columns * cell // 6], fill="black")
        tiles = ([row.source] if has_source else []) + [
            path for run_outputs, width in zip(row.outputs, widths)
            for path in list(run_outputs) + [None] * (width - len(run_outputs))]
        for c, path in enumerate(tiles):
            paste_tile(grid, path, c * cell, y + text_h, cell)
    return grid


def export_view(runs: Sequence[RunFolder], rows: Sequence[ComparisonRow], folder: Path) -> Path:
    """Write ``benchmark-runs-grid.png``, ``view.json`` (runs with model ids, revisions and settings; items with
    their files) and ``benchmark-runs.zip`` of both into ``folder``; returns the zip's path."""
    folder.mkdir(parents=True, exist_ok=True)
    grid_path, view_path = folder / "benchmark-runs-grid.png", folder / "view.json"
    make_view_grid(runs, rows).save(grid_path, format="PNG")
    view = {"benchmark": runs[0].benchmark if runs else None,
            "runs": [{"key": run.key, "model": run.record.get("model"), "settings": run.record.get("settings"),
                      "status": run.record.get("status")} for run in runs],
            "items": [{"id": row.item_id, "prompt": row.prompt, "source": str(row.source) if row.source else None,
                       "outputs": {run.key: [p.relative_to(run.folder).as_posix() if p else None for p in paths]
                                   for run, paths in zip(runs, row.outputs)}} for row in rows]}
    view_path.write_text(json.dumps(view, indent=2, ensure_ascii=False), encoding="utf-8")
    zip_path = folder / "benchmark-runs.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.write(view_path, arcname=view_path.name)
        archive.write(grid_path, arcname=grid_path.name)
    return zip_path

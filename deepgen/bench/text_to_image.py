"""The six text-to-image benchmarks: GenEval, DPG-Bench, UniGenBench, WISE, T2I-CoReBench and CVTG-2K.

Each class reads its data as ``../shared/BENCHMARKS.md`` describes and writes the layout its official scorer
reads, fixing the authors' quirks (GenEval without ``detailed_caption``, UniGenBench from ``--data``, both CVTG
style folder spellings, WISE from one file or the folder of its three files).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

from PIL import Image

from .base import (Benchmark, Defaults, Item, RecordError, attempt, json_entries, jsonl_entries, require_id, require_text,
                   safe_name, save_png, save_text)

logger = logging.getLogger(__name__)


def _files(data: Path, pattern: str, what: str) -> list[Path]:
    """``data`` itself if it is a file, else its files matching ``pattern`` (sorted)."""
    if data.is_file():
        return [data]
    files = sorted(data.glob(pattern)) if data.is_dir() else []
    if not files:
        raise ValueError(f"No {what} found at {data}; pass the file, or a folder holding {pattern}.")
    return files


class GenEval(Benchmark):
    """``<i:05d>/metadata.jsonl`` + ``<i:05d>/samples/<k:04d>.png``; ``i`` is the record's 0-based index."""

    name, title = "geneval", "GenEval"
    defaults = Defaults(images_per_prompt=4)

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        path = _files(data, "*.jsonl", "GenEval prompts")[0]
        for index, (record, line) in enumerate(jsonl_entries(path)):
            # detailed_caption is not needed (the authors' script raises KeyError without it).
            yield attempt(lambda: Item(f"{index:05d}", require_text(record, "prompt", f"{path}:{line}"), (),
                                       f"{path}:{line}", record))

    def outputs(self, item_id: str, record: dict, images_per_prompt: int) -> tuple[str, ...]:
        samples = tuple(f"{item_id}/samples/{k:04d}.png" for k in range(images_per_prompt))
        return samples + (f"{item_id}/metadata.jsonl",)  # metadata last: it marks the folder as complete

    def write(self, item: Item, images: Sequence[Image.Image], out: Path, pnginfo: Any) -> None:
        for relative, image in zip(item.outputs[:-1], images, strict=True):
            save_png(image, out / relative, pnginfo)
        metadata = {key: value for key, value in item.record.items() if key != "idx"}
        metadata["text"] = metadata["prompt"]
        save_text(json.dumps(metadata, ensure_ascii=False) + "\n", out / item.outputs[-1])

    def scorer_command(self, out: Path, data: Path) -> str:
        return (f"python evaluation/evaluate_images.py {out} --outfile {out}/results.jsonl --model-path <detector dir>"
                f" && python evaluation/summary_scores.py {out}/results.jsonl   # in djghosh13/geneval")


class DPGBench(Benchmark):
    """``<stem>.png``: the prompt's samples tiled in a grid (2x2 for 4, row-major). The scorer lists every file
    of the folder, so the run record goes beside it (``<out>.record.json``), not inside."""

    name, title = "dpg", "DPG-Bench"
    defaults = Defaults(guidance=7.5, images_per_prompt=4)

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        for path in _files(data, "*.txt", "DPG-Bench prompt files (*.txt)"):
            try:
                lines = path.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as error:
                raise RecordError(f"{path}:1", f"cannot read it ({error})") from error
            yield attempt(lambda: self._item(path, lines))

    @staticmethod
    def _item(path: Path, lines: list[str]) -> Item:
        prompt = lines[0].strip() if lines else ""
        if not prompt:
            raise RecordError(f"{path}:1", "the first line must hold the prompt; it is empty")
        return Item(safe_name(path.stem, "file name", f"{path}:1"), prompt, (), f"{path}:1", {"prompt": prompt})

    def check_images_per_prompt(self, images_per_prompt: int) -> None:
        if math.isqrt(images_per_prompt) ** 2 != images_per_prompt:
            raise ValueError(f"DPG-Bench tiles the samples in a square grid; --images-per-prompt must be a square "
                             f"(1, 4, 9, ...), got {images_per_prompt}. The scorer's --pic-num is this number.")

    def outputs(self, item_id: str, record: dict, images_per_prompt: int) -> tuple[str, ...]:
        return (f"{item_id}.png",)

    def write(self, item: Item, images: Sequence[Image.Image], out: Path, pnginfo: Any) -> None:
        side = math.isqrt(len(images))
        width, height = images[0].size
        grid = Image.new("RGB", (side * width, side * height))
        for k, image in enumerate(images):
            grid.paste(image, ((k % side) * width, (k // side) * height))
        save_png(grid, out / item.outputs[0], pnginfo)

    def record_path(self, out: Path) -> Path:
        return out.with_name(f"{out.name}.record.json")

    def scorer_command(self, out: Path, data: Path) -> str:
        return (f"accelerate launch dpg_bench/compute_dpg_bench.py --image-root-path {out} --resolution <tile size>"
                " --pic-num 4 --vqa-model mplug   # in TencentQQGYLab/ELLA, with dpg_bench/dpg_bench.csv")


class UniGenBench(Benchmark):
    """``<index>_<k>.png``, flat (the official ``promptID_imageID.png``). Reads the CSV given as ``--data``."""

    name, title = "unigenbench", "UniGenBench"
    defaults = Defaults(images_per_prompt=4)

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        path = _files(data, "*.csv", "UniGenBench CSV")[0]
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"index", "prompt_en"} - set(reader.fieldnames or ())
            if missing:
                raise RecordError(f"{path}:1", f"the header lacks the column(s) {sorted(missing)}; expected "
                                               "'index' and 'prompt_en'")
            for row in reader:
                yield attempt(lambda: self._item(dict(row), f"{path}:{reader.line_num}"))

    @staticmethod
    def _item(row: dict, where: str) -> Item:
        try:
            index = int(float(row["index"]))
        except (TypeError, ValueError) as error:
            raise RecordError(where, f"'index' must be an integer (found {row['index']!r})") from error
        return Item(str(index), require_text(row, "prompt_en", where), (), where, row)

    def outputs(self, item_id: str, record: dict, images_per_prompt: int) -> tuple[str, ...]:
        return tuple(f"{item_id}_{k}.png" for k in range(images_per_prompt))

    def scorer_command(self, out: Path, data: Path) -> str:
        return (f"python eval/qwenvl_72b_en_eval.py --data_path {out} --csv_file {data} --api_url <vLLM url>"
                "   # in CodeGoat24/UniGenBench (or eval/gemini_en_eval.py)")


class WISE(Benchmark):
    """``<prompt_id>.png``, flat. ``--data`` is one of the three JSON files or the folder holding them all."""

    name, title = "wise", "WISE"

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        for path in _files(data, "*.json", "WISE JSON files"):
            for _, record, line in json_entries(path):
                where = f"{path}:{line}"
                yield attempt(lambda: Item(require_id(record, "prompt_id", where), require_text(record, "Prompt", where),
                                           (), where, record))

    def scorer_command(self, out: Path, data: Path) -> str:
        return (f"python gpt_eval.py --json_path <data/*.json> --image_dir {out} && python Calculate.py"
                "   # in PKU-YuanGroup/WISE (GPT-4o judge)")


class CoReBench(Benchmark):
    """``<Dim>/<ID>-<k>.png`` with ``Dim`` the first two ``-`` fields of the ID (``R-LR/R-LR-001-2.png``).

    ``--data`` is the flattened ``corebench.jsonl`` (``ID``, ``Prompt``) or the GitHub ``data/`` folder of
    ``<DIM>.json`` objects keyed by ID.
    """

    name, title = "corebench", "T2I-CoReBench"
    defaults = Defaults(images_per_prompt=4)
    ID_PATTERN = re.compile(r"[A-Za-z]+-[A-Za-z]+-[A-Za-z0-9_]+")

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        if data.is_dir() and not list(data.glob("*.jsonl")):
            for path in _files(data, "*.json", "T2I-CoReBench data/<DIM>.json files"):
                for key, record, line in json_entries(path):
                    if isinstance(record, dict):
                        record = {"ID": key, **record}
                    yield attempt(lambda: self._item(record, f"{path}:{line}"))
            return
        path = _files(data, "*.jsonl", "T2I-CoReBench jsonl")[0]
        for record, line in jsonl_entries(path):
            yield attempt(lambda: self._item(record, f"{path}:{line}"))

    def _item(self, record: Any, where: str) -> Item:
        item_id = require_id(record, "ID", where)
        if not self.ID_PATTERN.fullmatch(item_id):
            raise RecordError(where, f"'ID' must look like 'R-LR-001' (dimension, '-', number), got {item_id!r}")
        return Item(item_id, require_text(record, "Prompt", where), (), where, record)

    def outputs(self, item_id: str, record: dict, images_per_prompt: int) -> tuple[str, ...]:
        dimension = "-".join(item_id.split("-")[:2])
        return tuple(f"{dimension}/{item_id}-{k}.png" for k in range(images_per_prompt))

    def scorer_command(self, out: Path, data: Path) -> str:
        return (f"python evaluate.py --output_path {out.parent} --model {out.name} <judge options>"
                "   # in KwaiVGI/T2I-CoReBench; it reads <output_path>/<MODEL>/<DIM>/*.png")


class CVTG(Benchmark):
    """``<CVTG|CVTG-Style>/<area>/<index>.png``. Reads ``CVTG/`` and the style folder under either spelling
    (``CVTG-Style`` or ``CVTG-style``); the output always uses ``CVTG-Style`` as TextCrafter's eval does."""

    name, title = "cvtg", "CVTG-2K"
    BENCHES = {"CVTG": ("CVTG",), "CVTG-Style": ("CVTG-Style", "CVTG-style")}
    AREAS = (2, 3, 4, 5)

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        if not data.is_dir():
            raise ValueError(f"CVTG-2K --data must be the folder holding CVTG/ and CVTG-Style/, got {data}.")
        found = 0
        for bench, spellings in self.BENCHES.items():
            folder = next((data / s for s in spellings if (data / s).is_dir()), None)
            if folder is None:
                logger.warning("CVTG-2K: no %s folder under %s (looked for %s); skipping it.", bench, data,
                               " or ".join(spellings))
                continue
            for area in self.AREAS:
                path = folder / f"{area}.json"
                if not path.is_file():
                    logger.warning("CVTG-2K: %s is missing; skipping it.", path)
                    continue
                for key, value, line in json_entries(path):
                    if key != "data_list":
                        continue
                    if not isinstance(value, list):
                        raise RecordError(f"{path}:{line}", "'data_list' must be a list of records")
                    yield from self._items(path, bench, area, value, line)
                    found += 1
        if not found:
            raise ValueError(f"No CVTG-2K files found under {data}; expected CVTG/{{2..5}}.json and "
                             "CVTG-Style/{2..5}.json (from CVTG-2K.zip).")

    @staticmethod
    def _items(path: Path, bench: str, area: int, records: list,
               list_line: int) -> Iterator[Union[Item, RecordError]]:
        text = path.read_text(encoding="utf-8-sig")
        # Each record's line: the n-th '"index"' key after data_list (good enough to point at the record).
        starts = [m.start() for m in re.finditer(r'"index"\s*:', text)]
        for n, record in enumerate(records):
            line = text.count("\n", 0, starts[n]) + 1 if n < len(starts) else list_line
            where = f"{path}:{line}"
            yield attempt(lambda: Item(f"{bench}/{area}/{require_id(record, 'index', where)}",
                                       require_text(record, "prompt", where), (), where, record))

    def scorer_command(self, out: Path, data: Path) -> str:
        return (f"# TextCrafter ships no scorer: run OCR Word-Acc/NED and CLIPScore over {out}/<CVTG|CVTG-Style>/"
                f"<area>/<index>.png against {data}/<bench>/<area>.json (sentence_list)")

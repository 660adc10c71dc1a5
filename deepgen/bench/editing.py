"""The four editing benchmarks: ImgEdit (single-turn), GEdit-Bench, RISEBench and UniREditBench.

Fixes of the authors' scripts: the JSON is found from ``--data`` (their paths are hard-coded relative to the
working directory), source images are read relative to ``--data``, and RGBA or grey sources are converted to RGB
(by the runner) before they reach the model. GEdit-Bench reads a ``save_to_disk`` folder (Dataset or
DatasetDict) or the hub's parquet files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from PIL import Image

from ..image_processing import to_rgb
from .base import (EDIT_NEGATIVE_PROMPT, Benchmark, Defaults, Item, RecordError, attempt, image_loader, json_entries,
                   require_id, require_text, safe_name, save_png)

EDIT_DEFAULTS = Defaults(negative_prompt=EDIT_NEGATIVE_PROMPT, batch_size=4)


def _json_and_root(data: Path, filename: str, what: str) -> tuple[Path, Path]:
    """(the benchmark JSON, the folder its image paths are relative to) from ``--data`` (the folder or the file)."""
    if data.is_file():
        return data, data.parent
    path = data / filename
    if not path.is_file():
        raise ValueError(f"{what}: {path} not found; pass the folder holding {filename} (or the JSON file itself).")
    return path, data


class ImgEdit(Benchmark):
    """``<key>.png``, flat. ``--data``: ``Benchmark/singleturn`` (holding ``singleturn.json``) or the JSON."""

    name, title, edit = "imgedit", "ImgEdit", True
    defaults = EDIT_DEFAULTS

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        path, root = _json_and_root(data, "singleturn.json", "ImgEdit")
        for key, record, line in json_entries(path):
            if not isinstance(key, str):
                raise RecordError(f"{path}:{line}", "singleturn.json must be an object keyed by id, not a list")
            yield attempt(lambda: self._item(root, key, record, f"{path}:{line}"))

    @staticmethod
    def _item(root: Path, key: str, record: Any, where: str) -> Item:
        item_id = safe_name(key, "key", where)
        prompt = require_text(record, "prompt", where)
        return Item(item_id, prompt, (), where, record, image_loader(root, record.get("id"), "id", where))


    def scorer_command(self, out: Path, data: Path) -> str:
        return (f"python singleturn_bench.py --result_img_folder {out} --edit_json {data}/singleturn.json "
                f"--origin_img_root {data} --prompts_json <per edit_type prompts>   # in PKU-YuanGroup/ImgEdit")


class GEditBench(Benchmark):
    """``fullset/<task_type>/<lang>/<key>.png`` plus ``<key>_SRCIMG.png`` (the unresized source, in RGB)."""

    name, title, edit = "gedit", "GEdit-Bench", True
    defaults = EDIT_DEFAULTS
    COLUMNS = ("key", "task_type", "instruction", "instruction_language")

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        dataset = self._load(data)
        missing = [c for c in (*self.COLUMNS, "input_image") if c not in dataset.column_names]
        if missing:
            raise RecordError(str(data), f"the dataset lacks the column(s) {missing}; expected GEdit-Bench's "
                                         f"{[*self.COLUMNS, 'input_image']}")
        text = dataset.select_columns(list(self.COLUMNS))
        for row_index, row in enumerate(text):
            yield attempt(lambda: self._item(dataset, row_index, dict(row), f"{data}: row {row_index}"))

    def _item(self, dataset: Any, row_index: int, row: dict, where: str) -> Item:
        key = require_id(row, "key", where)
        task = safe_name(require_text(row, "task_type", where), "task_type", where)
        language = safe_name(require_text(row, "instruction_language", where), "instruction_language", where)
        prompt = require_text(row, "instruction", where)
        return Item(f"{task}/{language}/{key}", prompt, (), where, row, self._loader(dataset, row_index, where))

    @staticmethod
    def _load(data: Path) -> Any:
        import datasets

        if data.is_file() or (data.is_dir() and not (data / "dataset_info.json").is_file()
                              and not (data / "dataset_dict.json").is_file()):
            files = [data] if data.is_file() else sorted(data.rglob("*.parquet"))
            if not files:
                raise ValueError(f"GEdit-Bench: {data} is neither a save_to_disk folder nor holds parquet files.")
            return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        loaded = datasets.load_from_disk(str(data))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise ValueError(f"GEdit-Bench: {data} is a DatasetDict without a 'train' split ({list(loaded)}).")
            loaded = loaded["train"]
        return loaded

    @staticmethod
    def _loader(dataset: Any, row_index: int, where: str) -> Any:
        def load() -> Image.Image:
            image = dataset[row_index]["input_image"]
            if not isinstance(image, Image.Image):
                raise RecordError(where, f"'input_image' must be an image, got {type(image).__name__}")
            return image

        return load


    def outputs(self, item_id: str, record: dict, images_per_prompt: int) -> tuple[str, ...]:
        # The source first: the edit's presence marks the item as finished only once both exist.
        return (f"fullset/{item_id}_SRCIMG.png", f"fullset/{item_id}.png")

    def source_file(self, item: Item) -> Optional[str]:
        return item.outputs[0]

    def write(self, item: Item, images: Sequence[Image.Image], out: Path, pnginfo: Any) -> None:
        save_png(to_rgb(item.source()), out / item.outputs[0])
        save_png(images[0], out / item.outputs[1], pnginfo)

    def scorer_command(self, out: Path, data: Path) -> str:
        return (f"python test_gedit_score.py --save_path {out.parent} --model_name {out.name} --backbone qwen25vl"
                " && python calculate_statistics.py ...   # in Step1X-Edit GEdit-Bench (VIEScore)")


class RISEBench(Benchmark):
    """``<category>/<index>.png``. ``--data``: the folder with ``datav2_total_w_subtask.json`` and the
    unzipped ``<category>_images/`` (or the JSON itself)."""

    name, title, edit = "rise", "RISEBench", True
    defaults = EDIT_DEFAULTS

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        path, root = _json_and_root(data, "datav2_total_w_subtask.json", "RISEBench")
        for _, record, line in json_entries(path):
            yield attempt(lambda: self._item(root, record, f"{path}:{line}"))

    @staticmethod
    def _item(root: Path, record: Any, where: str) -> Item:
        index = require_id(record, "index", where)
        category = safe_name(require_text(record, "category", where), "category", where)
        prompt = require_text(record, "instruction", where)
        return Item(f"{category}/{index}", prompt, (), where, record,
                    image_loader(root, record.get("image"), "image", where))


    def scorer_command(self, out: Path, data: Path) -> str:
        return (f"python gpt_eval.py --data {data}/datav2_total_w_subtask.json --input {data} "
                f"--output {out.parent}   # in PhoenixZ/RISEBench; run folder must be outputs/<MODEL>/images")


class UniREditBench(Benchmark):
    """``<name>/<idx>.png``. The prompt is ``rules + " " + instruction`` when a record has rules."""

    name, title, edit = "unireditbench", "UniREditBench", True
    defaults = EDIT_DEFAULTS

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        path, root = _json_and_root(data, "data.json", "UniREditBench")
        for _, record, line in json_entries(path):
            yield attempt(lambda: self._item(root, record, f"{path}:{line}"))

    @staticmethod
    def _item(root: Path, record: Any, where: str) -> Item:
        idx = require_id(record, "idx", where)
        name = safe_name(require_text(record, "name", where), "name", where)
        prompt = require_text(record, "instruction", where)
        rules = record.get("rules")
        if rules is not None and not isinstance(rules, str):
            raise RecordError(where, f"'rules' must be a string when present (found {rules!r})")
        if rules and rules.strip():
            prompt = f"{rules.strip()} {prompt}"
        return Item(f"{name}/{idx}", prompt, (), where, record,
                    image_loader(root, record.get("original_image_path"), "original_image_path", where))

    def scorer_command(self, out: Path, data: Path) -> str:
        return (f"python eval/gpt_eval_uniredit.py --input {data} --data data.json --output {out}"
                "   # in maplebb/UniREditBench (GPT-4.1 judge)")

"""ShapeEval as a benchmark: the procedural shape world's eval split, scored offline by :mod:`deepgen.nano.shapeeval`.

This is the only module of :mod:`deepgen.bench` that imports the shape world and its evaluator.

``--data`` is ``<split>[:<n>[:<seed>]]`` (default ``eval:500:0``): ``deepgen.nano.world.dataset(split, n, seed)``,
cycling through the five capabilities. Layout: ``<capability>/<i:05d>.png`` (plus ``<i:05d>_source.png`` for
edits), and ``scores.json`` / ``scores.md`` with each capability's criteria and a bootstrap interval of its mean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..nano import shapeeval, world
from .base import Benchmark, Defaults, Item, RecordError, save_png, save_text

DEFAULT_SAMPLES = 500  # 100 per capability
SOURCE_SIZE = 64  # the world's native render size
BOOTSTRAP_RESAMPLES = 2000


def parse_spec(data: str) -> tuple[str, int, int]:
    """``"eval:500:0"`` -> ("eval", 500, 0); missing parts take the defaults."""
    parts = str(data).split(":")
    try:
        split = parts[0] or "eval"
        n = int(parts[1]) if len(parts) > 1 else DEFAULT_SAMPLES
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError as error:
        raise ValueError(f"shapeeval --data must be '<split>[:<n>[:<seed>]]' (e.g. 'eval:500:0'), got {data!r}.") \
            from error
    if split not in world.SPLITS or n < 1 or len(parts) > 3:
        raise ValueError(f"shapeeval --data must be '<split>[:<n>[:<seed>]]' with split in {world.SPLITS} and "
                         f"n >= 1, got {data!r}.")
    return split, n, seed


def bootstrap_interval(values: Sequence[float], level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    scores = np.asarray(values, dtype=np.float64)
    index = np.random.default_rng(seed).integers(0, len(scores), size=(BOOTSTRAP_RESAMPLES, len(scores)))
    means = scores[index].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


class ShapeEval(Benchmark):
    name, title = "shapeeval", "ShapeEval"
    defaults = Defaults(size=64, steps=30)

    def read(self, data: Path) -> Iterator[Union[Item, RecordError]]:
        split, n, seed = parse_spec(str(data))
        for i, sample in enumerate(world.dataset(split, n, seed=seed)):
            record = {"capability": sample.capability, "prompt": sample.prompt, "metadata": sample.metadata}
            source = None
            if sample.source is not None:
                source = (lambda s=sample: s.source_image(SOURCE_SIZE))
            yield Item(f"{i:05d}", sample.prompt, (), f"{split}:{seed} sample {i}", record, source)

    def outputs(self, item_id: str, record: dict, images_per_prompt: int) -> tuple[str, ...]:
        folder = record["capability"]
        source = (f"{folder}/{item_id}_source.png",) if "source" in record["metadata"] else ()
        return source + tuple(f"{folder}/{item_id}.png" if images_per_prompt == 1 else f"{folder}/{item_id}_{k}.png"
                              for k in range(images_per_prompt))

    def source_file(self, item: Item) -> Optional[str]:
        return item.outputs[0] if item.source is not None else None

    def write(self, item: Item, images: Sequence[Image.Image], out: Path, pnginfo: Any) -> None:
        outputs = item.outputs
        if item.source is not None:
            save_png(item.source(), out / outputs[0])
            outputs = outputs[1:]
        for relative, image in zip(outputs, images, strict=True):
            save_png(image, out / relative, pnginfo)

    def finish(self, out: Path, items: Sequence[Item]) -> Optional[str]:
        """Score every finished item and write ``scores.json`` and ``scores.md``; returns the table."""
        images, metadata = [], []
        for item in items:
            generated = item.outputs[1:] if item.source is not None else item.outputs
            if not all((out / relative).is_file() for relative in item.outputs):
                continue
            for relative in generated:
                with Image.open(out / relative) as image:
                    images.append(image.convert("RGB"))
                metadata.append(item.record["metadata"])
        if not images:
            return None
        results = shapeeval.evaluate_dataset(images, metadata)
        by_capability: dict[str, list[float]] = {}
        for row in results["per_sample"]:
            by_capability.setdefault(row["capability"], []).append(row["overall"])
        for capability, values in by_capability.items():
            low, high = bootstrap_interval(values)
            results["capabilities"][capability]["overall_interval"] = [low, high]
        table = shapeeval.format_table(results)
        save_text(json.dumps(results, indent=2, sort_keys=True), out / "scores.json")
        save_text(table + "\n\n95% bootstrap intervals of each capability's overall: " + ", ".join(
            f"{c} [{s['overall_interval'][0]:.3f}, {s['overall_interval'][1]:.3f}]"
            for c, s in results["capabilities"].items()) + "\n", out / "scores.md")
        return table

    def scorer_command(self, out: Path, data: Path) -> str:
        return f"# scored offline by this runner: {out}/scores.json and {out}/scores.md"

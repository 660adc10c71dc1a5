"""The benchmark runner: the ten benchmarks of the DeepGen 1.0 paper plus ShapeEval, in their official layouts.

``python -m deepgen bench <benchmark> --data PATH --out DIR`` (or ``accelerate launch -m deepgen bench ...``);
see ``docs/benchmarks.md``. :data:`BENCHMARKS` maps each command-line name to its reader/writer.
"""

from __future__ import annotations

from .base import EDIT_NEGATIVE_PROMPT, Benchmark, Defaults, Item, RecordError
from .editing import GEditBench, ImgEdit, RISEBench, UniREditBench
from .shapeeval_bench import ShapeEval
from .text_to_image import CVTG, WISE, CoReBench, DPGBench, GenEval, UniGenBench

BENCHMARKS: dict[str, Benchmark] = {cls.name: cls() for cls in (
    GenEval, DPGBench, UniGenBench, WISE, CoReBench, ImgEdit, GEditBench, RISEBench, UniREditBench, CVTG, ShapeEval)}

__all__ = ["BENCHMARKS", "EDIT_NEGATIVE_PROMPT", "Benchmark", "Defaults", "Item", "RecordError"]

"""Print the markdown results table of docs/nano.md from ``train/evaluate.py`` JSON files.

Usage:
    python train/nano/results_table.py base=runs/nano/eval/base.json stage1=runs/nano/eval/stage1.json ...
    python train/nano/results_table.py "stage 2=docs/results/nano6/eval/seed1[0-4]-sft.json" ...
One row per ``name=paths``: one file, several separated by commas, or a glob; the files of a row (draws of the same
model and settings) are pooled, each capability and subset weighted by its sample count. Columns are each
capability's ``overall`` and ``correct``, the single-object generation colour/shape accuracy, the plain prompts'
("a red circle") colour/shape/count where evaluated, and the mean over capabilities.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

from deepgen.nano import shapeeval, world


def expand(paths: str) -> list[Path]:
    """The files of one row: comma-separated paths, each a file or a glob (sorted)."""
    files = []
    for pattern in paths.split(","):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise SystemExit(f"no file matches {pattern!r}")
        files += [Path(match) for match in matches]
    return files


def pooled_results(files: list[Path]) -> dict:
    results = [json.loads(path.read_text()) for path in files]
    pool = shapeeval.pool_draws
    capabilities = {c: pool([r["capabilities"].get(c) for r in results]) for c in world.CAPABILITIES}
    subsets = {s: pool([r.get("subsets", {}).get(s) for r in results]) for s in ("generation_single", "plain")}
    scored = [scores["overall"] for scores in capabilities.values() if scores is not None]
    return {"capabilities": capabilities, "subsets": subsets, "overall": sum(scored) / len(scored)}


def main() -> None:
    rows = [arg.split("=", 1) for arg in sys.argv[1:]]
    if not rows or any(len(row) != 2 for row in rows):
        raise SystemExit(__doc__)
    header = ["model"] + [f"{c} (overall / correct)" for c in world.CAPABILITIES]
    header += ["single-object colour / shape", "plain colour / shape / count", "overall"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for name, paths in rows:
        results = pooled_results(expand(paths))
        cells = [name]
        for capability in world.CAPABILITIES:
            scores = results["capabilities"][capability]
            cells.append("-" if scores is None else f"{scores['overall']:.3f} / {scores['correct']:.3f}")
        single, plain = results["subsets"]["generation_single"], results["subsets"]["plain"]
        cells.append("-" if single is None else f"{single['colour']:.3f} / {single['shape']:.3f}")
        cells.append("-" if plain is None else f"{plain['colour']:.3f} / {plain['shape']:.3f} / {plain['count']:.3f}")
        cells.append(f"**{results['overall']:.3f}**")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

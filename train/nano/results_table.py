"""Print the markdown results table of docs/nano.md from ``train/evaluate.py`` JSON files.

Usage:
    python train/nano/results_table.py base=runs/nano/eval/base.json stage1=runs/nano/eval/stage1.json ...
One row per ``name=path``; columns are each capability's ``overall`` and ``correct``, the single-object
generation colour/shape accuracy, the plain prompts' ("a red circle") colour/shape/count where evaluated, and the
mean over capabilities.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from deepgen.nano import world


def main() -> None:
    rows = [arg.split("=", 1) for arg in sys.argv[1:]]
    if not rows or any(len(row) != 2 for row in rows):
        raise SystemExit(__doc__)
    header = ["model"] + [f"{c} (overall / correct)" for c in world.CAPABILITIES]
    header += ["single-object colour / shape", "plain colour / shape / count", "overall"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for name, path in rows:
        results = json.loads(Path(path).read_text())
        cells = [name]
        for capability in world.CAPABILITIES:
            scores = results["capabilities"].get(capability)
            cells.append("-" if scores is None else f"{scores['overall']:.3f} / {scores['correct']:.3f}")
        single = results.get("subsets", {}).get("generation_single")
        cells.append("-" if single is None else f"{single['colour']:.3f} / {single['shape']:.3f}")
        plain = results.get("subsets", {}).get("plain")
        cells.append("-" if plain is None else f"{plain['colour']:.3f} / {plain['shape']:.3f} / {plain['count']:.3f}")
        cells.append(f"**{results['overall']:.3f}**")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""Paired comparison of two models' ShapeEval results, with bootstrap confidence intervals.

Each model is evaluated by ``train/evaluate.py`` on the same draws of samples (same split, ``--eval-seed``,
``--per-capability``, sampler settings and noise ``--seed``); pass the files of each draw in the same order. The
draws are pooled, and the difference candidate - base is reported per capability and overall with a 95% paired
bootstrap interval (:func:`deepgen.nano.shapeeval.compare`):

    python train/compare_evals.py --base runs/nano2/eval/seed2-sft.json runs/nano2/eval/seed3-sft.json \
        --candidate runs/nano2/eval/seed2-rl.json runs/nano2/eval/seed3-rl.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

from deepgen.nano import shapeeval

# evaluate.py settings that may differ between the two files of a pair (they change neither the samples drawn
# nor their noise: batch k of a kind draws seed + k, so the batch size must match).
_FREE_SETTINGS = ("model", "out", "threads")


def load_pairs(base: list[Path], candidate: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read the JSON files; raise ``ValueError`` unless each pair was evaluated with the same settings."""
    if len(base) != len(candidate):
        raise ValueError(f"Got {len(base)} --base and {len(candidate)} --candidate files; pass one of each per "
                         "draw of samples, in the same order.")
    bases, candidates = [], []
    for path_b, path_c in zip(base, candidate):
        b, c = json.loads(path_b.read_text()), json.loads(path_c.read_text())
        differing = sorted(key for key in set(b["settings"]) | set(c["settings"])
                           if key not in _FREE_SETTINGS and b["settings"].get(key) != c["settings"].get(key))
        if differing:
            raise ValueError(f"{path_b} and {path_c} were evaluated with different settings ({', '.join(differing)}); "
                             "a paired comparison needs the same samples and sampler.")
        bases.append(b)
        candidates.append(c)
    return bases, candidates


def format_comparison(table: dict[str, dict[str, float]], level: float) -> str:
    """Markdown table of :func:`deepgen.nano.shapeeval.compare`'s result."""
    lines = [f"| capability | n | base | candidate | delta | {level:.0%} interval |", "|---|---:|---:|---:|---:|---|"]
    for name, row in table.items():
        label = f"**{name}**" if name == "overall" else name
        lines.append(f"| {label} | {row['n']} | {row['base']:.3f} | {row['candidate']:.3f} | {row['delta']:+.3f} | "
                     f"[{row['low']:+.3f}, {row['high']:+.3f}] |")
    return "\n".join(lines)


PLAIN_CRITERIA = ("count", "colour", "shape")


def plain_scores(results: list[dict[str, Any]]) -> dict[str, float]:
    """The plain-prompt subset's count, colour and shape accuracy, pooled over draws (weighted by sample count)."""
    subsets = [r.get("subsets", {}).get("plain") for r in results]
    if not all(subsets):
        raise ValueError("A candidate file has no plain-prompt subset (subsets.plain); evaluate it with "
                         "train/evaluate.py of this version (it scores plain prompts unless --plain 0).")
    pooled = shapeeval.pool_draws(subsets)
    return {key: pooled[key] for key in PLAIN_CRITERIA}


def tolerance_verdict(table: dict[str, dict[str, float]], overall: float, capability: float,
                      plain: Optional[dict[str, float]] = None,
                      plain_targets: Optional[dict[str, float]] = None) -> str:
    """Whether the candidate is within ``overall`` of the base on the overall score and within ``capability`` on
    every capability (mean paired differences, candidate - base) and, given ``plain_targets``, whether its
    ``plain`` scores (:func:`plain_scores`) reach them; one line, naming each miss."""
    if overall < 0 or capability < 0:
        raise ValueError(f"Tolerances are losses, >= 0; got {overall} and {capability}.")
    misses = []
    for name, row in table.items():
        limit = overall if name == "overall" else capability
        if row["delta"] < -limit:
            misses.append(f"{name} {row['delta']:+.3f} < -{limit:.3f}")
    limits = f"overall >= -{overall:.3f}, every capability >= -{capability:.3f}"
    if plain_targets:
        for key, target in plain_targets.items():
            if plain[key] < target:
                misses.append(f"plain {key} {plain[key]:.3f} < {target:.3f}")
        limits += ", plain " + ", ".join(f"{key} >= {target:.2f}" for key, target in plain_targets.items())
    return f"outside the tolerance ({limits}): {'; '.join(misses)}" if misses else f"within the tolerance ({limits})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, nargs="+", required=True, help="evaluate.py JSON files of the base")
    parser.add_argument("--candidate", type=Path, nargs="+", required=True,
                        help="evaluate.py JSON files of the candidate, one per --base file, same order")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--tolerance", type=float, nargs=2, metavar=("OVERALL", "CAPABILITY"), default=None,
                        help="also say whether the candidate loses at most OVERALL on the overall score and at most "
                             "CAPABILITY on every capability (mean differences), e.g. --tolerance 0.03 0.06")
    parser.add_argument("--plain-targets", type=float, nargs=3, metavar=PLAIN_CRITERIA, default=None,
                        help="with --tolerance, also require the candidate's plain prompts to reach these "
                             "accuracies, e.g. --plain-targets 0.9 0.95 0.85 (issue 20's targets)")
    args = parser.parse_args()
    try:
        bases, candidates = load_pairs(args.base, args.candidate)
        table = shapeeval.compare(bases, candidates, args.resamples, args.level, args.seed)
        if args.plain_targets and not args.tolerance:
            raise ValueError("--plain-targets is part of a tolerance verdict: give --tolerance too.")
        verdict = None
        if args.tolerance:
            targets = dict(zip(PLAIN_CRITERIA, args.plain_targets)) if args.plain_targets else None
            plain = plain_scores(candidates) if targets else None
            verdict = tolerance_verdict(table, *args.tolerance, plain=plain, plain_targets=targets)
    except ValueError as error:
        parser.error(str(error))
    print(format_comparison(table, args.level))
    if verdict:
        print(f"\n{verdict}")


if __name__ == "__main__":
    main()

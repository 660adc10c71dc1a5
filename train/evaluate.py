"""ShapeEval of a DeepGen pipeline on the shape world's held-out evaluation split.

Generates one image per held-out prompt (text-to-image) or edit (source image + instruction), reads every
output back with :mod:`deepgen.nano.shapeeval`, prints the per-capability table and writes it as JSON. The eval split
is regenerated from its seed (``deepgen.nano.world.dataset("eval", ...)``) and only holds (shape, colour) pairs that
never occur in training. Besides the five capabilities, ``generation_single`` reports the single-object
generation prompts alone (the issue's "colour and shape of single-object prompts" target), and
``generation_single/<colour> <shape>`` the same per (shape, colour) pair, which shows where it fails;
``editing/<operation>`` and ``reasoning_editing/<operation>`` split the edits by operation, and ``plain`` scores
``--plain`` extra plain prompts (``deepgen.nano.world.plain_samples``: one object, no size or position, "a red
circle") for colour, shape and count = 1; they are generated apart from the five capabilities' samples, so those
score exactly as before. ``--split train``
scores prompts of the training split instead (fresh samples of the pairs the model was trained on), which
measures how much of the held-out gap is compositional generalisation. ``--capabilities`` restricts the samples
to some capabilities (e.g. many generation prompts, to read single-object accuracy per pair).

Usage:
    python train/evaluate.py --model runs/nano/sft --per-capability 100 --steps 12 --out runs/nano/eval/sft.json
    python train/evaluate.py --model deepgen-nano-sft ...   # a built-in model name works too
    python train/evaluate.py --model deepgen-nano-sft --split train --eval-seed 7 ...
    python train/evaluate.py --model deepgen-nano-sft --split train --capabilities generation --per-capability 500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from deepgen.nano import shapeeval, world
from deepgen.builtin import load_pipeline
from deepgen.pipeline import DeepGenPipeline


def generate(pipe: DeepGenPipeline, samples: list[world.Sample], size: int = 64, steps: int = 12,
             guidance_scale: float = 3.0, batch_size: int = 50, seed: int = 0) -> list[np.ndarray]:
    """One (size, size, 3) uint8 output per sample: text-to-image for generation rows, an edit of the source
    image otherwise. Rows are batched by kind (a batch shares its number of reference images); batch ``k`` of a
    kind draws its noise from ``torch.Generator().manual_seed(seed + k)``, so results do not depend on the order
    of other batches."""
    outputs: list[Optional[np.ndarray]] = [None] * len(samples)
    for edit in (False, True):
        rows = [i for i, s in enumerate(samples) if (s.source is not None) == edit]
        for k, start in enumerate(range(0, len(rows), batch_size)):
            chunk = rows[start:start + batch_size]
            images = [[samples[i].source_image(size)] for i in chunk] if edit else None
            result = pipe([samples[i].prompt for i in chunk], image=images, height=size, width=size,
                          num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np",
                          generator=torch.Generator().manual_seed(seed + k))
            for i, image in zip(chunk, result.images):
                outputs[i] = (image * 255).round().astype(np.uint8)
    return outputs  # type: ignore[return-value]


def evaluate_pipeline(pipe: DeepGenPipeline, per_capability: int = 100, steps: int = 12,
                      guidance_scale: float = 3.0, eval_seed: int = 0, seed: int = 0,
                      batch_size: int = 50, size: int = 64, split: str = "eval",
                      capabilities: tuple[str, ...] = world.CAPABILITIES, plain: int = 0) -> dict[str, Any]:
    """Generate and score ``per_capability`` samples of each of ``capabilities`` of the world's ``split``.

    ``plain`` more samples (:func:`deepgen.nano.world.plain_samples` of ``split``, seed ``eval_seed``) are
    generated on their own and scored as ``subsets["plain"]`` (colour, shape, count); they change nothing else.

    Returns:
        :func:`deepgen.nano.shapeeval.evaluate_dataset`'s results plus ``subsets["generation_single"]``: the scores of
        the single-object generation prompts alone, ``subsets["generation_single/<colour> <shape>"]``: those
        of each (shape, colour) pair among them, and ``subsets["<editing capability>/<operation>"]``: the edits
        of each operation (add, background, move, recolour, remove).
    """
    samples = world.dataset(split, per_capability * len(capabilities), seed=eval_seed, capabilities=capabilities)
    images = generate(pipe, samples, size, steps, guidance_scale, batch_size, seed)
    results = shapeeval.evaluate_dataset(images, samples)
    subsets: dict[str, dict[str, float]] = {}
    single = [(image, s) for image, s in zip(images, samples)
              if s.capability == "generation" and s.metadata["task"] == "single"]
    if single:
        subsets["generation_single"] = _scores(single, "generation")
        pairs: dict[str, list[tuple[np.ndarray, world.Sample]]] = {}
        for image, s in single:
            group = s.metadata["groups"][0]
            pairs.setdefault(f"{group['colour']} {group['shape']}", []).append((image, s))
        for pair in sorted(pairs):
            subsets[f"generation_single/{pair}"] = _scores(pairs[pair], "generation")
    for capability in ("editing", "reasoning_editing"):
        operations: dict[str, list[tuple[np.ndarray, world.Sample]]] = {}
        for image, s in zip(images, samples):
            if s.capability == capability:
                operations.setdefault(s.metadata["operation"], []).append((image, s))
        for operation in sorted(operations):
            subsets[f"{capability}/{operation}"] = _scores(operations[operation], capability)
    if plain:
        plain_samples = world.plain_samples(split, plain, seed=eval_seed)
        plain_images = generate(pipe, plain_samples, size, steps, guidance_scale, batch_size, seed)
        subsets["plain"] = _scores(list(zip(plain_images, plain_samples)), "generation")
    if subsets:
        results["subsets"] = subsets
    return results


def _scores(rows: list[tuple[np.ndarray, world.Sample]], capability: str) -> dict[str, float]:
    return shapeeval.evaluate_dataset([image for image, _ in rows], [s for _, s in rows])["capabilities"][capability]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pipeline folder, built-in name or hub id")
    parser.add_argument("--per-capability", type=int, default=100, help="eval samples per capability")
    parser.add_argument("--steps", type=int, default=12, help="Euler sampling steps")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--split", choices=("eval", "train"), default="eval",
                        help="world split to sample prompts from (eval: held-out pairs)")
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the sampled split")
    parser.add_argument("--capabilities", nargs="+", choices=world.CAPABILITIES, default=list(world.CAPABILITIES),
                        help="score only these capabilities (default: all five)")
    parser.add_argument("--plain", type=int, default=None,
                        help="plain prompts ('a red circle') scored as the 'plain' subset (default: --per-capability; "
                             "0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = load_pipeline(args.model, device="cpu", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    tic = time.time()
    results = evaluate_pipeline(pipe, args.per_capability, args.steps, args.guidance_scale, args.eval_seed,
                                args.seed, args.batch_size, args.size, args.split, tuple(args.capabilities),
                                args.per_capability if args.plain is None else args.plain)
    elapsed = time.time() - tic
    print(shapeeval.format_table(results))
    for name, scores in results.get("subsets", {}).items():
        print(f"{name}: n={scores['n']} " + " ".join(f"{k}={v:.3f}" for k, v in scores.items() if k != "n"))
    print(f"{len(args.capabilities) * args.per_capability + results.get('subsets', {}).get('plain', {}).get('n', 0)} "
          f"samples in {elapsed:.0f}s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": str(args.model), "settings": {k: str(v) for k, v in vars(args).items()},
                  "seconds": round(elapsed, 1), **results}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

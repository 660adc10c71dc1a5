"""Write the shape-world training set as parquet shards, the input of every nano training step.

Each row is one :func:`deepgen.nano.world.to_records` record: ``image`` (target), ``source_image`` (edits only),
``prompt`` (caption or instruction), ``capability`` and ``metadata`` (JSON). Only the ``train`` split is written;
the evaluation split is regenerated from its seed by ``train/evaluate.py``, so it can never leak into training.
Prompts are ``--prompt-version 3`` by default (half the single-object prompts leave out size and/or position, "a
red circle", drawn large and in the center; ``deepgen.nano.world``); ``--prompt-version 1`` rewrites the data the
first shipped models were trained on, ``2`` the plain prompts placed at random.

Usage:
    python train/nano/make_data.py --out runs/nano/data --num-samples 40000 --shard-size 5000
    python train/nano/make_data.py --out runs/tiny/data --num-samples 32 --size 32   # the tiny-*.yaml configs
    python train/nano/make_data.py --out runs/nano7/plain --num-samples 8000 --plain  # plain prompts alone
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from deepgen.nano import world

# Generation and editing twice as often as the other capabilities: they cover the most combinations.
MIXTURE = ("generation", "editing", "reasoning_generation", "reasoning_editing", "text_rendering", "generation",
           "editing")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/nano/data"), help="folder for train-*.parquet")
    parser.add_argument("--num-samples", type=int, default=40000)
    parser.add_argument("--shard-size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0, help="world seed of the train split")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--prompt-version", type=int, choices=world.PROMPT_VERSIONS,
                        default=world.LATEST_PROMPT_VERSION,
                        help="world prompt wording (1: every single object has a size and position; 2: plain "
                             "prompts too, placed at random; 3: more plain prompts, drawn large in the center)")
    parser.add_argument("--plain", action="store_true",
                        help="write plain single-object samples only (world.plain_samples: 'a red circle', one "
                             "object, no size or position), a source to mix in where plain prompts need more weight")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    if args.plain:
        if args.prompt_version < 2:
            parser.error("--plain needs --prompt-version 2 or later (version 1 has no plain prompts)")
        samples, prefix = world.plain_samples("train", args.num_samples, seed=args.seed,
                                              prompt_version=args.prompt_version), "plain"
    else:
        samples, prefix = world.dataset("train", args.num_samples, seed=args.seed, capabilities=MIXTURE,
                                        prompt_version=args.prompt_version), "train"
    for shard, start in enumerate(range(0, args.num_samples, args.shard_size)):
        shard_samples = samples[start:start + args.shard_size]
        path = world.write_parquet(shard_samples, args.out / f"{prefix}-{shard:05d}.parquet", size=args.size)
        print(f"wrote {path} ({len(shard_samples)} samples)", flush=True)


if __name__ == "__main__":
    main()

"""Copy a trained nano pipeline folder into ``deepgen/assets/`` as a built-in model, weights stored in float16.

float16 storage halves the repository footprint (two pipelines stay under 30 MB); ``from_pretrained`` loads them
back as float32 on CPU, and ``train/evaluate.py --model <builtin name>`` measures the shipped weights themselves.

Usage:
    python train/nano/ship.py runs/nano/stage1/final deepgen/assets/deepgen-nano-stage1
    python train/nano/ship.py runs/nano/sft/final deepgen/assets/deepgen-nano-sft
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from deepgen.pipeline import DeepGenPipeline


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a save_pretrained folder (e.g. runs/nano/sft/final)")
    parser.add_argument("target", type=Path, help="destination under deepgen/assets/")
    args = parser.parse_args()

    pipe = DeepGenPipeline.from_pretrained(args.source, torch_dtype=torch.float16)
    pipe.save_pretrained(args.target)
    print(f"shipped {args.source} -> {args.target} ({folder_size(args.target) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()

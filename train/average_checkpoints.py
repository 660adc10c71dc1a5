"""Average the weights of pipelines fine-tuned from one start (model soup; WARP-style averaged RL policies).

    python train/average_checkpoints.py runs/nano2/rl-gen-60 runs/nano2/rl-gen-s1/final \
        runs/nano2/rl-gen-s2/final --out runs/nano2/rl-gen-avg

Every component of the inputs must have the same architecture; components that are identical in all inputs
(e.g. the frozen VLM of stage-3 runs) are copied unchanged, the others are averaged (``--weights``, default
uniform). The result is a ``save_pretrained`` folder, written atomically (``deepgen.training.averaging``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from deepgen.pipeline import DeepGenPipeline
from deepgen.training.averaging import average_pipelines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="save_pretrained folders (two or more)")
    parser.add_argument("--weights", type=float, nargs="+", default=None, help="one per model (default uniform)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the averaged pipeline to")
    args = parser.parse_args()
    if len(args.models) < 2:
        parser.error("pass at least two model folders")
    pipes = [DeepGenPipeline.from_pretrained(path, torch_dtype=torch.float32) for path in args.models]
    try:
        counts = average_pipelines(pipes, args.weights)
    except ValueError as error:
        parser.error(str(error))
    pipes[0].save_pretrained(args.out)
    summary = ", ".join(f"{name} {count} tensors" if count else f"{name} identical" for name, count in counts.items())
    print(f"averaged {len(pipes)} models into {args.out}: {summary}")


if __name__ == "__main__":
    main()

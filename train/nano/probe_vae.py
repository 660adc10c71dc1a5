"""Can a VAE reproduce every (shape, colour) pair? Reconstruct small objects of each pair and read them back.

For each object colour and shape, a small object is drawn in each of the 9 grid cells on the grey background,
encoded, decoded (posterior mean) and read with ShapeEval; a cell counts when an object of the right shape and
colour is found. Held-out pairs (never in the world's training split) are starred. A VAE trained on the training
split alone can learn its pairings as a prior and blur some held-out pairs into other shapes (the nano VAE does
so to small yellow and white triangles): no generator decoded by it draws those, whatever the conditioning learns
(docs/nano.md).

Usage:
    python train/nano/probe_vae.py runs/nano/vae-decoder [more VAE folders ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw

from deepgen.nano import shapeeval, world
from deepgen.image_processing import tensor_to_uint8


def probe_images(size: str = "small", background: str = "grey") -> tuple[list[tuple[str, str]], np.ndarray]:
    """One image per (colour, shape, grid cell): the pairs in order and a (pairs * 9, 64, 64, 3) uint8 array."""
    pairs = [(colour, shape) for colour in world.OBJECT_COLOURS for shape in world.SHAPES]
    images = []
    for colour, shape in pairs:
        for position in world.POSITIONS:
            image = Image.new("RGB", (64, 64), world.PALETTE[background])
            world.draw_shape(ImageDraw.Draw(image), shape, world.object_box(position, size, 64), world.PALETTE[colour])
            images.append(np.asarray(image))
    return pairs, np.stack(images)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return tensor_to_uint8(vae.decode(vae.encode(x).latent_dist.mode()).sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vaes", type=Path, nargs="+", help="AutoencoderKL folders")
    parser.add_argument("--size", choices=world.SIZES, default="small")
    args = parser.parse_args()

    pairs, images = probe_images(args.size)
    cells = len(world.POSITIONS)
    for folder in args.vaes:
        recon = reconstruct(AutoencoderKL.from_pretrained(folder).eval(), images)
        found = [any(c.shape == shape and c.colour == colour for c in shapeeval.read_scene(image).components)
                 for image, (colour, shape) in zip(recon, np.repeat(pairs, cells, axis=0))]
        hits = np.array(found).reshape(len(world.OBJECT_COLOURS), len(world.SHAPES), cells).sum(-1)
        print(f"\n{folder}: {args.size} objects read back correctly, of {cells} grid cells (* held-out pair)")
        print("| colour | " + " | ".join(world.SHAPES) + " |\n|---|" + "---:|" * len(world.SHAPES))
        for row, colour in zip(hits, world.OBJECT_COLOURS):
            print(f"| {colour} | " + " | ".join(f"{n}{'*' if world.is_held_out(shape, colour) else ''}"
                                                for n, shape in zip(row, world.SHAPES)) + " |")


if __name__ == "__main__":
    main()

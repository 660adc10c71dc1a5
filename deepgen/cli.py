"""Command line: ``python -m deepgen generate --prompt "..." [--image in.png] --out out.png`` and
``python -m deepgen bench <benchmark> --data PATH --out DIR`` (see :mod:`deepgen.bench`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import __name__ as package_name
from .acceleration import OFFLOAD_MODES, QUANTIZATION_SCHEMES, AccelerationOptions, accelerate
from .bench.cli import add_parser as add_bench_parser
from .bench.cli import run as run_bench
from .builtin import OFFICIAL_DIT, OFFICIAL_VLM, default_model_name, load_pipeline
from .image_processing import load_image, save_png
from .pipeline import default_dtype


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {package_name}", description="DeepGen 1.0 image generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate an image, or edit --image")
    gen.add_argument("--prompt", required=True, help="prompt, or edit instruction with --image")
    gen.add_argument("--image", action="append", type=Path, help="reference image to edit (repeat for several)")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--model", default=None,
                     help="built-in name, pipeline folder, hub id of a diffusers-format release "
                          "(deepgenteam/DeepGen-1.0-diffusers), or a native checkpoint file: model.pt from "
                          "deepgenteam/DeepGen-1.0 (RL), deepgenteam/DeepGen-1.0-SFT or deepgenteam/DeepGen-1.0-Pretrain "
                          f"(default: {default_model_name()})")
    gen.add_argument("--vlm", default=OFFICIAL_VLM, help="base VLM for a native checkpoint")
    gen.add_argument("--dit", default=OFFICIAL_DIT, help="base DiT/VAE/scheduler for a native checkpoint")
    gen.add_argument("--steps", type=int, default=50)
    gen.add_argument("--guidance", type=float, default=4.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--size", type=int, default=None,
                     help="square output size (default: the model's own, 512 for DeepGen 1.0, 64 for nano; "
                          "edits follow the source)")
    gen.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    gen.add_argument("--out", type=Path, required=True, help="output .png path")
    speed = gen.add_argument_group("speed (deepgen.acceleration; the PNG's settings record which were on)")
    speed.add_argument("--fast", action="store_true",
                       help="regional torch.compile + First Block Cache (changes the image slightly)")
    speed.add_argument("--compile", action="store_true", help="regional torch.compile of the DiT (same image)")
    speed.add_argument("--cache-threshold", type=float, default=None,
                       help="First Block Cache threshold, e.g. 0.1 (skips DiT steps; changes the image slightly)")
    speed.add_argument("--quantize", choices=QUANTIZATION_SCHEMES, default=None,
                       help="torchao quantisation of the DiT and VLM (needs torchao; fp8 needs an Ada/Hopper GPU)")
    speed.add_argument("--offload", choices=OFFLOAD_MODES, default=None,
                       help="keep weights on the CPU: 'model' (one component at a time) or 'group' (least memory)")
    add_bench_parser(sub)
    return parser


def acceleration_options(args: argparse.Namespace) -> AccelerationOptions:
    """The speed flags as options; ``--fast`` is compile + cache, and explicit flags override its parts."""
    explicit = {"compile": args.compile or None, "cache_threshold": args.cache_threshold, "quantize": args.quantize,
                "offload": args.offload}
    explicit = {key: value for key, value in explicit.items() if value is not None}
    return AccelerationOptions.fast(**explicit) if args.fast else AccelerationOptions(**explicit)


def generate(args: argparse.Namespace) -> dict:
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must end in .png (lossless, with the settings embedded), got {args.out}.")
    images = [load_image(path) for path in args.image or []]
    options = acceleration_options(args)
    model = args.model or default_model_name()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Offloading starts from weights on the CPU and moves them to `device` as they are used.
    pipe = load_pipeline(model, vlm=args.vlm, dit=args.dit, device="cpu" if options.offload else device,
                         torch_dtype=default_dtype(device))
    accelerate(pipe, options, device=device)
    size = args.size
    result = pipe(
        args.prompt,
        image=images or None,
        negative_prompt=args.negative_prompt,
        height=size,
        width=size,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator("cpu").manual_seed(args.seed),
    ).images[0]
    settings = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "model": str(model),
        "seed": args.seed,
        "steps": args.steps,
        "guidance": args.guidance,
        "width": result.width,
        "height": result.height,
        "images": [str(p) for p in args.image or []],
        "acceleration": options.to_record(),
    }
    save_png(result, args.out, settings)
    return settings


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return run_bench(args)
    try:
        settings = generate(args)
    except (ValueError, ImportError) as error:  # bad input, or an optional dependency a flag needs
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({settings['width']}x{settings['height']}, seed {settings['seed']})")
    return 0

"""``python -m deepgen bench <benchmark> --data PATH --out DIR [...]``: argument parsing for the runner."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..builtin import OFFICIAL_DIT, OFFICIAL_VLM
from . import BENCHMARKS
from .runner import GenerationSettings, run_benchmark

DEFAULT_SEED = 42  # the authors' default --seed


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="generate a benchmark's images in its official scorer's layout",
        description="Generate a benchmark's images in the layout its official scorer reads; resumable, sharded "
                    "with accelerate (accelerate launch -m deepgen bench ...). Defaults are each benchmark's own "
                    "settings (docs/benchmarks.md).")
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("--data", default=None,
                        help="the benchmark's data (file or folder, see docs/benchmarks.md); shapeeval: "
                             "'<split>[:<n>[:<seed>]]', default eval:500:0")
    parser.add_argument("--out", type=Path, required=True, help="run folder (created; rerun to resume)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", default=None, help="built-in name, folder, hub id or native checkpoint")
    model.add_argument("--contestant", default=None, help="an id of the contestants registry (--contestants)")
    parser.add_argument("--contestants", type=Path, default=Path("contestants.yaml"),
                        help="contestants registry for --contestant (default: ./contestants.yaml)")
    parser.add_argument("--vlm", default=OFFICIAL_VLM, help="base VLM for a native checkpoint")
    parser.add_argument("--dit", default=OFFICIAL_DIT, help="base DiT/VAE/scheduler for a native checkpoint")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per call (default: 16, edits 4)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 50)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the benchmark's)")
    parser.add_argument("--negative-prompt", default=None, help="default: the benchmark's ('' or the edit one)")
    parser.add_argument("--images-per-prompt", type=int, default=None, help="default: the benchmark's")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, default=None, help="square output side (default: the benchmark's)")
    size.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"base seed (default {DEFAULT_SEED})")
    parser.add_argument("--limit", type=int, default=None, help="run only the first N items")
    parser.add_argument("--skip-bad-records", action="store_true",
                        help="skip malformed records (reported with file and line) instead of stopping")
    parser.add_argument("--device", default=None, help="default: this process's accelerate device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def resolve_settings(args: argparse.Namespace, defaults, max_side: int, default_side: int) -> GenerationSettings:
    """The run's settings: what was passed, else the benchmark's defaults (its size capped by the model's)."""
    if (args.height is None) != (args.width is None):
        raise ValueError("Pass --height and --width together (or --size for a square).")
    if args.size is not None:
        height = width = args.size
    elif args.height is not None:
        height, width = args.height, args.width
    else:
        height = width = defaults.size if defaults.size <= max_side else default_side
    images = args.images_per_prompt if args.images_per_prompt is not None else defaults.images_per_prompt
    if images < 1:
        raise ValueError(f"--images-per-prompt must be at least 1, got {images}.")
    return GenerationSettings(
        height=height, width=width, steps=args.steps if args.steps is not None else defaults.steps,
        guidance=args.guidance if args.guidance is not None else defaults.guidance,
        negative_prompt=args.negative_prompt if args.negative_prompt is not None else defaults.negative_prompt,
        images_per_prompt=images, seed=args.seed)


def run(args: argparse.Namespace, state: Optional[object] = None) -> int:
    """Run ``args`` (from :func:`add_parser`); returns the exit code."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from .models import load_bench_model

    benchmark = BENCHMARKS[args.benchmark]
    if args.data is None and benchmark.name != "shapeeval":
        print(f"error: {benchmark.title} needs --data (see docs/benchmarks.md)", file=sys.stderr)
        return 2
    data = Path(args.data) if args.data is not None else Path("eval")
    # CPU-only processes (or `accelerate launch --cpu`) join as MULTI_CPU over gloo; GPUs use accelerate's default.
    state = state or PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    try:
        device = torch.device(args.device) if args.device else state.device
        model = load_bench_model(args.model, args.contestant, args.contestants, device, args.vlm, args.dit)
        settings = resolve_settings(args, benchmark.defaults, model.max_side,
                                    min(model.loaded.default_side, model.max_side))
        batch_size = args.batch_size if args.batch_size is not None else benchmark.defaults.batch_size
        run_benchmark(benchmark, data, args.out, model, settings, batch_size, args.limit, args.skip_bad_records,
                      state=state, progress=not args.no_progress)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0

"""DeepGen Studio: ``python app.py [--model NAME]`` serves Generate, Edit and Compare at http://127.0.0.1:7860.

The same file runs locally and on a ZeroGPU Space. This is the entry point (flags, environment, launch); the
app lives in the ``studio`` package beside it: the logic (models, validation, tasks, exports, GPU durations) in
its modules, the page in ``studio/ui/``. API names are stable: ``/generate``, ``/edit``, ``/compare``,
``/seed_sweep``, ``/prompt_batch``; with ``--mcp`` (the default) they are MCP tools as well.
"""

from __future__ import annotations

try:
    import spaces  # noqa: F401  ZeroGPU: must be imported before torch (deepgen imports torch)
except ImportError:
    spaces = None

import argparse
import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

import gradio as gr

from deepgen.acceleration import AccelerationOptions
from deepgen.bench.browse import ROOT_ENV, bench_root
from deepgen.builtin import OFFICIAL_DIT, OFFICIAL_VLM
from studio import DEFAULT_REGISTRY, EXAMPLES_DIR
from studio.server import MAX_SESSIONS, launch, shutdown
from studio.tasks import Studio
from studio.ui import build_demo
from studio.zerogpu import on_spaces

# The only files served from outside Gradio's cache and the temp dir: the shipped example images (needed when the
# app is started from another working directory).
ALLOWED_PATHS = [str(EXAMPLES_DIR)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DeepGen Studio: generate, edit and compare images in a browser.")
    parser.add_argument("--model", default=os.environ.get("DEEPGEN_MODEL"),
                        help="contestant id, built-in name, folder, hub id or native checkpoint "
                             "(default: $DEEPGEN_MODEL, else the best built-in model)")
    parser.add_argument("--vlm", default=os.environ.get("DEEPGEN_VLM", OFFICIAL_VLM),
                        help="base VLM for a native checkpoint")
    parser.add_argument("--dit", default=os.environ.get("DEEPGEN_DIT", OFFICIAL_DIT),
                        help="base DiT/VAE/scheduler for a native checkpoint")
    parser.add_argument("--registry", default=os.environ.get("DEEPGEN_REGISTRY", str(DEFAULT_REGISTRY)),
                        help="contestants file for the Compare tab")
    parser.add_argument("--bench-root", type=Path, default=bench_root(),
                        help="folder whose `python -m deepgen bench` runs the Compare tab can browse "
                             f"(default: ${ROOT_ENV})")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction,
                        default=os.environ.get("DEEPGEN_FAST", "0") == "1",
                        help="regional torch.compile + First Block Cache on DeepGen models (faster on a GPU; images "
                             "change slightly; exports record it). Default: $DEEPGEN_FAST, else off")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--queue-size", type=int, default=64, help="requests waiting at most; more are refused")
    parser.add_argument("--max-sessions", type=int, default=MAX_SESSIONS,
                        help="browser/API sessions whose page state is kept in memory (the oldest are dropped)")
    parser.add_argument("--cache-examples", action=argparse.BooleanOptionalAction, default=on_spaces(),
                        help="cache example outputs lazily (default: on a Space)")
    parser.add_argument("--mcp", action=argparse.BooleanOptionalAction,
                        default=os.environ.get("DEEPGEN_MCP", "1" if importlib.util.find_spec("mcp") else "0") == "1",
                        help="also serve the API endpoints as MCP tools at /gradio_api/mcp/ (needs gradio[mcp]; "
                             "default: $DEEPGEN_MCP, else on when gradio[mcp] is installed)")
    return parser


def create_studio(args: argparse.Namespace) -> Studio:
    acceleration = AccelerationOptions.fast() if args.fast else None
    return Studio.create(model=args.model, registry=args.registry, vlm=args.vlm, dit=args.dit, device=args.device,
                         acceleration=acceleration)


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bench_root is not None and not args.bench_root.is_dir():
        parser.error(f"--bench-root {args.bench_root} is not a folder.")
    studio = create_studio(args)
    demo = build_demo(studio, cache_examples=args.cache_examples, bench_root=args.bench_root)
    # Gradio keeps timing analytics of the last N events for its monitoring page (10,000 by default, ~1 KB each).
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # `kill` also runs the clean-up below
    try:
        launch(demo, max_sessions=args.max_sessions, server_name=args.host, server_port=args.port,
               show_error=False, allowed_paths=ALLOWED_PATHS, theme=gr.themes.Soft(), mcp_server=args.mcp)
    finally:
        shutdown(demo)
        studio.close()


if __name__ == "__main__":
    main()

"""The Gradio page: one builder per tab (:mod:`.generate`, :mod:`.edit`, :mod:`.compare`) over the API/MCP
functions of :mod:`.endpoints`. API names are stable: ``/generate``, ``/edit``, ``/compare``, ``/seed_sweep``,
``/prompt_batch``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import gradio as gr

from .. import EXAMPLES_DIR
from ..inputs import load_examples
from ..server import DELETE_CACHE, StudioBlocks
from ..tasks import Studio
from .compare import build_compare_tab
from .edit import build_edit_tab, first_image
from .endpoints import Endpoints
from .generate import build_generate_tab


def build_demo(studio: Studio, cache_examples: bool = False, examples_dir: Path = EXAMPLES_DIR,
               bench_root: Optional[Path] = None) -> gr.Blocks:
    """The Blocks app for ``studio``. ``cache_examples`` caches example outputs lazily (on first click);
    ``bench_root`` is the folder whose benchmark runs Compare can browse (None: not offered)."""
    prompts, edit_examples = load_examples(examples_dir, studio.active)
    endpoints = Endpoints(studio)
    with StudioBlocks(title="DeepGen Studio", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# DeepGen Studio\nDeepGen 1.0 image generation and editing, compared side by side.")
        gr.Markdown(studio.model_banner(), elem_id="model-banner")
        with gr.Tabs() as tabs:
            generate = build_generate_tab(studio, endpoints, prompts, cache_examples)
            edit = build_edit_tab(studio, endpoints, edit_examples, cache_examples)
            build_compare_tab(studio, endpoints, bench_root)
        generate["send"].click(lambda gallery, index: (first_image(gallery, index), gr.Tabs(selected="edit")),
                               [generate["gallery"], generate["selected"]], [edit["images"], tabs], queue=False,
                               api_visibility="private")
    return demo

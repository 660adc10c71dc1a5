"""The Compare tab: 2-4 contestants side by side, a seed sweep, or a prompt list, with grids and records."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import gradio as gr

from ..inputs import PROMPT_FILE_SUFFIXES
from ..settings import MAX_CONTESTANTS, MAX_PROMPT_CHARS, MAX_SWEEP_SEEDS, MIN_CONTESTANTS
from ..tasks import Studio
from .benchmark_runs import build_benchmark_runs
from .controls import Components, negative_prompt_box, settings_controls, wire_task
from .endpoints import Endpoints


def _task_buttons() -> tuple[Components, dict[str, gr.Button]]:
    """The three ways to run a comparison, each in its own sub-tab, and the inputs only they take."""
    with gr.Tabs():
        with gr.Tab("Side by side"):
            compare = gr.Button("Compare", variant="primary", elem_id="compare-button")
        with gr.Tab("Seed sweep"):
            num_seeds = gr.Slider(1, MAX_SWEEP_SEEDS, value=4, step=1, label="Seeds (seed, seed+1, …)")
            sweep = gr.Button("Run seed sweep", variant="primary")
        with gr.Tab("Prompt list"):
            prompt_file = gr.File(label="Prompt list: .txt (one a line) or .jsonl",
                                  file_types=list(PROMPT_FILE_SUFFIXES))
            batch = gr.Button("Run prompt list", variant="primary")
    return dict(num_seeds=num_seeds, prompt_file=prompt_file), dict(compare=compare, seed_sweep=sweep,
                                                                    prompt_batch=batch)


def build_compare_tab(studio: Studio, endpoints: Endpoints, bench_root: Optional[Path] = None) -> Components:
    """Lay out and wire the tab (``/compare``, ``/seed_sweep`` and ``/prompt_batch``, and the page-only
    "Benchmark runs" view of ``bench_root``); returns its components."""
    with gr.Tab("Compare", id="compare"):
        with gr.Accordion("Contestants (edit contestants.yaml to change them)", open=False):
            gr.Markdown(studio.contestants_table(), elem_id="contestants-table")
        c: Components = dict(contestants=gr.CheckboxGroup(
            studio.contestant_choices(), value=studio.default_contestants(),
            label=f"Contestants ({MIN_CONTESTANTS}-{MAX_CONTESTANTS})", elem_id="compare-contestants"))
        with gr.Row():
            with gr.Column(scale=2):
                c.update(prompt=gr.Textbox(label="Prompt or edit instruction", lines=2, max_length=MAX_PROMPT_CHARS,
                                           elem_id="compare-prompt"),
                         negative_prompt=negative_prompt_box(),
                         images=gr.File(label="Optional source image(s): compares edits", file_count="multiple",
                                        file_types=["image"]),
                         recommended_settings=gr.Checkbox(False, label="Use each model's recommended steps and "
                                                                       "guidance"))
                c.update(settings_controls(studio, "compare"))
            with gr.Column(scale=3):
                extra, buttons = _task_buttons()
                c.update(extra)
                outputs = [
                    gr.Gallery(label="Side by side", format="png", columns=4, height=360, interactive=False,
                               elem_id="compare-gallery"),
                    gr.Image(label="Grid", type="filepath", format="png", height=360, interactive=False),
                    gr.Markdown(label="Summary", elem_id="compare-summary"),
                    gr.Number(label="Used seed", precision=0, interactive=False),
                    gr.File(label="Export: PNGs + JSON record (.zip)", interactive=False)]
                with gr.Accordion("JSON record", open=False):
                    outputs.append(gr.JSON(label="Record"))
        build_benchmark_runs(studio, bench_root)
    for task, button in buttons.items():
        wire_task(button.click, endpoints, task, c, outputs, task)
    return c

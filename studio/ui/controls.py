"""Pieces the tabs share: the settings accordion and the validator -> GPU-queue wiring of a task."""

from __future__ import annotations

from typing import Callable, Optional

import gradio as gr

from ..settings import (ASPECT_PRESETS, INPUTS, MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, MIN_SIDE,
                        SIZE_STEP, aspect_size)
from ..tasks import Studio
from .endpoints import GPU_QUEUE, Endpoints

Components = dict[str, gr.components.Component]


def settings_controls(studio: Studio, prefix: str, size_interactive: bool = True) -> Components:
    """Aspect/size, steps, guidance and seed controls, named like the API inputs they feed (plus ``aspect``)."""
    side = studio.default_side
    with gr.Accordion("Settings", open=True):
        with gr.Row():
            aspect = gr.Dropdown(list(ASPECT_PRESETS), value="1:1 square", label="Aspect ratio",
                                 interactive=size_interactive, elem_id=f"{prefix}-aspect")
            width = gr.Slider(MIN_SIDE, studio.max_side, value=side, step=SIZE_STEP, label="Width",
                              interactive=size_interactive, elem_id=f"{prefix}-width")
            height = gr.Slider(MIN_SIDE, studio.max_side, value=side, step=SIZE_STEP, label="Height",
                               interactive=size_interactive, elem_id=f"{prefix}-height")
        aspect.input(lambda preset, w, h: aspect_size(preset, max(w, h)), [aspect, width, height], [width, height],
                     queue=False, api_visibility="private")
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, value=studio.active.steps, step=1, label="Denoising steps",
                              elem_id=f"{prefix}-steps")
            guidance = gr.Slider(0.0, MAX_GUIDANCE, value=studio.active.guidance, step=0.5, label="Guidance scale",
                                 elem_id=f"{prefix}-guidance")
        with gr.Row():
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id=f"{prefix}-seed")
            randomize = gr.Checkbox(True, label="Randomize seed", elem_id=f"{prefix}-randomize")
    return dict(aspect=aspect, width=width, height=height, steps=steps, guidance=guidance, seed=seed,
                randomize_seed=randomize)


def negative_prompt_box() -> gr.Textbox:
    """The optional negative prompt (empty by default, so API callers may leave it out)."""
    return gr.Textbox("", label="Negative prompt", max_length=MAX_PROMPT_CHARS)


def wire_task(trigger: Callable, endpoints: Endpoints, task: str, components: Components, outputs: list,
              api_name: Optional[str]) -> None:
    """trigger -> validator (messages on the fields) -> the task on the shared GPU queue, under ``api_name``
    (None: a second trigger of an endpoint that is already public)."""
    # preprocess=False: the functions get what the caller sent, unconverted, so the Studio's checks see a string
    # for a number or "yes" for a checkbox and say so (Gradio's conversions would coerce them or fail with raw text).
    inputs = [components[name] for name in INPUTS[task]]
    checked = trigger(lambda *_: None, inputs, None, validator=endpoints.validator(task), api_visibility="private",
                      show_progress="hidden", concurrency_limit=None, preprocess=False)
    checked.success(endpoints[task], inputs, outputs, api_name=api_name, concurrency_limit=1,
                    concurrency_id=GPU_QUEUE, api_visibility="public" if api_name else "private", preprocess=False)


def selected_index(evt: gr.SelectData) -> int:
    """The gallery item the user clicked (what "send to Edit" and "edit again" take)."""
    return evt.index

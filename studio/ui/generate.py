"""The Generate tab: a prompt in, lossless PNGs out, and "send to Edit"."""

from __future__ import annotations

import gradio as gr

from ..settings import MAX_IMAGES, MAX_PROMPT_CHARS
from ..tasks import Studio
from .controls import Components, negative_prompt_box, selected_index, settings_controls, wire_task
from .endpoints import Endpoints


def build_generate_tab(studio: Studio, endpoints: Endpoints, prompts: list[str], cache_examples: bool) -> Components:
    """Lay out and wire the tab; returns the components other tabs talk to (``gallery``, ``selected``, ``send``)."""
    with gr.Tab("Generate", id="generate"):
        with gr.Row():
            with gr.Column(scale=2):
                c: Components = dict(
                    prompt=gr.Textbox(label="Prompt", lines=3, max_length=MAX_PROMPT_CHARS,
                                      placeholder="a small green triangle at the top", elem_id="generate-prompt"),
                    negative_prompt=negative_prompt_box(),
                    num_images=gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images"))
                button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                c.update(settings_controls(studio, "generate"))
            with gr.Column(scale=3):
                c["gallery"] = gr.Gallery(label="Images (lossless PNG, settings embedded)", format="png", columns=2,
                                          height=520, interactive=False, elem_id="generate-gallery")
                with gr.Row():
                    used_seed = gr.Number(label="Used seed", precision=0, interactive=False)
                    c["send"] = gr.Button("Send to Edit ➜", elem_id="send-to-edit")
                info = gr.Markdown(label="Info", elem_id="generate-info")
                export = gr.File(label="Export: PNGs + JSON record (.zip)", interactive=False)
        c["selected"] = gr.State(0)
        outputs = [c["gallery"], used_seed, info, export]
        if prompts:
            gr.Examples([[p] for p in prompts], [c["prompt"]], outputs, label="Example prompts",
                        fn=lambda prompt: endpoints["generate"](prompt, randomize_seed=False),
                        cache_examples=cache_examples, cache_mode="lazy")
    wire_task(button.click, endpoints, "generate", c, outputs, "generate")
    wire_task(c["prompt"].submit, endpoints, "generate", c, outputs, None)
    c["gallery"].select(selected_index, None, c["selected"], queue=False, api_visibility="private")
    return c

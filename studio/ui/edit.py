"""The Edit tab: 1-4 reference images and an instruction in, a before/after slider and PNGs out."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from deepgen.pipeline import EDIT_NEGATIVE_PROMPT

from ..inputs import upload_paths
from ..settings import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_REFERENCE_IMAGES
from ..tasks import Studio
from .controls import Components, negative_prompt_box, selected_index, settings_controls, wire_task
from .endpoints import Endpoints


# Edit-tab negative prompts: the authors' default (empty) and the one their editing-benchmark scripts use.
NEGATIVE_PRESETS = {"None (the authors' default)": "", "Editing benchmarks (authors)": EDIT_NEGATIVE_PROMPT}


def first_image(gallery: list, index: int) -> list[str]:
    """The clicked (else the first) image of a gallery, as an Edit upload."""
    paths = upload_paths(gallery)
    if not paths:
        raise gr.Error("There is no image to send yet; generate one first.", print_exception=False)
    return [paths[index if isinstance(index, int) and 0 <= index < len(paths) else 0]]


def build_edit_tab(studio: Studio, endpoints: Endpoints, examples: list[tuple[list[str], str]],
                   cache_examples: bool) -> Components:
    """Lay out and wire the tab; returns its components (``images`` receives "send to Edit")."""
    with gr.Tab("Edit", id="edit"):
        with gr.Row():
            with gr.Column(scale=2):
                c: Components = dict(
                    images=gr.File(label=f"Images to edit (1-{MAX_REFERENCE_IMAGES})", file_count="multiple",
                                   file_types=["image"], elem_id="edit-images"))
                preview = gr.Gallery(label="References", columns=4, height=140, interactive=False,
                                     elem_id="edit-preview")
                c.update(instruction=gr.Textbox(label="Instruction", lines=2, max_length=MAX_PROMPT_CHARS,
                                                placeholder="make the circle blue", elem_id="edit-instruction"),
                         negative_prompt=negative_prompt_box())
                preset = gr.Dropdown(list(NEGATIVE_PRESETS), value=None, label="Negative prompt preset",
                                     elem_id="edit-negative-preset")
                c.update(follow_source=gr.Checkbox(True, label="Output size follows the (first) source image"),
                         num_images=gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images"))
                button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                c.update(settings_controls(studio, "edit", size_interactive=False))
            with gr.Column(scale=3):
                slider = gr.ImageSlider(label="Before / after", type="filepath", format="png", interactive=False,
                                        elem_id="edit-slider")
                gallery = gr.Gallery(label="Results (lossless PNG, settings embedded)", format="png", columns=2,
                                     height=260, interactive=False)
                with gr.Row():
                    used_seed = gr.Number(label="Used seed", precision=0, interactive=False)
                    again = gr.Button("Edit the result again ↺", elem_id="edit-again")
                info = gr.Markdown(label="Info", elem_id="edit-info")
                export = gr.File(label="Export: PNGs + JSON record (.zip)", interactive=False)
        selected = gr.State(0)
        outputs = [slider, gallery, used_seed, info, export]
        if examples:
            gr.Examples([[images, text] for images, text in examples], [c["images"], c["instruction"]], outputs,
                        label="Example edits",
                        example_labels=[f"{text}  ({' + '.join(Path(i).name for i in images)})"
                                        for images, text in examples],
                        fn=lambda images, text: endpoints["edit"](images, text, randomize_seed=False),
                        cache_examples=cache_examples, cache_mode="lazy", preprocess=False)
    wire_task(button.click, endpoints, "edit", c, outputs, "edit")
    # Raw payloads (preprocess=False) here and in the examples: gr.File.preprocess leaves an empty temp file per file.
    c["images"].change(upload_paths, c["images"], preview, queue=False, api_visibility="private", preprocess=False)
    c["follow_source"].change(lambda follow: [gr.update(interactive=not follow)] * 3, c["follow_source"],
                              [c["aspect"], c["width"], c["height"]], queue=False, api_visibility="private")
    preset.input(NEGATIVE_PRESETS.get, preset, c["negative_prompt"], queue=False, api_visibility="private")
    gallery.select(selected_index, None, selected, queue=False, api_visibility="private")
    again.click(first_image, [gallery, selected], c["images"], queue=False, api_visibility="private")
    return c

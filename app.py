"""DeepGen Studio: ``python app.py [--model NAME]`` serves Generate, Edit and Compare at http://127.0.0.1:7860.

The same file runs locally and on a ZeroGPU Space. Only the layout and one-line callbacks live here; the logic
(models, validation, tasks, exports, GPU durations) is in ``deepgen/studio.py``. API names are stable:
``/generate``, ``/edit``, ``/compare``, ``/seed_sweep``, ``/prompt_batch``.
"""

from __future__ import annotations

try:
    import spaces  # noqa: F401  ZeroGPU: must be imported before torch (deepgen imports torch)
except ImportError:
    spaces = None

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

import gradio as gr

from deepgen import studio as st
from deepgen.builtin import OFFICIAL_DIT, OFFICIAL_VLM

GPU_QUEUE = "gpu"  # every model-running event shares one queue, so one request holds the GPU at a time
# The only files served from outside Gradio's cache and the temp dir: the shipped example images (needed when the
# app is started from another working directory).
ALLOWED_PATHS = [str(st.EXAMPLES_DIR)]


def selected_index(evt: gr.SelectData) -> int:
    """The gallery item the user clicked (what "send to Edit" and "edit again" take)."""
    return evt.index


def build_demo(studio: st.Studio, cache_examples: bool = False) -> gr.Blocks:
    """The Blocks app for ``studio``. ``cache_examples`` caches example outputs lazily (on first click)."""
    prompts, edit_examples = st.load_examples()
    max_side = studio.max_side
    default_side = studio.default_side
    seed_of = lambda seed, randomize: None if randomize else seed  # noqa: E731

    def outputs_of(result: st.TaskResult) -> tuple:
        return result.gallery(), result.runs[0].seeds[0], info_of(result), str(result.zip_path)

    def info_of(result: st.TaskResult) -> str:
        run = result.runs[0]
        sizes = ", ".join(f"{w}x{h}" for w, h in dict.fromkeys(run.sizes))
        return (f"**{run.label}** · seeds {', '.join(map(str, run.seeds))} · {sizes} · {run.steps} steps · "
                f"guidance {run.guidance:g} · **{run.elapsed_s:.2f} s** · peak memory "
                f"{st.format_bytes(run.peak_memory_bytes)}")

    def matrix_outputs(result: st.TaskResult) -> tuple:
        return (result.gallery(), str(result.grid_path), result.summary(), result.runs[0].seeds[0],
                str(result.zip_path), result.record)

    # --- callbacks ----------------------------------------------------------------------------------------------
    # In the page, a Gradio validator checks each task's inputs before it is queued (bad input never waits for
    # the GPU, and the message shows on the field); the task validates again (API callers reach it directly, and
    # get a gr.Error) and runs on the GPU.

    def validate_generate(prompt, negative_prompt, width, height, steps, guidance, seed, randomize_seed, num_images):
        problems = studio.generate_problems(prompt, negative_prompt, width, height, steps, guidance,
                                            seed_of(seed, randomize_seed), num_images)
        return st.gradio_validation(problems, ["prompt", "negative_prompt", "width", "height", "steps", "guidance",
                                               "seed", "randomize_seed", "num_images"])

    def generate_seconds(prompt, negative_prompt, width, height, steps, guidance, seed, randomize_seed, num_images,
                         *_, **__):
        return st.estimate_gpu_seconds([studio.active], steps, width, height, num_images)

    @st.gpu_task(duration=generate_seconds)
    @st.user_errors
    def generate(prompt, negative_prompt, width, height, steps, guidance, seed, randomize_seed, num_images,
                 progress=gr.Progress()):
        return outputs_of(studio.generate(prompt, negative_prompt, width, height, steps, guidance,
                                          seed_of(seed, randomize_seed), num_images, st.gradio_progress(progress)))

    def validate_edit(images, instruction, negative_prompt, follow_source, width, height, steps, guidance, seed,
                      randomize_seed, num_images):
        problems = studio.edit_problems(images, instruction, negative_prompt, follow_source, width, height, steps,
                                        guidance, seed_of(seed, randomize_seed), num_images)
        return st.gradio_validation(problems, ["images", "instruction", "negative_prompt", "follow_source", "width",
                                               "height", "steps", "guidance", "seed", "randomize_seed",
                                               "num_images"])

    def edit_seconds(images, instruction, negative_prompt, follow_source, width, height, steps, guidance, seed,
                     randomize_seed, num_images, *_, **__):
        size = (None, None) if follow_source else (width, height)
        return st.estimate_gpu_seconds([studio.active], steps, *size, num_images,
                                       reference_images=len(st.upload_paths(images)))

    @st.gpu_task(duration=edit_seconds)
    @st.user_errors
    def edit(images, instruction, negative_prompt, follow_source, width, height, steps, guidance, seed,
             randomize_seed, num_images, progress=gr.Progress()):
        result = studio.edit(images, instruction, negative_prompt, follow_source, width, height, steps, guidance,
                             seed_of(seed, randomize_seed), num_images, st.gradio_progress(progress))
        before_after = (str(result.references[0]), str(result.files[0]))
        return (before_after, *outputs_of(result))

    def chosen(contestants) -> list[st.Contestant]:
        return [studio.manager.contestants[c] for c in contestants or [] if c in studio.manager.contestants]

    matrix_fields = ["contestants", "prompt", "negative_prompt", "images", "width", "height", "steps", "guidance",
                     "seed", "randomize_seed", "recommended_settings", "num_seeds"]

    def matrix_problems(contestants, prompt, negative_prompt, images, width, height, steps, guidance, seed,
                        randomize_seed, num_seeds) -> dict[str, str]:
        sweep_ok = isinstance(num_seeds, (int, float)) and 1 <= num_seeds <= st.MAX_SWEEP_SEEDS
        problems = studio.matrix_problems(contestants, prompt, negative_prompt, images, width, height, steps,
                                          guidance, seed_of(seed, randomize_seed),
                                          runs=int(num_seeds) if sweep_ok else 1)
        if not sweep_ok:
            problems["num_seeds"] = f"A seed sweep takes 1 to {st.MAX_SWEEP_SEEDS} seeds."
        return problems

    def validate_compare(contestants, prompt, negative_prompt, images, width, height, steps, guidance, seed,
                         randomize_seed, recommended_settings):
        problems = matrix_problems(contestants, prompt, negative_prompt, images, width, height, steps, guidance, seed,
                                   randomize_seed, 1)
        return st.gradio_validation(problems, matrix_fields[:-1])

    def validate_sweep(contestants, prompt, negative_prompt, images, width, height, steps, guidance, seed,
                       randomize_seed, recommended_settings, num_seeds):
        problems = matrix_problems(contestants, prompt, negative_prompt, images, width, height, steps, guidance, seed,
                                   randomize_seed, num_seeds)
        return st.gradio_validation(problems, matrix_fields)

    def compare_seconds(contestants, prompt, negative_prompt, images, width, height, steps, guidance, *_, **__):
        return st.estimate_gpu_seconds(chosen(contestants), steps, width, height, 1, len(st.upload_paths(images)),
                                       loaded=studio.manager.is_loaded)

    @st.gpu_task(duration=compare_seconds)
    @st.user_errors
    def compare(contestants, prompt, negative_prompt, images, width, height, steps, guidance, seed, randomize_seed,
                recommended_settings, progress=gr.Progress()):
        return matrix_outputs(studio.compare(contestants, prompt, negative_prompt, images, width, height, steps,
                                             guidance, seed_of(seed, randomize_seed), recommended_settings,
                                             st.gradio_progress(progress)))

    def sweep_seconds(contestants, prompt, negative_prompt, images, width, height, steps, guidance, seed,
                      randomize_seed, recommended_settings, num_seeds, *_, **__):
        return st.estimate_gpu_seconds(chosen(contestants), steps, width, height, num_seeds,
                                       len(st.upload_paths(images)), loaded=studio.manager.is_loaded)

    @st.gpu_task(duration=sweep_seconds)
    @st.user_errors
    def seed_sweep(contestants, prompt, negative_prompt, images, width, height, steps, guidance, seed,
                   randomize_seed, recommended_settings, num_seeds, progress=gr.Progress()):
        return matrix_outputs(studio.seed_sweep(contestants, prompt, negative_prompt, images, width, height, steps,
                                                guidance, seed_of(seed, randomize_seed), num_seeds,
                                                recommended_settings, st.gradio_progress(progress)))

    def prompt_count(prompt_file) -> int:
        try:
            return len(st.parse_prompt_file(prompt_file))
        except st.StudioInputError:
            return 1

    def validate_batch(contestants, prompt_file, negative_prompt, width, height, steps, guidance, seed,
                       randomize_seed, recommended_settings):
        try:
            runs, file_problem = len(st.parse_prompt_file(prompt_file)), None
        except st.StudioInputError as error:
            runs, file_problem = 1, str(error)
        problems = studio.matrix_problems(contestants, None, negative_prompt, None, width, height, steps, guidance,
                                          seed_of(seed, randomize_seed), prompt_required=False, runs=runs)
        if file_problem:
            problems["prompt_file"] = file_problem
        return st.gradio_validation(problems, ["contestants", "prompt_file", "negative_prompt", "width", "height",
                                               "steps", "guidance", "seed", "randomize_seed",
                                               "recommended_settings"])

    def batch_seconds(contestants, prompt_file, negative_prompt, width, height, steps, guidance, *_, **__):
        return st.estimate_gpu_seconds(chosen(contestants), steps, width, height, prompt_count(prompt_file),
                                       loaded=studio.manager.is_loaded)

    @st.gpu_task(duration=batch_seconds)
    @st.user_errors
    def prompt_batch(contestants, prompt_file, negative_prompt, width, height, steps, guidance, seed, randomize_seed,
                     recommended_settings, progress=gr.Progress()):
        return matrix_outputs(studio.prompt_batch(contestants, prompt_file, negative_prompt, width, height, steps,
                                                  guidance, seed_of(seed, randomize_seed), recommended_settings,
                                                  st.gradio_progress(progress)))

    def first_image(gallery, index) -> list[str]:
        paths = st.upload_paths(gallery)
        if not paths:
            raise gr.Error("There is no image to send yet; generate one first.", print_exception=False)
        return [paths[index if isinstance(index, int) and 0 <= index < len(paths) else 0]]

    # --- layout ---------------------------------------------------------------------------------------------------

    def settings(prefix: str, steps: int, size_interactive: bool = True):
        """Aspect/size, steps, guidance and seed controls shared by the tabs."""
        with gr.Accordion("Settings", open=True):
            with gr.Row():
                aspect = gr.Dropdown(list(st.ASPECT_PRESETS), value="1:1 square", label="Aspect ratio",
                                     interactive=size_interactive, elem_id=f"{prefix}-aspect")
                width = gr.Slider(st.MIN_SIDE, max_side, value=default_side, step=st.SIZE_STEP, label="Width",
                                  interactive=size_interactive, elem_id=f"{prefix}-width")
                height = gr.Slider(st.MIN_SIDE, max_side, value=default_side, step=st.SIZE_STEP,
                                   label="Height", interactive=size_interactive, elem_id=f"{prefix}-height")
            aspect.input(lambda preset, w, h: st.aspect_size(preset, max(w, h)), [aspect, width, height],
                         [width, height], queue=False, api_visibility="private")
            with gr.Row():
                steps_ = gr.Slider(1, st.MAX_STEPS, value=steps, step=1, label="Denoising steps",
                                   elem_id=f"{prefix}-steps")
                guidance = gr.Slider(0.0, st.MAX_GUIDANCE, value=studio.active.guidance, step=0.5,
                                     label="Guidance scale", elem_id=f"{prefix}-guidance")
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=st.MAX_SEED,
                                 elem_id=f"{prefix}-seed")
                randomize = gr.Checkbox(True, label="Randomize seed", elem_id=f"{prefix}-randomize")
        return aspect, width, height, steps_, guidance, seed, randomize

    with gr.Blocks(title="DeepGen Studio", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# DeepGen Studio\nDeepGen 1.0 image generation and editing, compared side by side.")
        gr.Markdown(studio.model_banner(), elem_id="model-banner")
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=2):
                        g_prompt = gr.Textbox(label="Prompt", lines=3, max_length=st.MAX_PROMPT_CHARS,
                                              placeholder="a small green triangle at the top",
                                              elem_id="generate-prompt")
                        g_negative = gr.Textbox(label="Negative prompt", max_length=st.MAX_PROMPT_CHARS)
                        g_count = gr.Slider(1, st.MAX_IMAGES, value=1, step=1, label="Images")
                        g_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                        (_, g_width, g_height, g_steps, g_guidance, g_seed,
                         g_randomize) = settings("generate", studio.active.steps)
                    with gr.Column(scale=3):
                        g_gallery = gr.Gallery(label="Images (lossless PNG, settings embedded)", format="png",
                                               columns=2, height=520, interactive=False,
                                               elem_id="generate-gallery")
                        with gr.Row():
                            g_used_seed = gr.Number(label="Used seed", precision=0, interactive=False)
                            g_send = gr.Button("Send to Edit ➜", elem_id="send-to-edit")
                        g_info = gr.Markdown(label="Info", elem_id="generate-info")
                        g_zip = gr.File(label="Export: PNGs + JSON record (.zip)", interactive=False)
                g_selected = gr.State(0)
                g_inputs = [g_prompt, g_negative, g_width, g_height, g_steps, g_guidance, g_seed, g_randomize,
                            g_count]
                g_outputs = [g_gallery, g_used_seed, g_info, g_zip]
                if prompts:
                    gr.Examples([[p] for p in prompts], [g_prompt], g_outputs, label="Example prompts",
                                fn=lambda prompt: generate(prompt, "", default_side, default_side,
                                                           studio.active.steps, studio.active.guidance, 0, False, 1),
                                cache_examples=cache_examples, cache_mode="lazy")

            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    with gr.Column(scale=2):
                        e_images = gr.File(label=f"Images to edit (1-{st.MAX_REFERENCE_IMAGES})", file_count="multiple",
                                           file_types=["image"], elem_id="edit-images")
                        e_preview = gr.Gallery(label="References", columns=4, height=140, interactive=False,
                                               elem_id="edit-preview")
                        e_instruction = gr.Textbox(label="Instruction", lines=2, max_length=st.MAX_PROMPT_CHARS,
                                                   placeholder="make the circle blue", elem_id="edit-instruction")
                        e_negative = gr.Textbox(label="Negative prompt", max_length=st.MAX_PROMPT_CHARS)
                        e_follow = gr.Checkbox(True, label="Output size follows the (first) source image")
                        e_count = gr.Slider(1, st.MAX_IMAGES, value=1, step=1, label="Images")
                        e_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                        (e_aspect, e_width, e_height, e_steps, e_guidance, e_seed,
                         e_randomize) = settings("edit", studio.active.steps, size_interactive=False)
                    with gr.Column(scale=3):
                        e_slider = gr.ImageSlider(label="Before / after", type="filepath", format="png",
                                                  interactive=False, elem_id="edit-slider")
                        e_gallery = gr.Gallery(label="Results (lossless PNG, settings embedded)", format="png",
                                               columns=2, height=260, interactive=False)
                        with gr.Row():
                            e_used_seed = gr.Number(label="Used seed", precision=0, interactive=False)
                            e_again = gr.Button("Edit the result again ↺", elem_id="edit-again")
                        e_info = gr.Markdown(label="Info", elem_id="edit-info")
                        e_zip = gr.File(label="Export: PNGs + JSON record (.zip)", interactive=False)
                e_selected = gr.State(0)
                e_inputs = [e_images, e_instruction, e_negative, e_follow, e_width, e_height, e_steps, e_guidance,
                            e_seed, e_randomize, e_count]
                e_outputs = [e_slider, e_gallery, e_used_seed, e_info, e_zip]
                if edit_examples:
                    gr.Examples([[images, text] for images, text in edit_examples], [e_images, e_instruction],
                                e_outputs, label="Example edits",
                                example_labels=[f"{text}  ({' + '.join(Path(i).name for i in images)})"
                                                for images, text in edit_examples],
                                fn=lambda images, text: edit(images, text, "", True, default_side, default_side,
                                                             studio.active.steps, studio.active.guidance, 0, False,
                                                             1),
                                cache_examples=cache_examples, cache_mode="lazy")

            with gr.Tab("Compare", id="compare"):
                with gr.Accordion("Contestants (edit contestants.yaml to change them)", open=False):
                    gr.Markdown(studio.contestants_table(), elem_id="contestants-table")
                c_contestants = gr.CheckboxGroup(studio.contestant_choices(), value=studio.default_contestants(),
                                                 label=f"Contestants ({st.MIN_CONTESTANTS}-{st.MAX_CONTESTANTS})",
                                                 elem_id="compare-contestants")
                with gr.Row():
                    with gr.Column(scale=2):
                        c_prompt = gr.Textbox(label="Prompt or edit instruction", lines=2,
                                              max_length=st.MAX_PROMPT_CHARS, elem_id="compare-prompt")
                        c_negative = gr.Textbox(label="Negative prompt", max_length=st.MAX_PROMPT_CHARS)
                        c_images = gr.File(label="Optional source image(s): compares edits", file_count="multiple",
                                           file_types=["image"])
                        c_recommended = gr.Checkbox(False, label="Use each model's recommended steps and guidance")
                        (_, c_width, c_height, c_steps, c_guidance, c_seed,
                         c_randomize) = settings("compare", studio.active.steps)
                    with gr.Column(scale=3):
                        with gr.Tabs():
                            with gr.Tab("Side by side"):
                                c_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
                            with gr.Tab("Seed sweep"):
                                c_num_seeds = gr.Slider(1, st.MAX_SWEEP_SEEDS, value=4, step=1,
                                                        label="Seeds (seed, seed+1, …)")
                                c_sweep = gr.Button("Run seed sweep", variant="primary")
                            with gr.Tab("Prompt list"):
                                c_prompt_file = gr.File(label="Prompt list: .txt (one a line) or .jsonl",
                                                        file_types=list(st.PROMPT_FILE_SUFFIXES))
                                c_batch = gr.Button("Run prompt list", variant="primary")
                        c_gallery = gr.Gallery(label="Side by side", format="png", columns=4, height=360,
                                               interactive=False, elem_id="compare-gallery")
                        c_grid = gr.Image(label="Grid", type="filepath", format="png", height=360, interactive=False)
                        c_summary = gr.Markdown(label="Summary", elem_id="compare-summary")
                        c_used_seed = gr.Number(label="Used seed", precision=0, interactive=False)
                        c_zip = gr.File(label="Export: PNGs + JSON record (.zip)", interactive=False)
                        with gr.Accordion("JSON record", open=False):
                            c_record = gr.JSON(label="Record")
                c_inputs = [c_contestants, c_prompt, c_negative, c_images, c_width, c_height, c_steps, c_guidance,
                            c_seed, c_randomize, c_recommended]
                c_outputs = [c_gallery, c_grid, c_summary, c_used_seed, c_zip, c_record]

        # --- events -------------------------------------------------------------------------------------------------
        def on_run(trigger, validator, task, inputs, outputs, api_name):
            """trigger -> validator (messages on the fields) -> task on the shared GPU queue, under ``api_name``."""
            checked = trigger(lambda *_: None, inputs, None, validator=validator, api_visibility="private",
                              show_progress="hidden", concurrency_limit=None)
            checked.success(task, inputs, outputs, api_name=api_name, concurrency_limit=1, concurrency_id=GPU_QUEUE,
                            api_visibility="public" if api_name else "private")

        b_inputs = [c_contestants, c_prompt_file, c_negative, c_width, c_height, c_steps, c_guidance, c_seed,
                    c_randomize, c_recommended]
        on_run(g_button.click, validate_generate, generate, g_inputs, g_outputs, "generate")
        on_run(e_button.click, validate_edit, edit, e_inputs, e_outputs, "edit")
        on_run(c_button.click, validate_compare, compare, c_inputs, c_outputs, "compare")
        on_run(c_sweep.click, validate_sweep, seed_sweep, [*c_inputs, c_num_seeds], c_outputs, "seed_sweep")
        on_run(c_batch.click, validate_batch, prompt_batch, b_inputs, c_outputs, "prompt_batch")
        on_run(g_prompt.submit, validate_generate, generate, g_inputs, g_outputs, None)
        g_gallery.select(selected_index, None, g_selected, queue=False, api_visibility="private")
        g_send.click(lambda gallery, index: (first_image(gallery, index), gr.Tabs(selected="edit")),
                     [g_gallery, g_selected], [e_images, tabs], queue=False, api_visibility="private")
        e_images.change(st.upload_paths, e_images, e_preview, queue=False, api_visibility="private")
        e_follow.change(lambda follow: [gr.update(interactive=not follow)] * 3, e_follow,
                        [e_aspect, e_width, e_height], queue=False, api_visibility="private")
        e_gallery.select(selected_index, None, e_selected, queue=False, api_visibility="private")
        e_again.click(first_image, [e_gallery, e_selected], e_images, queue=False, api_visibility="private")
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DeepGen Studio: generate, edit and compare images in a browser.")
    parser.add_argument("--model", default=os.environ.get("DEEPGEN_MODEL"),
                        help="contestant id, built-in name, folder, hub id or native checkpoint "
                             "(default: $DEEPGEN_MODEL, else the best built-in model)")
    parser.add_argument("--vlm", default=os.environ.get("DEEPGEN_VLM", OFFICIAL_VLM),
                        help="base VLM for a native checkpoint")
    parser.add_argument("--dit", default=os.environ.get("DEEPGEN_DIT", OFFICIAL_DIT),
                        help="base DiT/VAE/scheduler for a native checkpoint")
    parser.add_argument("--registry", default=os.environ.get("DEEPGEN_REGISTRY", str(st.DEFAULT_REGISTRY)),
                        help="contestants file for the Compare tab")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--queue-size", type=int, default=64, help="requests waiting at most; more are refused")
    parser.add_argument("--cache-examples", action=argparse.BooleanOptionalAction, default=st.on_spaces(),
                        help="cache example outputs lazily (default: on a Space)")
    return parser


def create_studio(args: argparse.Namespace) -> st.Studio:
    return st.Studio.create(model=args.model, registry=args.registry, vlm=args.vlm, dit=args.dit,
                            device=args.device)


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    studio = create_studio(args)
    demo = build_demo(studio, cache_examples=args.cache_examples)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # `kill` also runs the clean-up below
    try:
        demo.launch(server_name=args.host, server_port=args.port, max_file_size=st.MAX_UPLOAD_BYTES,
                    show_error=False, allowed_paths=ALLOWED_PATHS, theme=gr.themes.Soft())
    finally:
        studio.close()


if __name__ == "__main__":
    main()

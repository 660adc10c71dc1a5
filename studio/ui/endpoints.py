"""The five tasks as Gradio event functions: the API (``/generate`` …) and the MCP tools.

Each function's parameter names are the API's input names (:data:`studio.settings.INPUTS`) and its docstring is
what MCP clients read about the tool and each argument, so keep one line per argument. The bodies only turn the
named inputs into a :class:`~studio.settings.Settings` and the result into the outputs; the Studio does the rest.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import gradio as gr

from deepgen.memory import format_bytes

from ..records import TaskResult
from ..settings import INPUTS, Settings
from ..tasks import Studio
from ..zerogpu import gpu_task, gradio_progress, gradio_validation, user_errors

GPU_QUEUE = "gpu"  # every model-running event shares one queue, so one request holds the GPU at a time


def settings_of(task: str, values: tuple, named: Optional[dict] = None) -> Settings:
    """Settings from an event's positional values (in :data:`INPUTS` order) and named ones."""
    inputs = dict(zip(INPUTS[task], values))
    inputs.update({k: v for k, v in (named or {}).items() if k in INPUTS[task]})
    return Settings.from_inputs(task, **inputs)


def image_outputs(result: TaskResult) -> tuple:
    """Generate's outputs (Edit adds its before/after pair): gallery, used seed, info line, export zip."""
    run = result.runs[0]
    sizes = ", ".join(f"{w}x{h}" for w, h in dict.fromkeys(run.sizes))
    info = (f"**{run.label}** · seeds {', '.join(map(str, run.seeds))} · {sizes} · {run.steps} steps · "
            f"guidance {run.guidance:g} · **{run.elapsed_s:.2f} s** · peak memory "
            f"{format_bytes(run.peak_memory_bytes)}")
    return result.gallery(), run.seeds[0], info, str(result.zip_path)


def matrix_outputs(result: TaskResult) -> tuple:
    """Compare's outputs: gallery, grid, summary table, used seed, export zip, JSON record."""
    return (result.gallery(), str(result.grid_path), result.summary(), result.runs[0].seeds[0],
            str(result.zip_path), result.record)


class Endpoints:
    """The Gradio functions of one :class:`Studio`: ``endpoints[task]`` runs a task, ``validator(task)`` checks
    its inputs in the page before it is queued (bad input never waits for the GPU)."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.functions: dict[str, Callable] = {}
        for make in (_generate, _edit, _compare, _seed_sweep, _prompt_batch):
            fn = make(self)
            self.functions[fn.__name__] = gpu_task(duration=self._duration(fn.__name__))(user_errors(fn))

    def __getitem__(self, task: str) -> Callable:
        return self.functions[task]

    def run(self, task: str, arguments: dict[str, Any]) -> TaskResult:
        """Run ``task`` with a task function's arguments (its inputs and ``progress``)."""
        settings = Settings.from_inputs(task, **{name: arguments[name] for name in INPUTS[task]})
        return self.studio.run(settings, gradio_progress(arguments["progress"]))

    def validator(self, task: str) -> Callable[..., list[dict]]:
        def validate(*values: Any) -> list[dict]:
            return gradio_validation(self.studio.problems(settings_of(task, values)), INPUTS[task])

        return validate

    def _duration(self, task: str) -> Callable[..., int]:
        def seconds(*values: Any, **named: Any) -> int:
            return self.studio.gpu_seconds(settings_of(task, values, named))

        return seconds


# The task functions; their defaults are the page's, so the shortest API and MCP calls work.


def _generate(endpoints: Endpoints) -> Callable:
    active, side = endpoints.studio.active, endpoints.studio.default_side  # the page's defaults

    def generate(prompt: str, negative_prompt: str = "", width: int = side, height: int = side,
                 steps: int = active.steps, guidance: float = active.guidance, seed: int = 0,
                 randomize_seed: bool = True, num_images: int = 1, progress: Any = gr.Progress()) -> tuple:
        """Generate images from a text prompt with the running DeepGen model (lossless PNGs, settings embedded).

        Args:
            prompt: what the image should show, e.g. "a red circle above a blue square".
            negative_prompt: what the image should not show; empty for none.
            width: output width in pixels, a multiple of 16 up to the model's limit.
            height: output height in pixels, a multiple of 16 up to the model's limit.
            steps: denoising steps (1-100); more is slower and usually cleaner.
            guidance: classifier-free guidance scale (0-20); higher follows the prompt more literally.
            seed: the first random seed; image k uses seed+k. Ignored when randomize_seed is true.
            randomize_seed: draw a fresh seed (reported in the outputs) instead of using seed.
            num_images: how many images to make (1-4), with consecutive seeds.

        Returns:
            The images (gallery), the seed used, a Markdown info line, and a zip of the PNGs with a JSON record.
        """
        return image_outputs(endpoints.run("generate", dict(locals())))

    return generate


def _edit(endpoints: Endpoints) -> Callable:
    active, side = endpoints.studio.active, endpoints.studio.default_side  # the page's defaults

    def edit(images: list, instruction: str, negative_prompt: str = "", follow_source: bool = True,
             width: int = side, height: int = side, steps: int = active.steps, guidance: float = active.guidance,
             seed: int = 0, randomize_seed: bool = True, num_images: int = 1, progress: Any = gr.Progress()) -> tuple:
        """Edit one to four images with an instruction, using the running DeepGen model.

        Args:
            images: the image files to edit (1-4); the first one is the main source.
            instruction: the edit to make, e.g. "make the circle blue".
            negative_prompt: what the result should not show; empty for none.
            follow_source: the output keeps the first image's aspect ratio (width and height are then ignored).
            width: output width in pixels when follow_source is false, a multiple of 16.
            height: output height in pixels when follow_source is false, a multiple of 16.
            steps: denoising steps (1-100).
            guidance: classifier-free guidance scale (0-20).
            seed: the first random seed; image k uses seed+k. Ignored when randomize_seed is true.
            randomize_seed: draw a fresh seed (reported in the outputs) instead of using seed.
            num_images: how many edited images to make (1-4), with consecutive seeds.

        Returns:
            A (before, after) image pair, the edited images, the seed used, an info line and a zip export.
        """
        result = endpoints.run("edit", dict(locals()))
        return ((str(result.references[0]), str(result.files[0])), *image_outputs(result))

    return edit


def _compare(endpoints: Endpoints) -> Callable:
    active, side = endpoints.studio.active, endpoints.studio.default_side  # the page's defaults

    def compare(contestants: list[str], prompt: str, negative_prompt: str = "", images: Optional[list] = None,
                width: int = side, height: int = side, steps: int = active.steps,
                guidance: float = active.guidance, seed: int = 0, randomize_seed: bool = True,
                recommended_settings: bool = False, progress: Any = gr.Progress()) -> tuple:
        """Run one prompt with the same seed and settings on 2-4 models side by side, with time and peak memory.

        Args:
            contestants: 2-4 contestant ids from the app's contestants.yaml, e.g. ["deepgen-nano", "sd3.5-medium"].
            prompt: the prompt, or the edit instruction when images are given.
            negative_prompt: what the images should not show; empty for none.
            images: optional source images (1-4): compare edits instead of text-to-image.
            width: output width in pixels, a multiple of 16.
            height: output height in pixels, a multiple of 16.
            steps: denoising steps (1-100), the same for every model unless recommended_settings is true.
            guidance: classifier-free guidance scale (0-20), the same for every model unless recommended_settings.
            seed: the random seed every model uses. Ignored when randomize_seed is true.
            randomize_seed: draw a fresh seed (reported in the outputs) instead of using seed.
            recommended_settings: each model uses its own recommended steps and guidance instead.

        Returns:
            The images (gallery), a labelled grid, a Markdown summary, the seed, a zip export and the JSON record.
        """
        return matrix_outputs(endpoints.run("compare", dict(locals())))

    return compare


def _seed_sweep(endpoints: Endpoints) -> Callable:
    active, side = endpoints.studio.active, endpoints.studio.default_side  # the page's defaults

    def seed_sweep(contestants: list[str], prompt: str, negative_prompt: str = "", images: Optional[list] = None,
                   width: int = side, height: int = side, steps: int = active.steps,
                   guidance: float = active.guidance, seed: int = 0, randomize_seed: bool = True,
                   recommended_settings: bool = False, num_seeds: int = 4, progress: Any = gr.Progress()) -> tuple:
        """Run one prompt on 2-4 models with seeds seed, seed+1, …: a grid with one row per seed.

        Args:
            contestants: 2-4 contestant ids from the app's contestants.yaml.
            prompt: the prompt, or the edit instruction when images are given.
            negative_prompt: what the images should not show; empty for none.
            images: optional source images (1-4): sweep edits instead of text-to-image.
            width: output width in pixels, a multiple of 16.
            height: output height in pixels, a multiple of 16.
            steps: denoising steps (1-100).
            guidance: classifier-free guidance scale (0-20).
            seed: the first seed of the sweep. Ignored when randomize_seed is true.
            randomize_seed: draw a fresh first seed (reported in the outputs) instead of using seed.
            recommended_settings: each model uses its own recommended steps and guidance instead.
            num_seeds: how many consecutive seeds to run (1-8).

        Returns:
            The images (gallery), a labelled grid, a Markdown summary, the first seed, a zip export and the record.
        """
        return matrix_outputs(endpoints.run("seed_sweep", dict(locals())))

    return seed_sweep


def _prompt_batch(endpoints: Endpoints) -> Callable:
    active, side = endpoints.studio.active, endpoints.studio.default_side  # the page's defaults

    def prompt_batch(contestants: list[str], prompt_file: Any, negative_prompt: str = "", width: int = side,
                     height: int = side, steps: int = active.steps, guidance: float = active.guidance,
                     seed: int = 0, randomize_seed: bool = True, recommended_settings: bool = False,
                     progress: Any = gr.Progress()) -> tuple:
        """Run every prompt of a prompt list on 2-4 models: a grid with one row per prompt.

        Args:
            contestants: 2-4 contestant ids from the app's contestants.yaml.
            prompt_file: a .txt file (one prompt a line) or .jsonl file (lines like {"prompt": "...", "seed": 1}).
            negative_prompt: the negative prompt for lines without their own; empty for none.
            width: output width in pixels, a multiple of 16.
            height: output height in pixels, a multiple of 16.
            steps: denoising steps (1-100).
            guidance: classifier-free guidance scale (0-20).
            seed: the seed for lines without their own. Ignored when randomize_seed is true.
            randomize_seed: draw a fresh seed (reported in the outputs) instead of using seed.
            recommended_settings: each model uses its own recommended steps and guidance instead.

        Returns:
            The images (gallery), a labelled grid, a Markdown summary, the seed, a zip export and the JSON record.
        """
        return matrix_outputs(endpoints.run("prompt_batch", dict(locals())))

    return prompt_batch

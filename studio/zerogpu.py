"""ZeroGPU and Gradio glue: GPU durations, ``spaces.GPU`` where it exists, errors people can read, progress.

:func:`gpu_task` is ``spaces.GPU(duration=...)`` on a ZeroGPU Space and a no-op elsewhere, with durations from
:func:`estimate_gpu_seconds`; :func:`user_errors` turns failures into ``gr.Error`` so no traceback reaches the page.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any, Callable, Sequence

import gradio as gr
import torch

from deepgen.contestants import Contestant

from .inputs import parse_prompt_file, upload_paths
from .models import ModelManager, free_memory
from .records import ProgressFn
from .settings import DEFAULT_SIZE, MAX_REFERENCE_IMAGES, Settings, StudioInputError

try:
    import spaces
except ImportError:  # not on a Space: @gpu_task is a no-op
    spaces = None

logger = logging.getLogger(__name__)

# ZeroGPU duration model: seconds = overhead + sum over contestants of load + steps x images x per-step cost,
# scaled by megapixels and reference tokens, times a safety margin, clamped to what a Space may ask for.
GPU_OVERHEAD_S = 5.0
GPU_SAFETY = 1.25
MIN_GPU_SECONDS, MAX_GPU_SECONDS = 10, 300

GENERIC_ERROR = ("Something went wrong while running this request. It has been logged on the server; "
                 "try again, or change the settings.")


def estimate_gpu_seconds(contestants: Sequence[Contestant], steps: Any, width: Any, height: Any,
                         images_per_contestant: Any = 1, reference_images: int = 0,
                         loaded: Callable[[str], bool] = lambda cid: True) -> int:
    """Seconds of GPU to ask ZeroGPU for: per contestant, its per-step cost (at 1024x1024) x steps x images,
    scaled by megapixels and by the reference-image tokens an edit adds, plus loading time when not loaded.

    Bad inputs (caught later by validation) fall back to the minimum.
    """
    try:
        steps, images = int(steps), int(images_per_contestant)
        megapixels = max(int(width or DEFAULT_SIZE) * int(height or DEFAULT_SIZE) / 1024**2, 0.25)
    except (TypeError, ValueError):
        return MIN_GPU_SECONDS
    token_factor = 1 + min(int(reference_images), MAX_REFERENCE_IMAGES)
    seconds = GPU_OVERHEAD_S
    for c in contestants:
        seconds += c.gpu_seconds_per_step * steps * images * megapixels * token_factor
        seconds += 0 if loaded(c.id) else c.gpu_load_seconds
    return int(min(MAX_GPU_SECONDS, max(MIN_GPU_SECONDS, math.ceil(seconds * GPU_SAFETY))))


def request_gpu_seconds(settings: Settings, manager: ModelManager) -> int:
    """:func:`estimate_gpu_seconds` for one request (before validation: unknown contestants are skipped)."""
    if settings.task in ("generate", "edit"):
        contestants = [manager.active]
    else:
        contestants = manager.chosen(settings.contestants)
    images = settings.count if settings.task in ("generate", "edit", "seed_sweep") else 1
    if settings.task == "prompt_batch":
        try:
            images = len(parse_prompt_file(settings.prompt_file))
        except StudioInputError:
            images = 1
    width, height = (None, None) if settings.follow_source else (settings.width, settings.height)
    return estimate_gpu_seconds(contestants, settings.steps, width, height, images, len(upload_paths(settings.images)),
                                loaded=manager.is_loaded)


def gpu_task(duration: Callable[..., int]) -> Callable[[Callable], Callable]:
    """``@spaces.GPU(duration=duration)`` on a ZeroGPU Space; returns the function unchanged elsewhere.

    ``duration`` is called with the decorated function's arguments and returns seconds.
    """
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def user_errors(fn: Callable) -> Callable:
    """Turn a handler's failures into ``gr.Error``s with a clear message and no traceback on the page:
    input problems as they are, out-of-memory with advice, anything else generic (logged with its traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as error:  # StudioInputError and the library's own input errors
            logger.info("refused request: %s", error)
            raise gr.Error(str(error).splitlines()[0][:500], print_exception=False) from None
        except torch.cuda.OutOfMemoryError:
            free_memory()
            logger.exception("out of memory")
            raise gr.Error("The server ran out of memory for this request; try a smaller size or fewer images.",
                           print_exception=False) from None
        except Exception:
            logger.exception("request failed")
            raise gr.Error(GENERIC_ERROR, print_exception=False) from None

    return wrapper


def gradio_validation(problems: dict[str, str], names: Sequence[str]) -> list[dict]:
    """``gr.validate`` results in input order for a Gradio ``validator`` (``problems`` keyed by input name)."""
    return [gr.validate(name not in problems, problems.get(name, "")) for name in names]


def gradio_progress(progress: Any) -> ProgressFn:
    """Adapt a ``gr.Progress`` to :data:`~studio.records.ProgressFn` (denoising steps done / total)."""

    def report(done: int, total: int, description: str) -> None:
        progress((done, total), desc=description, unit="steps")

    return report


def on_spaces() -> bool:
    """Running on a Hugging Face Space (``SPACE_ID`` is set there)."""
    return bool(os.environ.get("SPACE_ID"))

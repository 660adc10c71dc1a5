"""ZeroGPU and Gradio glue: GPU durations, ``spaces.GPU`` where it exists, errors people can read, progress.

:func:`gpu_task` is ``spaces.GPU(duration=...)`` on a ZeroGPU Space and a no-op elsewhere, with durations from
:meth:`studio.tasks.Studio.gpu_seconds` (over :func:`work_seconds`); :func:`user_errors` turns failures into
``gr.Error`` so no traceback reaches the page.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any, Callable, Optional, Sequence

import gradio as gr
import torch

from deepgen.contestants import Contestant

from .models import free_memory
from .records import ProgressFn
from .settings import DEFAULT_SIZE, MAX_REFERENCE_IMAGES

try:
    import spaces
except ImportError:  # not on a Space: @gpu_task is a no-op
    spaces = None

logger = logging.getLogger(__name__)

# ZeroGPU duration model: seconds = overhead + sum over jobs of steps x images x per-step cost, scaled by megapixels
# and reference tokens, + one load per contestant not loaded, times a safety margin, clamped to what a Space may ask
# for. A request whose denoising alone needs more than MAX_GPU_SECONDS is refused (Studio.problems).
GPU_OVERHEAD_S = 5.0
GPU_SAFETY = 1.25
MIN_GPU_SECONDS, MAX_GPU_SECONDS = 10, 300

GENERIC_ERROR = ("Something went wrong while running this request. It has been logged on the server; "
                 "try again, or change the settings.")


def work_seconds(work: Sequence[tuple[Contestant, int, int]], width: Optional[int], height: Optional[int],
                 reference_images: int = 0, loaded: Optional[Callable[[str], bool]] = None) -> float:
    """Unclamped GPU seconds for ``work``, (contestant, steps, images) triples: per triple the contestant's
    per-step cost (at 1024x1024) x steps x images, scaled by megapixels and by the reference-image tokens an edit
    adds; with ``loaded``, plus one load for each distinct contestant that is not loaded (the Studio runs the loaded
    ones first and loads each other one once); then the overhead and the safety margin."""
    megapixels = max((width or DEFAULT_SIZE) * (height or DEFAULT_SIZE) / 1024**2, 0.25)
    token_factor = 1 + min(reference_images, MAX_REFERENCE_IMAGES)
    seconds = GPU_OVERHEAD_S + sum(c.gpu_seconds_per_step * steps * images * megapixels * token_factor
                                   for c, steps, images in work)
    if loaded is not None:
        contestants = {c.id: c for c, _, _ in work}
        seconds += sum(c.gpu_load_seconds for cid, c in contestants.items() if not loaded(cid))
    return seconds * GPU_SAFETY


def clamp_gpu_seconds(seconds: float) -> int:
    """What a Space may ask ZeroGPU for."""
    return int(min(MAX_GPU_SECONDS, max(MIN_GPU_SECONDS, math.ceil(seconds))))


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

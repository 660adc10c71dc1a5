"""ZeroGPU durations and errors for people (``studio/zerogpu.py``)."""

from __future__ import annotations

import gradio as gr
import pytest
import torch

from deepgen.contestants import Contestant
from studio import zerogpu
from studio.settings import StudioInputError


def test_gpu_duration_grows_with_the_work_and_is_clamped():
    c = Contestant(id="m", label="M", kind="deepgen", source="tiny", gpu_seconds_per_step=0.5, gpu_load_seconds=30)

    def estimate(contestants, steps, width, height, images, reference_images=0, loaded=lambda cid: True):
        work = [(contestant, steps, images) for contestant in contestants]
        return zerogpu.clamp_gpu_seconds(zerogpu.work_seconds(work, width, height, reference_images, loaded))

    base = estimate([c], 20, 1024, 1024, 1)
    assert zerogpu.MIN_GPU_SECONDS <= base < estimate([c], 40, 1024, 1024, 1)
    assert base < estimate([c], 20, 1024, 1024, 2) < estimate([c, c], 20, 1024, 1024, 2)
    assert base < estimate([c], 20, 1024, 1024, 1, reference_images=1)
    assert base < estimate([c], 20, 1024, 1024, 1, loaded=lambda cid: False)
    assert estimate([c] * 4, 100, 2048, 2048, 4) == zerogpu.MAX_GPU_SECONDS


def test_user_errors_show_clear_messages_and_hide_tracebacks():
    def fails(error):
        @zerogpu.user_errors
        def handler():
            raise error
        with pytest.raises(gr.Error) as caught:
            handler()
        return caught.value.message

    assert fails(StudioInputError("The prompt is empty.")) == "The prompt is empty."
    assert "out of memory" in fails(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    secret = fails(RuntimeError("/srv/secret/path.py line 3"))
    assert secret == zerogpu.GENERIC_ERROR and "secret" not in secret


def test_gpu_task_is_a_no_op_without_spaces():
    fn = lambda x: x  # noqa: E731
    assert zerogpu.spaces is not None or zerogpu.gpu_task(duration=lambda *a: 10)(fn) is fn

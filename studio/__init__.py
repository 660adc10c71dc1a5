"""DeepGen Studio, the Gradio app around the ``deepgen`` library (``python app.py``).

``deepgen`` never imports this package. Modules, from the bottom up:

* :mod:`studio.settings`: the limits, and :class:`~studio.settings.Settings`, one request's settings from the page
  (or the API) to the pipeline, validated in one place;
* :mod:`studio.inputs`: uploads, reference images, prompt lists and the shipped examples;
* :mod:`studio.models`: the model manager (contestants loaded on demand, unavailable ones reported);
* :mod:`studio.records`: runs, PNG metadata, grids, the JSON record and the zip export;
* :mod:`studio.tasks`: :class:`~studio.tasks.Studio`, the five tasks over one matrix of runs;
* :mod:`studio.zerogpu`: ``spaces.GPU`` durations, errors for people, progress glue;
* :mod:`studio.ui`: the Gradio layout, one builder per tab, and the API/MCP endpoints.

The app's files (``contestants.yaml``, ``assets/examples/``) are found beside this package, i.e. beside
``app.py``, or from arguments and environment variables.
"""

from __future__ import annotations

# ZeroGPU patches CUDA when `spaces` is imported, which must happen before torch is imported.
try:
    import spaces  # noqa: F401
except ImportError:  # not on a Space: studio.zerogpu.gpu_task is a no-op
    pass

from pathlib import Path

APP_ROOT = Path(__file__).resolve().parent.parent  # the folder holding app.py and this package
DEFAULT_REGISTRY = APP_ROOT / "contestants.yaml"
EXAMPLES_DIR = APP_ROOT / "assets" / "examples"

"""DeepGen Studio: the DeepGen 1.0 unified image generation and editing model (arXiv 2602.12205).

Names are imported lazily, so that torch-free modules (``deepgen.nano.world``, ``deepgen.nano.shapeeval``) load fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConnectorConfig": "config",
    "DeepGenConfig": "config",
    "LoraSettings": "config",
    "get_preset": "config",
    "load_image": "image_processing",
    "KontextSD3Transformer2DModel": "kontext",
    "DeepGenModel": "model",
    "DeepGenPipeline": "pipeline",
    "DeepGenPipelineOutput": "pipeline",
    "StackedChannelBridge": "scb",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'deepgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

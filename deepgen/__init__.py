"""DeepGen Studio: the DeepGen 1.0 unified image generation and editing model (arXiv 2602.12205)."""

from .config import ConnectorConfig, DeepGenConfig, LoraSettings, get_preset
from .image_processing import load_image
from .kontext import KontextSD3Transformer2DModel
from .model import DeepGenModel
from .pipeline import DeepGenPipeline, DeepGenPipelineOutput
from .scb import StackedChannelBridge

__all__ = [
    "ConnectorConfig",
    "DeepGenConfig",
    "DeepGenModel",
    "DeepGenPipeline",
    "DeepGenPipelineOutput",
    "KontextSD3Transformer2DModel",
    "LoraSettings",
    "StackedChannelBridge",
    "get_preset",
    "load_image",
]

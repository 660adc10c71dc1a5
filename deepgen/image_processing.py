"""Image validation, conversion, sizing rules and lossless PNG output shared by the pipeline, the CLI and the app."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps
from PIL.PngImagePlugin import PngInfo

from .files import atomic_write

MAX_INPUT_PIXELS = 4096 * 4096  # larger uploads are refused before decoding (decompression bombs)
MIN_INPUT_SIDE = 16
ImageInput = Union[Image.Image, np.ndarray]


def load_image(path: Union[str, Path]) -> Image.Image:
    """Open an image file as RGB, refusing unreadable files and decompression bombs with a ValueError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_image_size(image.size)
                image.load()
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"{path} is too large to decode safely ({error}).") from error
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{path} is not a readable image file: {error}") from error


def check_image_size(size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(
            f"Image of {width}x{height} pixels exceeds the limit of {MAX_INPUT_PIXELS} pixels "
            "(4096x4096); downscale it first."
        )
    if min(width, height) < MIN_INPUT_SIDE:
        raise ValueError(f"Image of {width}x{height} pixels is too small; both sides must be >= {MIN_INPUT_SIDE}.")


def to_rgb(image: ImageInput) -> Image.Image:
    """Validate an input image (PIL or HxWx3/HxW uint8 array) and return it as an RGB PIL image.

    Transparent images are composited on white; 16-bit and float modes are refused because their value range
    is ambiguous.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(
                f"A numpy image must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4); got {image.dtype} "
                f"{tuple(image.shape)}."
            )
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"Images must be PIL.Image.Image or uint8 numpy arrays, got {type(image).__name__}. "
            "Load files with deepgen.load_image(path)."
        )
    check_image_size(image.size)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise ValueError(f"Image mode {image.mode!r} (16-bit or float) is not supported; convert it to RGB 8-bit.")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_size(width: int, height: int, max_side: int, multiple: int = 32) -> tuple[int, int]:
    """Scale (width, height) so that the long side is ``max_side``, keeping the aspect ratio, rounding each side
    down to a multiple of ``multiple`` (at least ``multiple``). Returns (width, height)."""
    scale = max_side / max(width, height)
    new_w = max(multiple, int(width * scale) // multiple * multiple)
    new_h = max(multiple, int(height * scale) // multiple * multiple)
    return new_w, new_h


def reference_size(width: int, height: int, image_size: int, unit: int = 32) -> tuple[int, int]:
    """The size the authors give a reference image (``resize_image`` in their
    ``qwen2_5_vl_sd3_hf_dynamic_fusion.py``). Returns (width, height).

    If the long side is at least ``image_size`` it becomes ``image_size`` and the other side is scaled and rounded
    *up* to a multiple of ``unit``; if both sides are smaller, nothing is scaled and both are rounded up. The float
    expression is theirs, so that sides landing on a multiple round as in their code.
    """
    if width >= height and width >= image_size:
        return image_size, math.ceil(height * (image_size / width) / unit) * unit
    if height >= width and height >= image_size:
        return math.ceil(width * (image_size / height) / unit) * unit, image_size
    return math.ceil(width / unit) * unit, math.ceil(height / unit) * unit


def pil_to_tensor(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1], resized to ``size`` = (width, height) with bicubic
    (PIL's default filter for RGB ``resize``, which the authors' ``resize_image`` uses)."""
    if size is not None and image.size != tuple(size):
        image = image.resize(size, Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1) * 2.0 - 1.0


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in ~[-1, 1] -> (B, H, W, 3) uint8, with the authors' conversion ``127.5 x + 128`` truncated
    (their evaluation scripts), so that our PNGs equal theirs byte for byte."""
    images = (127.5 * images.float() + 128.0).clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def vit_patches(
    image: torch.Tensor,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073),
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL input for one DeepGen reference image.

    The [-1, 1] image (3, H, W) is resized by 28/32 (bilinear, as the authors do, so a 32-multiple becomes a
    28-multiple), CLIP-normalised, repeated ``temporal_patch_size`` times and flattened Qwen2-VL style.

    Returns:
        ``(patches, grid_thw)``: (grid_h * grid_w, 3 * t * p * p) and (1, 3) = [[1, grid_h, grid_w]].
    """
    x = F.interpolate(image[None].float(), scale_factor=28 / 32, mode="bilinear", align_corners=False)[0]
    unit = patch_size * merge_size
    channels, height, width = x.shape
    if height % unit or width % unit:
        raise ValueError(
            f"A reference image of {image.shape[-1]}x{image.shape[-2]} is not a multiple of 32 pixels; "
            "the pipeline resizes references to multiples of 32 before this step."
        )
    x = (x + 1.0) / 2.0
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    grid_h, grid_w = height // patch_size, width // patch_size
    x = x[None].expand(temporal_patch_size, -1, -1, -1)  # (t, C, H, W): a still image is a 2-frame clip
    x = x.reshape(1, temporal_patch_size, channels, grid_h // merge_size, merge_size, patch_size,
                  grid_w // merge_size, merge_size, patch_size)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (1, gh/m, gw/m, m, m, C, t, p, p)
    patches = x.reshape(grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return patches, torch.tensor([[1, grid_h, grid_w]])


def png_metadata(settings: dict) -> PngInfo:
    """PNG text chunks: one per setting, plus all of them as JSON under ``deepgen``."""
    info = PngInfo()
    for key, value in settings.items():
        info.add_text(key, str(value))
    info.add_text("deepgen", json.dumps(settings, sort_keys=True))
    return info


def save_png(image: Image.Image, path: Path, settings: dict) -> None:
    """Write a lossless PNG with ``settings`` embedded, atomically (no half-written file on failure)."""
    atomic_write(path, lambda handle: image.save(handle, format="PNG", pnginfo=png_metadata(settings)))


def paste_tile(grid: Image.Image, path: Optional[Path], left: int, top: int, size: int,
               missing: str = "") -> None:
    """Paste the image at ``path`` centred in the ``size`` square at (``left``, ``top``) of a labelled grid,
    small images enlarged with crisp pixels; ``path`` None draws a grey tile captioned ``missing``."""
    draw = ImageDraw.Draw(grid)
    if path is None:
        draw.rectangle((left + 2, top + 2, left + size - 3, top + size - 3), fill=(220, 220, 220))
        if missing:
            draw.text((left + 8, top + size // 2), missing, fill="black")
        return
    with Image.open(path) as image:
        small = max(image.size) < size
        tile = ImageOps.contain(image.convert("RGB"), (size, size), Image.NEAREST if small else Image.LANCZOS)
    grid.paste(tile, (left + (size - tile.width) // 2, top + (size - tile.height) // 2))

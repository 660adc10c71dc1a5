"""Resolving a model name to a pipeline: built-in offline models, our folders, hub ids and native checkpoints.

Offline, the best built-in model is used: the trained DeepGen-nano checkpoints shipped in
``deepgen/assets/`` (the latest stage, then SFT, then stage 1), else the random ``tiny`` preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from .loading import OFFICIAL_DIT, OFFICIAL_VLM
from .pipeline import DeepGenPipeline, default_dtype

ASSETS = Path(__file__).resolve().parent / "assets"


def _latest_stage(*folders: Path) -> Path:
    """The first of ``folders`` that is shipped (later stages first), else the last one."""
    return next((folder for folder in folders if (folder / "model_index.json").is_file()), folders[-1])


# Built-in names -> shipped folders, best first. Missing folders are simply not offered. ``deepgen-nano`` is the
# latest shipped stage of the current chain: stage 3 (RL) when it is shipped, else stage 2 (SFT).
BUILTIN_CHECKPOINTS = {
    "deepgen-nano": _latest_stage(ASSETS / "deepgen-nano-rl", ASSETS / "deepgen-nano-sft"),
    "deepgen-nano-sft": ASSETS / "deepgen-nano-sft",
    # The previous chain's stage 3 (docs/rl.md, round 7), the default until the current chain's stage 2 beat it.
    "deepgen-nano-v2-rl": ASSETS / "deepgen-nano-v2-rl",
    "deepgen-nano-stage1": ASSETS / "deepgen-nano-stage1",
}
RANDOM_PRESETS = ("tiny",)


def available_builtin_models() -> list[str]:
    """Names of the offline models present in this install, best first (``tiny`` is always there)."""
    names = [name for name, path in BUILTIN_CHECKPOINTS.items() if (path / "model_index.json").is_file()]
    return names + list(RANDOM_PRESETS)


def default_model_name() -> str:
    return available_builtin_models()[0]


def load_pipeline(model: Optional[Union[str, Path]] = None, vlm: str = OFFICIAL_VLM, dit: str = OFFICIAL_DIT,
                  device: Optional[Union[str, torch.device]] = None,
                  torch_dtype: Optional[torch.dtype] = None) -> DeepGenPipeline:
    """Load a pipeline from a name.

    ``model`` may be: None (the best built-in model); a built-in name (``deepgen-nano``, ``tiny``, …); a folder
    written by ``save_pretrained`` or the diffusers-format release; a native checkpoint file (``.pt``, ``.pth``,
    ``.safetensors``) loaded on the base models ``vlm`` and ``dit``; or a hub id of a diffusers-format release.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = torch_dtype or default_dtype(device)
    name = str(model) if model is not None else default_model_name()
    if name in RANDOM_PRESETS:
        pipe = DeepGenPipeline.from_config(name, seed=0, torch_dtype=torch_dtype)
    elif name in BUILTIN_CHECKPOINTS:
        folder = BUILTIN_CHECKPOINTS[name]
        if not (folder / "model_index.json").is_file():
            raise ValueError(f"Built-in model {name!r} is not shipped in this install; available: "
                             f"{available_builtin_models()}.")
        pipe = DeepGenPipeline.from_pretrained(folder, torch_dtype=torch_dtype)
    elif Path(name).suffix in (".pt", ".pth", ".safetensors", ".bin") and Path(name).is_file():
        pipe = DeepGenPipeline.from_native_checkpoint(name, vlm=vlm, dit=dit, torch_dtype=torch_dtype)
    else:
        pipe = DeepGenPipeline.from_pretrained(name, torch_dtype=torch_dtype)
    return pipe.to(device)

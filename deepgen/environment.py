"""What a run ran on, for reproducibility records (the app's exports, benchmark runs)."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Optional, Sequence

import torch

PACKAGES = ("deepgen-studio", "torch", "diffusers", "transformers", "peft", "huggingface_hub", "accelerate")


def package_version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_record(device: torch.device, packages: Sequence[str] = PACKAGES) -> dict:
    """Python, library versions and device; the operating system's name, not its kernel build (records are
    shared, and the kernel string says more about the machine than reproducing needs)."""
    record = {
        "python": platform.python_version(),
        "platform": platform.system(),
        "packages": {name: package_version(name) for name in packages},
        "device": str(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    else:
        record["cpu"] = platform.processor() or platform.machine()
        record["torch_threads"] = torch.get_num_threads()
    return record

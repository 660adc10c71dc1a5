"""LoRA adapters (peft) on DeepGen's VLM and DiT: attach, save, load, merge and unmerge.

The authors' stage-2 setting puts LoRA (r 64, alpha 128) on *every* ``nn.Linear`` and ``nn.Embedding`` of
Qwen2.5-VL (language model, ``lm_head``, ViT blocks and merger; not the Conv3d patch embedding). We inject with
peft directly (``inject_adapter_in_model``), which keeps module names unchanged, so adapter keys read
``model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight`` exactly as in their checkpoints.

Adapters are saved in peft's own folder format (``adapter_config.json`` + ``adapter_model.safetensors``, written
with peft's ``get_peft_model_state_dict``); transformers' ``model.load_adapter(folder)`` reads a saved VLM adapter
as is (tested). Wrapping the VLM in a ``PeftModel`` to use ``PeftModel.save_pretrained`` would prefix every name
with ``base_model.model.`` and break that key match, so :func:`load_lora` stays ours: unlike ``load_adapter`` it
refuses an adapter with unused or missing tensors instead of warning.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def lora_target_modules(module: nn.Module, kinds: tuple[type, ...] = (nn.Linear, nn.Embedding)) -> list[str]:
    """Full names of every submodule of the given kinds (the authors' ``lora_modules='auto'``)."""
    return [name for name, sub in module.named_modules() if name and type(sub) in kinds]


def add_lora(module: nn.Module, rank: int, alpha: float, target_modules: Optional[Iterable[str]] = None,
             dropout: float = 0.0, adapter_name: str = "default",
             rank_pattern: Optional[dict[str, int]] = None) -> LoraConfig:
    """Inject a LoRA adapter. ``target_modules`` defaults to every Linear and Embedding module.

    Full module names are matched exactly (peft also accepts them as suffixes); B starts at zero so the adapter
    is an identity until trained.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
    targets = list(target_modules) if target_modules is not None else lora_target_modules(module)
    if not targets:
        raise ValueError("No LoRA target modules: the module has no Linear/Embedding layers to adapt.")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        rank_pattern=rank_pattern or {})
    inject_adapter_in_model(config, module, adapter_name=adapter_name)
    return config


def has_lora(module: nn.Module) -> bool:
    return any(isinstance(sub, BaseTunerLayer) for sub in module.modules())


def lora_layers(module: nn.Module) -> list[BaseTunerLayer]:
    return [sub for sub in module.modules() if isinstance(sub, BaseTunerLayer)]


def merge_lora(module: nn.Module) -> None:
    """Fold the active adapters into the base weights (faster inference; :func:`unmerge_lora` undoes it).

    With tied embeddings (Qwen2.5-VL-3B) ``lm_head`` and ``embed_tokens`` share one weight; merging both would add
    two deltas to it. Only the first adapter on a shared weight is merged (``embed_tokens``, which DeepGen uses);
    the other stays unmerged (``lm_head``, which DeepGen never calls).
    """
    merged_weights = set()
    for layer in lora_layers(module):
        weight = layer.get_base_layer().weight
        if layer.merged or weight.data_ptr() in merged_weights:
            continue
        layer.merge()
        merged_weights.add(weight.data_ptr())


def unmerge_lora(module: nn.Module) -> None:
    for layer in lora_layers(module):
        if layer.merged:
            layer.unmerge()


def is_merged(module: nn.Module) -> bool:
    return any(layer.merged for layer in lora_layers(module))


def save_lora(module: nn.Module, directory: Union[str, Path], adapter_name: str = "default") -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (peft's format) for one adapter."""
    config = getattr(module, "peft_config", {}).get(adapter_name)
    if config is None:
        raise ValueError(f"The module has no LoRA adapter named {adapter_name!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Adapter tensors only: peft would otherwise add the full base weights of adapted embeddings, which are
    # saved with the model already (and, tied to lm_head, share memory, which safetensors refuses).
    state = get_peft_model_state_dict(module, adapter_name=adapter_name, save_embedding_layers=False)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, directory / ADAPTER_WEIGHTS)
    config_dict = config.to_dict()
    config_dict["target_modules"] = sorted(config_dict["target_modules"])
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config_dict, indent=2, default=list) + "\n")


def load_lora(module: nn.Module, directory: Union[str, Path], adapter_name: str = "default") -> None:
    """Inject and load an adapter saved by :func:`save_lora`; fails if any adapter tensor is unused or missing."""
    directory = Path(directory)
    config = LoraConfig.from_pretrained(str(directory))
    inject_adapter_in_model(config, module, adapter_name=adapter_name)
    state = load_file(directory / ADAPTER_WEIGHTS)
    result = set_peft_model_state_dict(module, state, adapter_name=adapter_name)
    unexpected = list(result.unexpected_keys)
    expected = {k for k in module.state_dict() if f".{adapter_name}" in k and "lora_" in k}
    missing = sorted(k for k in result.missing_keys if k in expected)
    if unexpected or missing:
        raise ValueError(f"LoRA adapter in {directory} does not fit the model: unexpected keys "
                         f"{unexpected[:10]}, missing keys {missing[:10]}.")


def lora_parameters(module: nn.Module) -> list[torch.nn.Parameter]:
    return [p for name, p in module.named_parameters() if "lora_" in name]


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as its base model: every LoRA layer bypassed (peft's ``enable_adapters(False)``)."""
    layers = lora_layers(module)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)

"""Weight averaging of runs fine-tuned from one start: model soups, and WARP's averaged RL policies.

Runs that start from the same weights and differ in their data order and noise share the direction their
objective pushes them and not the noise of each run; the average of their weights keeps the first and shrinks the
second (Wortsman et al. 2022, "Model soups"; Ramé et al. 2024, "WARP"). ``train/average_checkpoints.py`` applies
it to pipeline folders.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from ..pipeline import DeepGenPipeline

COMPONENTS = ("vlm", "connector", "transformer", "vae")


def _normalised(weights: Optional[Sequence[float]], count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"Got {len(weights)} weights for {count} models; pass one weight per model.")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Weights must be >= 0 with a positive sum, got {list(weights)}.")
    total = float(sum(weights))
    return [w / total for w in weights]


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]],
                        weights: Optional[Sequence[float]] = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weighted average of state dicts of one architecture.

    Args:
        state_dicts: two or more state dicts with the same keys, shapes and dtypes.
        weights: one per state dict, >= 0 (normalised to sum to 1); default uniform.

    Returns:
        The averaged state dict, and the keys whose tensors differed between the inputs (the others are copied
        unchanged, bit for bit). Floating tensors are averaged in float64 and cast back; other tensors (counters,
        integer buffers) must be equal in every input.

    Raises:
        ValueError: on different keys, shapes or dtypes, differing non-floating tensors, or LoRA factors that
            differ (averaging A and B apart does not average the updates B @ A).
    """
    if len(state_dicts) < 2:
        raise ValueError(f"Averaging needs at least two models, got {len(state_dicts)}.")
    shares = _normalised(weights, len(state_dicts))
    first = state_dicts[0]
    for index, other in enumerate(state_dicts[1:], start=1):
        if set(other) != set(first):
            missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
            raise ValueError(f"Model {index} has other weights than model 0 (missing {missing[:3]}, extra "
                             f"{extra[:3]}); only runs of one architecture can be averaged.")
    averaged: dict[str, torch.Tensor] = {}
    differing: list[str] = []
    for key, reference in first.items():
        tensors = [state[key] for state in state_dicts]
        for index, tensor in enumerate(tensors[1:], start=1):
            if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
                raise ValueError(f"{key!r} is {tuple(tensor.shape)} {tensor.dtype} in model {index} but "
                                 f"{tuple(reference.shape)} {reference.dtype} in model 0.")
        if all(torch.equal(tensor, reference) for tensor in tensors[1:]):
            averaged[key] = reference.clone()
            continue
        if "lora_" in key:
            raise ValueError(f"The LoRA factor {key!r} differs between the models; averaging A and B apart does "
                             "not average the updates B @ A. Average runs that share their LoRA (stage-3 runs keep "
                             "the stage-2 VLM LoRA frozen), or runs trained without one.")
        if not reference.is_floating_point():
            raise ValueError(f"{key!r} ({reference.dtype}) differs between the models and cannot be averaged.")
        total = sum(share * tensor.to(torch.float64) for share, tensor in zip(shares, tensors))
        averaged[key] = total.to(reference.dtype)
        differing.append(key)
    return averaged, differing


def average_pipelines(pipes: Sequence[DeepGenPipeline],
                      weights: Optional[Sequence[float]] = None) -> dict[str, int]:
    """Load the weighted average of ``pipes`` into ``pipes[0]``, component by component.

    Returns:
        Per component (:data:`COMPONENTS`), how many of its tensors differed between the inputs and were averaged;
        a component with 0 was identical in all of them and is unchanged.
    """
    counts = {}
    for name in COMPONENTS:
        modules = [getattr(pipe, name) for pipe in pipes]
        try:
            state, differing = average_state_dicts([module.state_dict() for module in modules], weights)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from error
        modules[0].load_state_dict(state)
        counts[name] = len(differing)
    return counts

"""Rectified-flow (flow-matching) training objective used by stages 1 and 2.

The forward process and target follow SD3 (Esser et al. 2024, "Scaling Rectified Flow Transformers",
§2–3.1, with the rectified-flow choice a_t = 1 − t, b_t = t):

    x_t = (1 − σ)·x0 + σ·ε,        v_target = dx_t/dσ = ε − x0.

Timestep sampling and loss weighting reuse ``diffusers.training_utils`` exactly as diffusers'
``examples/dreambooth/train_dreambooth_lora_sd3.py`` does.
"""

from typing import Optional, Union

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

# Names accepted by ``compute_density_for_timestep_sampling`` ("none" means uniform u).
TIMESTEP_SAMPLING_SCHEMES = ("logit_normal", "mode", "none")
# Names accepted by ``compute_loss_weighting_for_sd3``; the sampling-only schemes weight uniformly there
# because the non-uniform density already emphasises the middle timesteps.
LOSS_WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "cosmap", "logit_normal", "mode")


def _expand_sigmas(sigmas: Union[torch.Tensor, float], x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar, a per-sample ``(B,)`` or an already-shaped sigma tensor over ``x`` (B, ...)."""
    sigmas = torch.as_tensor(sigmas, device=x.device)
    if sigmas.ndim == 0 or sigmas.ndim == x.ndim:
        return sigmas
    if sigmas.ndim == 1 and sigmas.shape[0] == x.shape[0]:
        return sigmas.view(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1)
    raise ValueError(
        f"sigmas of shape {tuple(sigmas.shape)} cannot be broadcast over a sample of shape {tuple(x.shape)}; "
        f"pass a scalar, a (B,) tensor with B={x.shape[0]}, or a tensor with {x.ndim} dimensions."
    )


def sample_timesteps(
    batch_size: int,
    scheduler: FlowMatchEulerDiscreteScheduler,
    weighting_scheme: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: Optional[torch.Generator] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw training noise levels the way diffusers' SD3 training script does.

    SD3 §3.1 (logit-normal and "mode with heavy tails" timestep densities) via
    ``diffusers.training_utils.compute_density_for_timestep_sampling``: draw ``u ∈ [0, 1)``, then
    ``indices = (u · num_train_timesteps).long()``, ``timesteps = scheduler.timesteps[indices]``,
    ``sigmas = scheduler.sigmas[indices]``. With ``use_dynamic_shifting=True`` the scheduler's training
    sigmas are unshifted, so logit-normal sampling supplies the emphasis on middle noise levels.

    Args:
        batch_size: number of samples B.
        scheduler: a ``FlowMatchEulerDiscreteScheduler`` holding its *training* schedule, i.e. one on which
            ``set_timesteps`` was never called (diffusers keeps ``noise_scheduler_copy`` for this).
        weighting_scheme: ``"logit_normal"`` (default), ``"mode"`` or ``"none"`` (uniform).
        logit_mean, logit_std: parameters of the logit-normal density (defaults 0.0, 1.0).
        mode_scale: scale of the "mode" density (default 1.29, diffusers' default).
        generator: optional ``torch.Generator`` (on CPU) for reproducible draws.
        device: device of the returned tensors (default: the scheduler's).

    Returns:
        ``(sigmas, timesteps)``, both fp32 of shape ``(B,)``; sigmas in (0, 1], timesteps in (0, 1000].
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    if weighting_scheme not in TIMESTEP_SAMPLING_SCHEMES:
        raise ValueError(
            f"Unknown timestep weighting_scheme {weighting_scheme!r}; expected one of {TIMESTEP_SAMPLING_SCHEMES}."
        )
    num_train_timesteps = scheduler.config.num_train_timesteps
    if len(scheduler.timesteps) != num_train_timesteps or len(scheduler.sigmas) != num_train_timesteps:
        raise ValueError(
            f"The scheduler holds {len(scheduler.timesteps)} timesteps / {len(scheduler.sigmas)} sigmas but "
            f"num_train_timesteps={num_train_timesteps}: set_timesteps() was called on it. Pass a copy made "
            "before inference (copy.deepcopy) or a freshly constructed scheduler."
        )

    # Draw u where the generator lives (CPU by default), then index the CPU schedule.
    generator_device = generator.device if generator is not None else "cpu"
    u = compute_density_for_timestep_sampling(
        weighting_scheme=weighting_scheme,
        batch_size=batch_size,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
        device=generator_device,
        generator=generator,
    )
    # Clamp: in fp32 sigmoid(u) can round to exactly 1.0, which would index one past the end
    # (diffusers' script does not guard this).
    indices = (u * num_train_timesteps).long().clamp(0, num_train_timesteps - 1).cpu()
    device = device if device is not None else scheduler.sigmas.device
    timesteps = scheduler.timesteps.cpu()[indices].to(device=device, dtype=torch.float32)
    sigmas = scheduler.sigmas.cpu()[indices].to(device=device, dtype=torch.float32)
    return sigmas, timesteps


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: Union[torch.Tensor, float]) -> torch.Tensor:
    """Rectified-flow forward process ``x_t = (1 − σ)·x0 + σ·ε`` (SD3 §3.1; diffusers' SD3 script).

    Args:
        x0: clean latents, shape ``(B, C, H, W)`` (any ``(B, ...)`` works).
        noise: Gaussian noise ε, same shape as ``x0``.
        sigmas: noise level σ ∈ [0, 1]; a scalar, a ``(B,)`` tensor or a tensor broadcastable to ``x0``.

    Returns:
        ``x_t`` with the shape and dtype of ``x0``.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape.")
    sigmas = _expand_sigmas(sigmas, x0).to(x0.dtype)  # (B, 1, 1, 1)
    return (1.0 - sigmas) * x0 + sigmas * noise


def flow_matching_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Velocity target ``v = dx_t/dσ = ε − x0`` (SD3 §2–3.1 for the rectified-flow path).

    Args:
        x0: clean latents ``(B, C, H, W)``.
        noise: noise ε of the same shape.

    Returns:
        ``ε − x0`` of shape ``(B, C, H, W)``.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape.")
    return noise - x0


def flow_matching_loss(
    pred: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigmas: Optional[torch.Tensor] = None,
    weighting_scheme: str = "none",
) -> torch.Tensor:
    """Weighted MSE between the predicted velocity and ``ε − x0``, as diffusers' SD3 training script.

    ``L = mean_b [ mean_{c,h,w} w(σ_b)·(v̂ − (ε − x0))² ]`` with ``w`` from
    ``diffusers.training_utils.compute_loss_weighting_for_sd3`` (SD3 §3.1): ``"none"``/``"logit_normal"``/
    ``"mode"`` → 1, ``"sigma_sqrt"`` → σ⁻², ``"cosmap"`` → 2 / (π·(1 − 2σ + 2σ²)).

    Args:
        pred: predicted velocity ``(B, C, H, W)``.
        x0: clean latents, same shape.
        noise: noise ε, same shape.
        sigmas: ``(B,)`` noise levels; required for ``"sigma_sqrt"`` and ``"cosmap"``.
        weighting_scheme: see above; default ``"none"``.

    Returns:
        Scalar fp32 loss.
    """
    if not (pred.shape == x0.shape == noise.shape):
        raise ValueError(
            f"pred {tuple(pred.shape)}, x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must share one shape."
        )
    if weighting_scheme not in LOSS_WEIGHTING_SCHEMES:
        raise ValueError(
            f"Unknown loss weighting_scheme {weighting_scheme!r}; expected one of {LOSS_WEIGHTING_SCHEMES}."
        )
    if weighting_scheme in ("sigma_sqrt", "cosmap") and sigmas is None:
        raise ValueError(
            f"weighting_scheme={weighting_scheme!r} needs the per-sample sigmas; pass sigmas as a (B,) tensor."
        )

    # fp32: under bf16 autocast the squared error of O(1) velocities loses most of its mantissa,
    # and the per-sample mean over C·H·W elements accumulates that rounding.
    target = flow_matching_target(x0.float(), noise.float())
    if sigmas is None:
        weighting = torch.ones((), device=pred.device)
    else:
        weighting = compute_loss_weighting_for_sd3(weighting_scheme, _expand_sigmas(sigmas, pred).float()).float()
    per_sample = (weighting * (pred.float() - target) ** 2).reshape(pred.shape[0], -1).mean(dim=1)  # (B,)
    return per_sample.mean()


def drop_captions(prompts: list[str], p: float = 0.1, generator: Optional[torch.Generator] = None) -> list[str]:
    """Replace each caption with ``""`` with probability ``p`` for classifier-free guidance training.

    CFG (Ho & Salimans 2022, §3.2) trains the unconditional model jointly by dropping the condition;
    DeepGen drops 10% of captions. One ``torch.rand`` draw per prompt makes this reproducible with
    ``generator``.

    Args:
        prompts: list of N captions.
        p: drop probability in [0, 1] (default 0.1).
        generator: optional CPU ``torch.Generator``.

    Returns:
        A new list of N captions, some replaced by the empty string.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"Caption drop probability p must be in [0, 1], got {p}.")
    drop = torch.rand(len(prompts), generator=generator) < p  # (N,)
    return ["" if dropped else prompt for prompt, dropped in zip(prompts, drop.tolist())]

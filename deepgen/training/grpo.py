"""MR-GRPO math for stage 3: SDE sampling step with log-probability, advantages, clipped loss, KL.

Adapted from flow_grpo (github.com/yifan123/flow_grpo): ``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``
and the PPO update in ``scripts/train_sd3.py``. Changes: the step takes σ and σ_next directly instead of
a scheduler and timestep (no ``index_for_timestep`` lookup), σ = 1 is guarded with σ_next instead of
``scheduler.sigmas[1]``, the CPS log-probability is the full Gaussian density (flow_grpo drops constants
and the 1/(2·std²) scale there), zero-std steps get log-prob 0 instead of NaN, and the KL is taken on
the velocity. Papers: Flow-GRPO (Liu et al. 2025, arXiv:2505.05470), Coefficients-Preserving Sampling
(Wang & Yu 2025, arXiv:2509.05952), GRPO (Shao et al. 2024, DeepSeekMath), GDPO (group reward-decoupled
normalization), PPO (Schulman et al. 2017).
"""

import math
from collections.abc import Mapping, Sequence
from typing import Literal, Optional, Union

import torch
from diffusers.utils.torch_utils import randn_tensor

SDE_TYPES = ("cps", "flow_grpo")
# "gaussian": the exact log N(x_next; mean, std²) (textbook); "negative_squared_error": −(x_next − mean)², the
# authors' CPS log-probability (deepgen_rl trainer/grpo_deepgen_trainer.py:430-434), whose ratio ignores std.
LOG_PROB_FORMS = ("gaussian", "negative_squared_error")
# "velocity": mean (v − v_ref)² with the step constant folded into β; "velocity_over_variance": the authors'
# v-based KL, (v − v_ref)² / (2·std² + 1e-7) (deepgen_rl trainer/grpo_deepgen_trainer.py:3745-3749).
KL_FORMS = ("velocity", "velocity_over_variance")


def _as_sample_sigma(sigma: Union[torch.Tensor, float], sample: torch.Tensor, name: str) -> torch.Tensor:
    """fp32 σ broadcastable over ``sample`` (B, ...): scalar stays 0-dim, ``(B,)`` becomes ``(B, 1, 1, 1)``."""
    sigma = torch.as_tensor(sigma, device=sample.device, dtype=torch.float32)
    if sigma.ndim == 0 or sigma.ndim == sample.ndim:
        return sigma
    if sigma.ndim == 1 and sigma.shape[0] == sample.shape[0]:
        return sigma.view(-1, *([1] * (sample.ndim - 1)))
    raise ValueError(
        f"{name} of shape {tuple(sigma.shape)} cannot be broadcast over a sample of shape {tuple(sample.shape)}; "
        f"pass a float, a (B,) tensor with B={sample.shape[0]}, or a tensor with {sample.ndim} dimensions."
    )


def _mean_over_non_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) → (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def sde_step_with_logprob(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: Union[torch.Tensor, float],
    sigma_next: Union[torch.Tensor, float],
    noise_level: float = 0.7,
    prev_sample: Optional[torch.Tensor] = None,
    generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None,
    sde_type: Literal["cps", "flow_grpo"] = "cps",
    log_prob_form: Literal["gaussian", "negative_squared_error"] = "gaussian",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stochastic reverse step σ → σ_next (σ_next < σ) whose Gaussian log-probability is known.

    With ``dt = σ_next − σ < 0`` the step is ``x_next = mean + std·ε``, ``ε ~ N(0, I)``, where

    * ``sde_type="flow_grpo"`` (Flow-GRPO §4, the ODE-to-SDE conversion that keeps the flow's marginals):
      ``s = noise_level·sqrt(σ / (1 − σ))``,
      ``mean = x·(1 + s²·dt / (2σ)) + v·(1 + s²·(1 − σ) / (2σ))·dt``, ``std = s·sqrt(−dt)``.
      σ = 1 makes ``s`` infinite; as flow_grpo (which substitutes ``scheduler.sigmas[1]``) we replace σ by
      σ_next in the denominator only, i.e. ``s = noise_level·sqrt(σ / (1 − σ_next))`` when σ = 1 — identical
      to flow_grpo on the usual schedule where σ_0 = 1 and σ_next = σ_1.
    * ``sde_type="cps"`` (Coefficients-Preserving Sampling, Wang & Yu 2025; flow_grpo's ``sde_type='cps'``):
      ``x̂0 = x − σ·v``, ``x̂1 = x + (1 − σ)·v``, ``std = σ_next·sin(noise_level·π/2)``,
      ``mean = (1 − σ_next)·x̂0 + sqrt(σ_next² − std²)·x̂1``; the noise coefficients satisfy
      ``(σ_next² − std²) + std² = σ_next²``, so x_next keeps the marginal form
      ``(1 − σ_next)·x0 + σ_next·ε``.

    With ``noise_level = 0`` both reduce to the Euler step ``x + (σ_next − σ)·v``.

    The log-probability is the full Gaussian density ``log N(x_next; mean, std²)`` evaluated at the
    detached ``x_next`` and **averaged** (not summed) over all non-batch dimensions, as flow_grpo does;
    the average keeps its scale independent of the latent resolution, which matters with a 1e-4 clip.
    A step with ``std = 0`` (noise_level 0, or CPS's final step to σ_next = 0) is deterministic and has no
    density: its log-prob is defined as 0 (no gradient), so such steps contribute nothing to the policy loss.

    Args:
        velocity: predicted velocity v, shape ``(B, C, H, W)``.
        sample: current latents x at noise level σ, same shape.
        sigma: current σ ∈ (0, 1]; float, ``(B,)`` or broadcastable tensor.
        sigma_next: next σ ∈ [0, σ); same forms.
        noise_level: SDE noise strength (default 0.7, flow_grpo's); in [0, 1] for CPS, ≥ 0 otherwise.
        prev_sample: if given, the x_next whose log-prob is evaluated (no sampling), same shape as ``sample``.
        generator: optional ``torch.Generator`` (or one per sample) for the noise ε.
        sde_type: ``"cps"`` (default, DeepGen's choice) or ``"flow_grpo"``.
        log_prob_form: ``"gaussian"`` (default, the exact density above) or ``"negative_squared_error"``
            (``−(x_next − mean)²`` averaged the same way: the authors' CPS form; constant terms and the
            1/(2·std²) scale are dropped, so the policy ratio moves less per unit of velocity change).

    Returns:
        ``(prev_sample, log_prob, prev_sample_mean, std_dev)``: x_next ``(B, C, H, W)``, log-prob ``(B,)``,
        the Gaussian mean ``(B, C, H, W)``, and the Gaussian standard deviation of this step (already
        including the ``sqrt(−dt)`` factor for ``"flow_grpo"``), broadcastable: ``(B, 1, 1, 1)`` or 0-dim.
        All fp32.
    """
    if sde_type not in SDE_TYPES:
        raise ValueError(f"Unknown sde_type {sde_type!r}; expected one of {SDE_TYPES}.")
    if velocity.shape != sample.shape:
        raise ValueError(
            f"velocity {tuple(velocity.shape)} and sample {tuple(sample.shape)} must have the same shape."
        )
    if prev_sample is not None and prev_sample.shape != sample.shape:
        raise ValueError(
            f"prev_sample {tuple(prev_sample.shape)} must have the shape of sample {tuple(sample.shape)}."
        )
    if noise_level < 0 or (sde_type == "cps" and noise_level > 1):
        raise ValueError(f"noise_level must be >= 0 (and <= 1 for CPS), got {noise_level} for sde_type={sde_type!r}.")

    # fp32: in bf16 the mean's (1 + s²·dt/(2σ)) factors and the squared residual / (2·std²) overflow or lose
    # all precision (flow_grpo makes the same upcast for the same reason).
    velocity = velocity.float()
    sample = sample.float()
    sigma = _as_sample_sigma(sigma, sample, "sigma")  # (B, 1, 1, 1) or ()
    sigma_next = _as_sample_sigma(sigma_next, sample, "sigma_next")
    if bool((sigma_next >= sigma).any()) or bool((sigma > 1).any()) or bool((sigma_next < 0).any()):
        raise ValueError("Expected 0 <= sigma_next < sigma <= 1 for a reverse (denoising) step.")
    dt = sigma_next - sigma  # negative

    if sde_type == "flow_grpo":
        # Guard σ = 1 (s would be infinite): use σ_next in the denominator, as flow_grpo uses sigmas[1].
        s = noise_level * torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_next, sigma)))
        prev_sample_mean = (
            sample * (1 + s**2 / (2 * sigma) * dt) + velocity * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
        )
        std_dev = s * torch.sqrt(-dt)
    else:
        pred_original_sample = sample - sigma * velocity  # x̂0
        noise_estimate = sample + (1 - sigma) * velocity  # x̂1
        std_dev = sigma_next * math.sin(noise_level * math.pi / 2)
        prev_sample_mean = (
            (1 - sigma_next) * pred_original_sample + torch.sqrt(sigma_next**2 - std_dev**2) * noise_estimate
        )

    if prev_sample is None:
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        prev_sample = prev_sample_mean + std_dev * noise
    prev_sample = prev_sample.float()

    # Gaussian log density; std = 0 is a Dirac, defined as log-prob 0. The safe std keeps NaNs out of the
    # backward pass through torch.where.
    has_noise = std_dev > 0
    safe_std = torch.where(has_noise, std_dev, torch.ones_like(std_dev))
    if log_prob_form not in LOG_PROB_FORMS:
        raise ValueError(f"Unknown log_prob_form {log_prob_form!r}; expected one of {LOG_PROB_FORMS}.")
    if log_prob_form == "negative_squared_error":
        log_prob = -((prev_sample.detach() - prev_sample_mean) ** 2)
    else:
        log_prob = (
            -((prev_sample.detach() - prev_sample_mean) ** 2) / (2 * safe_std**2)
            - torch.log(safe_std)
            - 0.5 * math.log(2 * math.pi)
        )
    log_prob = torch.where(has_noise, log_prob, torch.zeros_like(log_prob))
    log_prob = _mean_over_non_batch(log_prob)  # (B,)
    return prev_sample, log_prob, prev_sample_mean, std_dev


def _resolve_group_ids(
    num_samples: int,
    group_size: Optional[int],
    group_ids: Optional[torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """Dense group index per sample, shape ``(N,)``, values in ``[0, num_groups)``."""
    if (group_size is None) == (group_ids is None):
        raise ValueError("Pass exactly one of group_size (contiguous groups) or group_ids (one id per sample).")
    if group_size is not None:
        if group_size < 1 or num_samples % group_size != 0:
            raise ValueError(
                f"group_size={group_size} must be a positive divisor of the number of samples N={num_samples} "
                "(rollouts of one prompt are expected to be contiguous)."
            )
        return torch.arange(num_samples, device=device) // group_size
    group_ids = torch.as_tensor(group_ids, device=device)
    if group_ids.shape != (num_samples,):
        raise ValueError(f"group_ids must have shape ({num_samples},), got {tuple(group_ids.shape)}.")
    return torch.unique(group_ids, return_inverse=True)[1]


def group_advantages(
    rewards: torch.Tensor,
    group_size: Optional[int] = None,
    group_ids: Optional[torch.Tensor] = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """GRPO advantages ``A_i = (r_i − mean_g(r)) / (std_g(r) + eps)`` within each prompt group g.

    DeepSeekMath §4.1.2 (outcome supervision) / Flow-GRPO §4. ``std`` is the population std (``unbiased=False``), as
    flow_grpo's ``PerPromptStatTracker`` (``np.std``). A group of identical rewards gets advantage 0.

    Args:
        rewards: ``(N,)`` scalar reward per rollout.
        group_size: rollouts per prompt G, groups are contiguous blocks ``[0:G], [G:2G], …``; or
        group_ids: ``(N,)`` integer group id per rollout, any values, any order (exactly one of the two).
        eps: added to the std (default 1e-4).

    Returns:
        ``(N,)`` fp32 advantages.
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be a 1-D (N,) tensor, got shape {tuple(rewards.shape)}.")
    rewards = rewards.float()  # fp32: means/variances of bf16 rewards are too coarse to rank rollouts
    ids = _resolve_group_ids(rewards.shape[0], group_size, group_ids, rewards.device)  # (N,)
    num_groups = int(ids.max()) + 1
    counts = torch.bincount(ids, minlength=num_groups).float()  # (num_groups,)
    mean = torch.zeros(num_groups, device=rewards.device).index_add_(0, ids, rewards) / counts
    centered = rewards - mean[ids]  # (N,)
    var = torch.zeros(num_groups, device=rewards.device).index_add_(0, ids, centered**2) / counts
    return centered / (var.sqrt()[ids] + eps)


def gdpo_advantages(
    rewards: Union[Mapping[str, torch.Tensor], torch.Tensor],
    weights: Optional[Union[Mapping[str, float], Sequence[float], torch.Tensor]] = None,
    group_size: Optional[int] = None,
    group_ids: Optional[torch.Tensor] = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """GDPO advantages: normalise each reward within its group, weight, sum, then normalise over the batch.

    ``A_i = (S_i − mean_batch(S)) / (std_batch(S) + eps)`` with ``S_i = Σ_k w_k·Â_{i,k}`` and
    ``Â_{·,k} = group_advantages(r_{·,k})``. Decoupling the per-reward normalisation keeps one
    high-variance reward (e.g. OCR accuracy) from drowning the others, unlike normalising ``Σ_k w_k·r_k``.

    Args:
        rewards: ``{name: (N,)}`` mapping, or an ``(N, K)`` tensor with one column per reward.
        weights: ``{name: w}`` for a mapping (same keys), or K weights for a tensor, or an ``(N, K)`` tensor of
            per-sample weights (applied to the normalised advantages, as the authors' per-dataset weights);
            default all 1.
        group_size / group_ids: prompt groups, as in :func:`group_advantages` (exactly one).
        eps: stabiliser added to every std (default 1e-4).

    Returns:
        ``(N,)`` fp32 advantages with zero mean and (≈) unit std over the batch.
    """
    if isinstance(rewards, Mapping):
        names = list(rewards)
        if not names:
            raise ValueError("rewards is empty; pass at least one reward.")
        if weights is None:
            weights = {name: 1.0 for name in names}
        if not isinstance(weights, Mapping) or set(weights) != set(names):
            raise ValueError(
                f"With a dict of rewards, weights must be a dict with the same keys; rewards have {sorted(names)}, "
                f"weights have {sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__}."
            )
        shapes = {name: tuple(rewards[name].shape) for name in names}
        if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
            raise ValueError(f"Every reward must be a 1-D (N,) tensor of the same N; got shapes {shapes}.")
        reward_matrix = torch.stack([rewards[name].float() for name in names], dim=1)  # (N, K)
        weight_vector = torch.tensor([float(weights[name]) for name in names], device=reward_matrix.device)
    else:
        if rewards.ndim != 2:
            raise ValueError(f"rewards tensor must have shape (N, K), got {tuple(rewards.shape)}.")
        reward_matrix = rewards.float()
        num_rewards = reward_matrix.shape[1]
        if weights is None:
            weights = [1.0] * num_rewards
        if isinstance(weights, Mapping):
            raise ValueError("A dict of weights needs a dict of rewards; pass a sequence of K weights instead.")
        weight_vector = torch.as_tensor(weights, dtype=torch.float32, device=reward_matrix.device)
        if weight_vector.shape != (num_rewards,) and weight_vector.shape != reward_matrix.shape:
            raise ValueError(
                f"Expected {num_rewards} weights (or one row of them per sample) for rewards of shape "
                f"{tuple(rewards.shape)}, got weights of shape {tuple(weight_vector.shape)}."
            )

    per_reward = torch.stack(
        [
            group_advantages(reward_matrix[:, k], group_size=group_size, group_ids=group_ids, eps=eps)
            for k in range(reward_matrix.shape[1])
        ],
        dim=1,
    )  # (N, K)
    if weight_vector.ndim == 2:  # per-sample weights (the authors' per-dataset reward weights)
        combined = (per_reward * weight_vector).sum(dim=1)  # (N,)
    else:
        combined = per_reward @ weight_vector  # (N,)
    return (combined - combined.mean()) / (combined.std(unbiased=False) + eps)


def clipped_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    adv_clip_max: float = 5.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate as in flow_grpo's ``train_sd3.py`` (PPO eq. 7, negated for minimisation).

    ``ratio = exp(log_prob − old_log_prob)``, ``A = clamp(advantages, ±adv_clip_max)``,
    ``loss = mean(max(−A·ratio, −A·clamp(ratio, 1 − clip_range, 1 + clip_range)))``.
    On the first inner step (old = current, detached) the ratio is 1 and the gradient is the plain
    policy gradient ``−mean(A·∇log_prob)``.

    Args:
        log_prob: ``(N,)`` log-probs under the current policy (carries the gradient).
        old_log_prob: ``(N,)`` log-probs recorded at sampling time (detached here).
        advantages: ``(N,)`` advantages (detached here).
        clip_range: ε of the ratio clip, > 0 (default 1e-4, DeepGen's and flow_grpo's).
        adv_clip_max: advantages are clamped to ``[−adv_clip_max, adv_clip_max]`` (default 5.0, flow_grpo's).

    Returns:
        ``(loss, stats)``: scalar fp32 loss, and detached 0-dim tensors ``ratio_mean``, ``clip_fraction``
        (share of ratios with ``|ratio − 1| > clip_range``) and ``approx_kl`` (``0.5·mean((Δ log p)²)``).
    """
    if not (log_prob.shape == old_log_prob.shape == advantages.shape) or log_prob.ndim != 1:
        raise ValueError(
            f"log_prob {tuple(log_prob.shape)}, old_log_prob {tuple(old_log_prob.shape)} and advantages "
            f"{tuple(advantages.shape)} must all be (N,) tensors of the same N."
        )
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}.")
    if adv_clip_max <= 0:
        raise ValueError(f"adv_clip_max must be > 0, got {adv_clip_max}.")

    # fp32: with clip 1e-4 the ratio must resolve differences far below bf16's ~4e-3 resolution near 1.
    log_ratio = log_prob.float() - old_log_prob.detach().float()  # (N,)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach().float().clamp(-adv_clip_max, adv_clip_max)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped_loss, clipped_loss).mean()
    with torch.no_grad():
        stats = {
            "ratio_mean": ratio.mean(),
            "clip_fraction": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "approx_kl": 0.5 * (log_ratio**2).mean(),
        }
    return loss, stats


def sde_step_std(sigma: float, sigma_next: float, noise_level: float, sde_type: str = "cps") -> float:
    """The Gaussian std of one :func:`sde_step_with_logprob` step σ → σ_next (the same formulas, scalar σ):
    ``σ_next·sin(noise_level·π/2)`` for CPS, ``noise_level·sqrt(σ / (1 − σ))·sqrt(σ − σ_next)`` for
    Flow-GRPO (σ = 1 uses σ_next in the denominator, as there)."""
    if sde_type not in SDE_TYPES:
        raise ValueError(f"Unknown sde_type {sde_type!r}; expected one of {SDE_TYPES}.")
    if sde_type == "cps":
        return sigma_next * math.sin(noise_level * math.pi / 2)
    denominator = 1 - (sigma_next if sigma == 1 else sigma)
    return noise_level * math.sqrt(sigma / denominator) * math.sqrt(sigma - sigma_next)


def velocity_kl(velocity: torch.Tensor, ref_velocity: torch.Tensor, std: Optional[torch.Tensor] = None,
                eps: float = 1e-7) -> torch.Tensor:
    """KL regulariser to the frozen reference policy, measured on the velocity: ``mean_{c,h,w} (v − v_ref)²``.

    Both policies' SDE steps are Gaussians with the same std and means that differ by ``c·(v − v_ref)``
    (``c`` depends only on σ, σ_next and noise_level), so the exact per-step KL
    ``‖μ − μ_ref‖² / (2·std²)`` (flow_grpo's ``kl_loss``) equals this quantity times a per-step constant;
    DeepGen folds that constant into β (5e-7) and penalises the velocity directly, which also stays finite
    on deterministic (std = 0) steps.

    With ``std`` (the step's Gaussian std, from :func:`sde_step_with_logprob`) it is the authors' v-based form
    ``mean_{c,h,w} (v − v_ref)² / (2·std² + eps)`` instead (deepgen_rl ``grpo_deepgen_trainer.py:3745-3749``).

    Args:
        velocity: ``(B, C, H, W)`` velocity of the policy being trained.
        ref_velocity: ``(B, C, H, W)`` velocity of the frozen reference policy (detached here).
        std: optional step std, broadcastable to ``(B, C, H, W)``; None = the plain velocity form.
        eps: added to ``2·std²`` (default 1e-7, the authors').

    Returns:
        ``(B,)`` fp32 KL estimate per sample (multiply by β and average for the loss).
    """
    if velocity.shape != ref_velocity.shape:
        raise ValueError(f"velocity {tuple(velocity.shape)} and ref_velocity {tuple(ref_velocity.shape)} must match.")
    # fp32: the squared difference of two nearly equal bf16 velocities is mostly rounding noise.
    squared = (velocity.float() - ref_velocity.detach().float()) ** 2
    if std is not None:
        squared = squared / (2 * torch.as_tensor(std, dtype=torch.float32, device=squared.device) ** 2 + eps)
    return _mean_over_non_batch(squared)


def mix_sft_loss(rl_loss: torch.Tensor, sft_loss: torch.Tensor, lam: float) -> torch.Tensor:
    """Convex mix of the RL objective and the auxiliary SFT (flow-matching) loss: ``(1 − λ)·rl + λ·sft``.

    Args:
        rl_loss: scalar policy (+ KL) loss.
        sft_loss: scalar flow-matching loss on supervised data.
        lam: λ ∈ [0, 1] (DeepGen uses 1e-4).

    Returns:
        Scalar mixed loss.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"SFT mixing weight lam must be in [0, 1] for a convex mix, got {lam}.")
    return (1.0 - lam) * rl_loss + lam * sft_loss


def select_train_timesteps(
    num_steps: int,
    fraction: float = 0.6,
    generator: Optional[torch.Generator] = None,
    batch_size: Optional[int] = None,
) -> torch.Tensor:
    """Pick which denoising steps get a policy update: a random ``⌈fraction·num_steps⌉`` of them.

    As flow_grpo's ``train_sd3.py`` (``timestep_fraction``), the steps are a random permutation truncated
    to the first k, drawn afresh for every sample batch (and, with ``batch_size``, for every sample),
    returned in that random order. flow_grpo uses ``int()`` (floor); we round up so a small fraction never
    yields zero steps. Note that a CPS step into σ_next = 0 is deterministic (log-prob 0, no gradient);
    pass ``num_steps − 1`` to exclude it.

    Args:
        num_steps: number of denoising steps T of the sampler.
        fraction: share of steps to train, in (0, 1] (default 0.6, DeepGen's).
        generator: optional CPU ``torch.Generator``.
        batch_size: if given, draw an independent subset per sample.

    Returns:
        LongTensor of step indices in ``[0, T)``: ``(k,)``, or ``(batch_size, k)`` when ``batch_size`` is given.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}.")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}.")
    # The 1e-9 keeps float error from rounding e.g. 0.7·10 = 7.000000000000001 up to 8.
    num_train = min(num_steps, math.ceil(fraction * num_steps - 1e-9))
    if batch_size is None:
        return torch.randperm(num_steps, generator=generator)[:num_train]
    return torch.stack([torch.randperm(num_steps, generator=generator)[:num_train] for _ in range(batch_size)])

"""Stage-3 rollouts: G SDE trajectories per prompt with per-step log-probs, and their re-scoring with grad.

The sampling loop is the pipeline's (``DeepGenPipeline.__call__`` steps 2–5: one VLM + SCB forward per prompt,
classifier-free guidance with the DiT batch ordered ``[negative..., positive...]``) with the Euler step replaced
by :func:`deepgen.training.grpo.sde_step_with_logprob`, as flow_grpo's ``pipeline_with_logprob`` does for SD3.
The conditioning comes from the frozen VLM + SCB and is computed once per prompt; only the DiT is the policy.

Re-scoring (:func:`transition_log_prob`) runs exactly the same operations on the same ``(G, ...)`` batch as the
sampler, so on the first update after sampling the policy ratio is exactly 1 (tested), as PPO assumes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..pipeline import classifier_free_guidance
from .grpo import sde_step_with_logprob

# ``model(latents, timestep, seq, pooled, reference_latents) -> velocity``: ``DeepGenModel`` or its DDP wrapper.
VelocityModel = Callable[..., torch.Tensor]


@dataclass
class Condition:
    """Frozen DiT conditioning of one prompt (VLM + SCB output), shared by the prompt's G rollouts.

    ``seq``/``negative_seq``: (1, L, joint_dim); ``pooled``/``negative_pooled``: (1, pooled_dim);
    ``reference_latents``: one (1, C, h, w) scaled VAE latent per reference image (empty for text-to-image).
    """

    seq: torch.Tensor
    pooled: torch.Tensor
    negative_seq: torch.Tensor
    negative_pooled: torch.Tensor
    reference_latents: list[torch.Tensor] = field(default_factory=list)

    def dit_inputs(self, batch_size: int,
                   guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(context, pooled, reference_latents)`` for a DiT call on ``batch_size`` latents.

        With CFG (``guidance_scale != 1``) every tensor has ``2·batch_size`` rows, ordered
        ``[negative × batch_size, positive × batch_size]`` as in the pipeline.
        """
        expand = lambda t: t.expand(batch_size, *t.shape[1:])  # noqa: E731 — (1, ...) → (B, ...), no copy
        if guidance_scale == 1.0:
            return expand(self.seq), expand(self.pooled), [expand(ref) for ref in self.reference_latents]
        context = torch.cat([expand(self.negative_seq), expand(self.seq)])  # (2B, L, D)
        pooled = torch.cat([expand(self.negative_pooled), expand(self.pooled)])  # (2B, P)
        references = [torch.cat([expand(ref), expand(ref)]) for ref in self.reference_latents]
        return context, pooled, references

    def to(self, device: Union[str, torch.device]) -> "Condition":
        return Condition(self.seq.to(device), self.pooled.to(device), self.negative_seq.to(device),
                         self.negative_pooled.to(device), [ref.to(device) for ref in self.reference_latents])


@torch.no_grad()
def encode_condition(pipe: Any, prompt: str, negative_prompt: str = "", images: Sequence[Any] = (),
                     height: int = 512, width: int = 512,
                     generator: Optional[torch.Generator] = None) -> Condition:
    """Encode one prompt (and its reference images, for an edit) as the pipeline does for a single prompt.

    One prompt per VLM forward: positive and negative rows are padded together and nothing else, so the
    conditioning (which, as in the released model, depends on padding) equals that of ``pipe(prompt)``.

    Args:
        pipe: a :class:`deepgen.DeepGenPipeline`.
        prompt: the prompt or edit instruction; negative_prompt: default ``""``.
        images: reference images for an edit (PIL or anything ``pipe.prepare_images`` takes); empty for t2i.
        height, width: output size; references are resized to it, as the pipeline does for one reference.
        generator: draws the VAE posterior sample of the references.
    """
    references = None
    if images:
        references, _, _ = pipe.prepare_images(list(images), 1, height, width)
    seq, pooled = pipe.encode_prompt([prompt], [negative_prompt], references)  # rows [positive, negative]
    reference_latents = [pipe.encode_images([references[0][k]], generator).float()
                         for k in range(len(images))] if images else []
    return Condition(seq[:1], pooled[:1], seq[1:], pooled[1:], reference_latents)


def sampling_schedule(scheduler: FlowMatchEulerDiscreteScheduler, num_steps: int,
                      mu: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler's noise levels: ``(sigmas (T+1,), timesteps (T,))`` from a copy of ``scheduler``.

    ``timesteps[j] = sigmas[j]·1000`` is what the DiT is fed (taken from the scheduler, bit for bit as the
    pipeline); ``sigmas[-1] = 0``. A copy is used so the caller's scheduler keeps its training schedule.
    """
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(num_steps, mu=mu)
    return scheduler.sigmas.float().cpu(), scheduler.timesteps.float().cpu()


def guided_velocity(model: VelocityModel, latents: torch.Tensor, timestep: torch.Tensor, condition: Condition,
                    guidance_scale: float) -> torch.Tensor:
    """CFG velocity (:func:`deepgen.pipeline.classifier_free_guidance`) of ``latents`` (B, C, h, w) at a scalar
    ``timestep``, in fp32; ``guidance_scale == 1`` runs the conditional branch only."""
    batch_size = latents.shape[0]
    context, pooled, references = condition.dit_inputs(batch_size, guidance_scale)
    latent_input = latents if guidance_scale == 1.0 else torch.cat([latents, latents])
    velocity = model(latent_input, timestep.expand(latent_input.shape[0]), context, pooled, references).float()
    if guidance_scale == 1.0:
        return velocity
    v_uncond, v_cond = velocity.chunk(2)
    return classifier_free_guidance(v_cond, v_uncond, guidance_scale)


@dataclass
class Trajectories:
    """G SDE trajectories of one prompt, everything on CPU-or-device as sampled.

    ``latents``: (G, T+1, C, h, w), ``latents[:, j]`` at noise level ``sigmas[j]``, ``latents[:, -1]`` the sample;
    ``log_probs``: (G, T) fp32, ``log p(latents[:, j+1] | latents[:, j])`` under the sampling policy
    (0 on deterministic steps); ``sigmas``: (T+1,), ``timesteps``: (T,).
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def final_latents(self) -> torch.Tensor:
        return self.latents[:, -1]  # (G, C, h, w)


@torch.no_grad()
def sde_rollout(
    model: VelocityModel,
    condition: Condition,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    timesteps: torch.Tensor,
    guidance_scale: float = 4.0,
    noise_level: float = 0.7,
    sde_type: str = "cps",
    generator: Optional[torch.Generator] = None,
    log_prob_form: str = "gaussian",
) -> Trajectories:
    """Sample G trajectories of one prompt with the SDE sampler, recording each step's log-probability.

    Args:
        model: the policy, ``model(latents, timestep, seq, pooled, reference_latents) -> velocity``.
        condition: the prompt's :class:`Condition`.
        latents: initial noise (G, C, h, w) at ``sigmas[0]``.
        sigmas, timesteps: from :func:`sampling_schedule`.
        guidance_scale: CFG scale (default 4.0, the pipeline's).
        noise_level, sde_type, log_prob_form: of :func:`~deepgen.training.grpo.sde_step_with_logprob` (defaults
            0.7, ``"cps"``, ``"gaussian"``).
        generator: draws the SDE noise.

    Returns:
        :class:`Trajectories`; with ``noise_level=0`` the final latents are the pipeline's Euler sample.
    """
    device = latents.device
    x = latents.float()
    states, log_probs = [x], []
    for j in range(len(timesteps)):
        velocity = guided_velocity(model, x, timesteps[j].to(device), condition, guidance_scale)
        x, log_prob, _, _ = sde_step_with_logprob(velocity, x, sigmas[j].item(), sigmas[j + 1].item(),
                                                  noise_level=noise_level, generator=generator, sde_type=sde_type,
                                                  log_prob_form=log_prob_form)
        states.append(x)
        log_probs.append(log_prob)
    return Trajectories(latents=torch.stack(states, dim=1), log_probs=torch.stack(log_probs, dim=1),
                        sigmas=sigmas, timesteps=timesteps)


def transition_log_prob(
    model: VelocityModel,
    condition: Condition,
    trajectories: Trajectories,
    step: int,
    guidance_scale: float = 4.0,
    noise_level: float = 0.7,
    sde_type: str = "cps",
    log_prob_form: str = "gaussian",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of the stored transitions ``x_step → x_step+1`` of all G trajectories under ``model``.

    Differentiable (call it with grad enabled for the policy, under ``torch.no_grad()`` for the reference).
    Runs the same ops on the same (G, ...) batch as :func:`sde_rollout`, so with unchanged weights the result is
    bitwise the recorded ``trajectories.log_probs[:, step]``.

    Returns:
        ``(log_prob (G,), velocity (G, C, h, w))``: the velocity feeds :func:`~deepgen.training.grpo.velocity_kl`.
    """
    sample = trajectories.latents[:, step]
    next_sample = trajectories.latents[:, step + 1]
    velocity = guided_velocity(model, sample, trajectories.timesteps[step].to(sample.device), condition,
                               guidance_scale)
    _, log_prob, _, _ = sde_step_with_logprob(velocity, sample, trajectories.sigmas[step].item(),
                                              trajectories.sigmas[step + 1].item(), noise_level=noise_level,
                                              prev_sample=next_sample, sde_type=sde_type, log_prob_form=log_prob_form)
    return log_prob, velocity


def initial_noise(num_samples: int, channels: int, latent_height: int, latent_width: int,
                  generator: Optional[torch.Generator] = None,
                  device: Union[str, torch.device] = "cpu", shared: bool = False) -> torch.Tensor:
    """(G, C, h, w) fp32 Gaussian noise, drawn as the pipeline's ``prepare_latents`` does.

    With ``shared`` one (C, h, w) draw is repeated G times: the group's rollouts start from the same noise and
    differ only by the SDE's noise (the authors' ``init_same_noise``, deepgen_rl ``grpo_deepgen.py:1158-1162``).
    """
    draws = 1 if shared else num_samples
    noise = randn_tensor((draws, channels, latent_height, latent_width), generator=generator,
                         device=torch.device(device), dtype=torch.float32)
    return noise.expand(num_samples, -1, -1, -1).clone() if shared else noise

"""Rollouts of stage 3 on the tiny random pipeline: sampler = pipeline at zero noise, exact re-scoring."""

import pytest
import torch

from deepgen.training.grpo import clipped_policy_loss
from deepgen.training.rollout import (
    encode_condition,
    initial_noise,
    sampling_schedule,
    sde_rollout,
    transition_log_prob,
)

SIZE = 32  # tiny: 4x4 latents, 4 DiT tokens
STEPS = 4
G = 3


def _setup(pipe, prompt="a red circle"):
    condition = encode_condition(pipe, prompt, height=SIZE, width=SIZE)
    sigmas, timesteps = sampling_schedule(pipe.scheduler, STEPS, mu=pipe.scheduler_mu(SIZE, SIZE))
    latent = SIZE // pipe.vae_scale_factor
    noise = initial_noise(G, pipe.transformer.config.in_channels, latent, latent, torch.Generator().manual_seed(0))
    return condition, sigmas, timesteps, noise


def test_rollout_at_zero_noise_is_the_pipeline_sample(tiny_pipe):
    condition, sigmas, timesteps, noise = _setup(tiny_pipe)
    trajectories = sde_rollout(tiny_pipe.model, condition, noise, sigmas, timesteps, guidance_scale=4.0,
                               noise_level=0.0)
    expected = tiny_pipe("a red circle", height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=4.0,
                         num_images_per_prompt=G, latents=noise, output_type="latent").images
    torch.testing.assert_close(trajectories.final_latents, expected, rtol=1e-4, atol=1e-5)
    assert trajectories.latents.shape == (G, STEPS + 1, *noise.shape[1:])
    assert (trajectories.log_probs == 0).all()  # deterministic steps have log-prob 0 by definition


@pytest.mark.parametrize("sde_type", ["cps", "flow_grpo"])
def test_rescoring_reproduces_the_sampled_log_probs_exactly(tiny_pipe, sde_type):
    condition, sigmas, timesteps, noise = _setup(tiny_pipe)
    trajectories = sde_rollout(tiny_pipe.model, condition, noise, sigmas, timesteps, noise_level=0.7,
                               sde_type=sde_type, generator=torch.Generator().manual_seed(1))
    assert trajectories.log_probs.shape == (G, STEPS) and trajectories.log_probs[:, 0].ne(0).all()
    tiny_pipe.transformer.requires_grad_(True)
    try:
        for step in range(STEPS):
            log_prob, velocity = transition_log_prob(tiny_pipe.model, condition, trajectories, step,
                                                     noise_level=0.7, sde_type=sde_type)
            assert torch.equal(log_prob, trajectories.log_probs[:, step]), step
            assert velocity.shape == noise.shape
        # ratio exactly 1 on the first inner step, and the loss still carries the policy gradient (step 0: CPS's
        # last step, into sigma = 0, is deterministic and has none)
        log_prob, _ = transition_log_prob(tiny_pipe.model, condition, trajectories, 0, sde_type=sde_type)
        loss, stats = clipped_policy_loss(log_prob, trajectories.log_probs[:, 0], torch.tensor([1.0, -1.0, 0.5]))
        assert stats["ratio_mean"].item() == 1.0 and stats["clip_fraction"].item() == 0.0
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_pipe.transformer.parameters())
    finally:
        tiny_pipe.transformer.requires_grad_(False).zero_grad(set_to_none=True)


def test_rollout_is_seeded_and_edit_conditions_carry_references(tiny_pipe):
    from PIL import Image

    condition, sigmas, timesteps, noise = _setup(tiny_pipe)
    run = lambda: sde_rollout(tiny_pipe.model, condition, noise, sigmas, timesteps,  # noqa: E731
                              generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(run().latents, run().latents, rtol=0, atol=0)

    edit = encode_condition(tiny_pipe, "make it blue", images=[Image.new("RGB", (SIZE, SIZE), (200, 30, 30))],
                            height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(0))
    assert len(edit.reference_latents) == 1 and edit.reference_latents[0].shape == (1, *noise.shape[1:])
    context, pooled, references = edit.dit_inputs(G, guidance_scale=4.0)
    assert context.shape[0] == pooled.shape[0] == references[0].shape[0] == 2 * G
    trajectories = sde_rollout(tiny_pipe.model, edit, noise, sigmas, timesteps, generator=torch.Generator())
    assert torch.isfinite(trajectories.log_probs).all()


class _BiasVelocity(torch.nn.Module):
    """Toy policy whose velocity is one learnable constant: the final latents are about the noise minus it."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, latents, timestep, context, pooled, references):
        return self.bias.expand_as(latents)


def test_policy_gradient_step_raises_the_reward():
    """End to end through rollout, advantages, re-scoring and the clipped loss: descending the loss moves the
    policy toward higher reward (here the final latents' mean, which a lower velocity raises).

    Flow-GRPO's SDE only: CPS's exact density makes the score of its step into the smallest sigma (std =
    sigma_next * sin(noise_level * pi / 2), tiny) so noisy that 64 samples give a random sign (docs/rl.md)."""
    sde_type = "flow_grpo"
    from diffusers import FlowMatchEulerDiscreteScheduler

    from deepgen.training.grpo import group_advantages
    from deepgen.training.rollout import Condition

    policy, group = _BiasVelocity(), 64
    zeros = torch.zeros(1, 1, 8)
    condition = Condition(zeros, torch.zeros(1, 8), zeros, torch.zeros(1, 8))
    sigmas, timesteps = sampling_schedule(FlowMatchEulerDiscreteScheduler(), STEPS)

    def rollout(seed):
        noise = initial_noise(group, 4, 4, 4, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return sde_rollout(policy, condition, noise, sigmas, timesteps, guidance_scale=1.0, noise_level=0.7,
                               sde_type=sde_type, generator=torch.Generator().manual_seed(seed + 1))

    def reward(trajectories):
        return trajectories.final_latents.mean(dim=(1, 2, 3))  # (G,)

    trajectories = rollout(0)
    advantages = group_advantages(reward(trajectories), group_size=group)
    stochastic = range(STEPS - 1 if sde_type == "cps" else STEPS)
    loss = sum(clipped_policy_loss(transition_log_prob(policy, condition, trajectories, j, guidance_scale=1.0,
                                                       sde_type=sde_type)[0],
                                   trajectories.log_probs[:, j], advantages)[0] for j in stochastic)
    loss.backward()
    assert policy.bias.grad > 0  # a higher velocity lowers the reward
    before = reward(rollout(7)).mean()
    with torch.no_grad():
        policy.bias -= 0.1 * policy.bias.grad.sign()
    assert reward(rollout(7)).mean() > before + 0.05  # same noise, policy moved along the gradient


def test_shared_initial_noise_repeats_one_draw_per_group():
    shared = initial_noise(3, 4, 2, 2, torch.Generator().manual_seed(5), shared=True)
    first = initial_noise(1, 4, 2, 2, torch.Generator().manual_seed(5))
    assert shared.shape == (3, 4, 2, 2) and all(torch.equal(row, first[0]) for row in shared)
    independent = initial_noise(3, 4, 2, 2, torch.Generator().manual_seed(5))
    assert torch.equal(independent[0], first[0]) and not torch.equal(independent[1], independent[0])
